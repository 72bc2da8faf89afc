"""The timed hot loops, each through the product code: teacher training, state extraction (on the
device and to the on-disk cache) and one stage-1/2 Raptor step on synthetic resident or streamed states."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu.harness import Bench
from bench.gpu.mfu import raptor_step_flops, teacher_forward_flops
from bench.gpu.models import FAST, Case, Variant, build_teacher, even_phases, set_matmul
from study.runtime import CudaGraphStep, adamw, autocast, set_fused_attn, step_flops, use_graphs
from study.science.distill import GroupWeights, Stage1Objective, Stage2Objective, StateBatches, make_train_step
from study.science.raptor import Raptor
from study.science.states import teacher_states
from study.trial.activations import write_states


def teacher_train(b: Bench, case: Case, v: Variant) -> None:
    """The step of study.trial.teacher.train_scratch (same compile rule and CUDA graph) on a device batch."""
    set_matmul(v.tf32)
    b.reset_memory()
    rt = v.runtime()
    model = build_teacher(case, b.device)
    set_fused_attn(model, v.fused_attn)
    flops_rule = step_flops(case.teacher_batch, case.tokens, sum(p.numel() for p in model.blocks.parameters()))
    compiled = b.compiles(v, flops_rule)
    if compiled:
        for block in model.blocks:  # regional: one graph shared by all blocks
            block.compile()
    model.train()
    opt = adamw(model.parameters(), 1e-4, 0.05, b.device, v.fused_adamw)
    gen = torch.Generator(device=b.device).manual_seed(0)
    images = torch.randn(case.teacher_batch, case.chans, case.image, case.image, device=b.device, generator=gen)
    labels = torch.randint(0, case.classes, (case.teacher_batch,), device=b.device, generator=gen)
    running = torch.zeros((), device=b.device)

    def train_step(images, labels):
        with autocast(b.device, v.amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    stepper = CudaGraphStep(train_step, opt, b.device) if use_graphs(rt, b.device) else train_step

    def step():
        nonlocal running
        running += stepper(images, labels)

    timing = b.time_steps(step)
    b.record(
        {
            "case": case.name,
            "workload": "teacher train",
            "variant": v.name,
            "batch": case.teacher_batch,
            "compiled": compiled,
            "graphed": getattr(stepper, "captured", False),
            **timing,
            "items": case.teacher_batch,
            "flops": 3 * case.teacher_batch * teacher_forward_flops(case),
            "peak_gib": b.peak_gib(),
            "sync_free": b.sync_free(step) if v is FAST else "-",
        }
    )


def extract(b: Bench, case: Case, v: Variant) -> None:
    """study.science.states.teacher_states on a device batch: all x_0..x_L (GPU compute only)."""
    set_matmul(v.tf32)
    b.reset_memory()
    model = build_teacher(case, b.device).eval()
    set_fused_attn(model, v.fused_attn)
    batch = max(case.teacher_batch, 256) if b.cuda else case.teacher_batch
    images = torch.randn(batch, case.chans, case.image, case.image, device=b.device)

    def step():
        with torch.no_grad(), autocast(b.device, v.amp):
            teacher_states(model, images)

    timing = b.time_steps(step)
    b.record(
        {
            "case": case.name,
            "workload": "extract (device)",
            "variant": v.name,
            "batch": batch,
            **timing,
            "items": batch,
            "flops": batch * teacher_forward_flops(case, head=False),
            "peak_gib": b.peak_gib(),
        }
    )


def extract_to_cache(b: Bench, case: Case, v: Variant, n: int, dtype: str = "float32") -> None:
    """End to end: study.trial.activations.write_states (DataLoader -> teacher -> host -> .npy memmap on disk)."""
    set_matmul(v.tf32)
    b.reset_memory()
    model = build_teacher(case, b.device).eval()
    set_fused_attn(model, v.fused_attn)
    images = torch.randn(n, case.chans, case.image, case.image)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(n, dtype=torch.long))
    batch = 256 if b.cuda else case.teacher_batch
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "states.npy"
        warm = torch.utils.data.Subset(dataset, range(min(n, batch)))
        write_states(model, warm, b.device, dtype, v.amp, batch, path, False, "bench", [])  # warm-up pass
        path.unlink()
        b.sync()
        t = time.time()
        write_states(model, dataset, b.device, dtype, v.amp, batch, path, False, "bench", [])
        seconds = time.time() - t
        size = path.stat().st_size
    ms = seconds * 1e3 / math.ceil(n / batch)
    b.record(
        {
            "case": case.name,
            "workload": f"extract->cache {'fp16' if dtype == 'float16' else 'fp32'}",
            "variant": v.name,
            "batch": batch,
            "ms": ms,
            "items": min(batch, n),
            "n": n,
            "flops": min(batch, n) * teacher_forward_flops(case, head=False),
            "peak_gib": b.peak_gib(),
            "cache_gb_per_s": size / seconds / 1e9,
        }
    )


def stage_weights(stage: int, registers: int) -> GroupWeights:
    """The bench's cls / register / patch loss weights for stage 1 or 2."""
    return GroupWeights(0.34, 0.33, 0.33, registers) if stage == 1 else GroupWeights(0.45, 0.10, 0.45, registers)


def streamed_batches(states: torch.Tensor, batch: int, device: torch.device) -> tuple[StateBatches, str]:
    """Write `states` to a memory-mapped .npy on disk and read it back through pinned memory: (batches, file)."""
    with tempfile.NamedTemporaryFile(suffix=".npy", dir=os.environ.get("BENCH_TMP"), delete=False) as tmp:
        name = tmp.name
    dtype = np.float16 if states.dtype == torch.float16 else np.float32
    array = np.lib.format.open_memmap(name, mode="w+", dtype=dtype, shape=tuple(states.shape))
    array[:] = states.cpu().numpy()
    array.flush()
    return StateBatches(np.load(name, mmap_mode="r"), batch, device, device_budget=0), name


def raptor_stage(
    b: Bench,
    case: Case,
    v: Variant,
    stage: int,
    depth: int | None = None,
    k: int | None = None,
    batch: int | None = None,
    states_dtype: torch.dtype = torch.float32,
    streaming: bool = False,
    workload: str | None = None,
    whole_compile: bool = False,
    check: bool = False,
    pure_bf16: bool = False,
) -> dict:
    """One stage-1/2 step of study.science.distill (objective + train_step) on synthetic states.

    `check`: also the fast step's loss against an fp32 eager reference on the same weights and batch.
    `pure_bf16` (a measurement, not a product mode): Raptor weights, residual stream and target
    states all in bf16 (no fp32 master weights), i.e. the fewest bytes this code path can move."""
    set_matmul(v.tf32)
    b.reset_memory()
    depth, k, batch = depth or case.depth, k or case.k, batch or case.raptor_batch
    dcase = case.with_(depth=depth, k=k)
    teacher = build_teacher(dcase, b.device)
    raptor = Raptor(teacher, even_phases(depth, k), init="teacher").to(b.device)
    if pure_bf16:
        raptor.to(torch.bfloat16)
        states_dtype = torch.bfloat16
    del teacher
    set_fused_attn(raptor, v.fused_attn)
    rt = v.runtime()
    block_params = sum(p.numel() for p in raptor.blocks[0].parameters())
    compiled = b.compiles(v, step_flops(batch, case.tokens, block_params * depth))
    weights = stage_weights(stage, case.registers)
    objective_cls = Stage1Objective if stage == 1 else Stage2Objective
    objective = objective_cls(raptor, weights, 0.0, compile=compiled and not whole_compile)
    if whole_compile:
        objective = torch.compile(objective)
    raptor.train()
    opt = adamw([p for p in raptor.parameters() if p.requires_grad], 3e-4, 1e-4, b.device, v.fused_adamw)
    n_samples = batch * (2 if streaming else 3)
    gen = torch.Generator(device=b.device).manual_seed(0)
    states = torch.randn(
        (n_samples, depth + 1, case.tokens, case.width), device=b.device, generator=gen, dtype=states_dtype
    )
    tmp_name = None
    if streaming:
        batches, tmp_name = streamed_batches(states, batch, b.device)
        del states
    else:
        # the resident path, with the states made on the device (no host round trip for synthetic data)
        batches = StateBatches(np.empty((n_samples, 1), dtype=np.uint8), batch, b.device, device_budget=1 << 40)
        batches.resident = states
    lam = 0.25 if stage == 1 else 0.0
    step_fn = make_train_step(objective, opt, b.device, rt, stage)  # the product's step (CUDA graph when it applies)
    epoch = [0]
    it = iter(())
    running = torch.zeros((), device=b.device)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            epoch[0] += 1
            it = iter(batches.epoch(epoch[0], seed=0))
            return next(it)

    def step():
        nonlocal running
        running += step_fn(next_batch(), lam)

    rel_err = None
    if check:
        x = next_batch()
        with torch.no_grad():
            set_matmul(False)
            set_fused_attn(raptor, False)
            ref = objective_cls(raptor, weights, 0.0)(x.float(), lam)
            set_matmul(v.tf32)
            set_fused_attn(raptor, v.fused_attn)
            with autocast(b.device, v.amp):
                got = objective_cls(raptor, weights, 0.0)(x.float(), lam)
        rel_err = abs(float(got) - float(ref)) / abs(float(ref))
    slow = v.name.startswith("baseline")  # steady and slow: fewer steps
    iters = max(4, b.iters // 4) if streaming else (max(3, b.iters // 2) if slow else b.iters)
    timing = b.time_steps(step, warmup=3 if slow else None, iters=iters)
    row = {
        "case": case.name,
        "workload": workload or f"stage-{stage} step",
        "variant": v.name + (" +whole-objective compile" if whole_compile else ""),
        "batch": batch,
        "depth": depth,
        "k": k,
        "compiled": compiled,
        "graphed": getattr(getattr(step_fn, "graphed", step_fn), "captured", False),
        **timing,
        "items": batch,
        "flops": raptor_step_flops(dcase, batch),
        "peak_gib": b.peak_gib(),
        "states": "streamed (memmap->pinned)" if streaming else "resident",
        "states_dtype": str(states_dtype)[6:],
        "sync_free": b.sync_free(step) if (v is FAST and not streaming and workload is None) else "-",
    }
    if rel_err is not None:
        row["loss_rel_err_vs_fp32"] = rel_err
    b.record(row)
    if tmp_name is not None:
        os.unlink(tmp_name)
    return row
