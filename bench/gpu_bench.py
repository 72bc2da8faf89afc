"""Throughput of the study's hot loops on GPU (or CPU).

    PYTHONPATH=. python bench/gpu_bench.py                      # GPU machine, full run (~6-8 min)
    PYTHONPATH=. python bench/gpu_bench.py --device cpu --quick  # smoke test, tiny sizes

Measures, for a ViT-S/16-sized teacher at 224 px (12 blocks, width 384, 6 heads,
MLP 4x, 197 tokens) and for the digits default (8 blocks, width 64, 17 tokens):
teacher training, activation extraction, stage-1 and stage-2 Raptor steps, each in
the product's fast path and in the reference baseline, side by side in one process:

  fast      RuntimeConfig's GPU defaults: bf16 autocast, fused SDPA attention (timm
            fused_attn), fused AdamW, each training step replayed as one CUDA graph
            (study.runtime.CudaGraphStep), and torch.compile where it pays: regional
            compile of one Raptor step + its loss (study.distill.compiled_layer_loss) and
            of the teacher's blocks, when a step is >= 1 TFLOP (ViT-S yes, digits no)
  baseline  fp32 eager (TF32 off, PyTorch's default), explicit softmax(QK^T)V attention
            (timm fused_attn=False, nn.MultiheadAttention-style), for-each AdamW, no graphs

plus one-knob-off ablations of the fast path on the ViT-S stage-2 step, the stage-2 step
of a DINOv2-B-shaped teacher (width 768, 4 registers, 261 tokens) and, with `--sections vitl`, of a
DINOv2-L-shaped one (24 blocks, width 1024), stage-2 step time
against depth L (6, 12, 24) and against k at L = 12, the activation cache's bytes per
sample, the resident-vs-streaming batch path, and a check that CUDA-graph replay trains
exactly like eager. `--sections profile,explore` adds a kernel-time breakdown and
non-default knobs (SDPA backends, inductor autotuning, batch 512).

Raptor steps run on synthetic teacher states of the right shape (random weights: speed
does not depend on them) through the product code: study.raptor.Raptor,
study.distill.{Stage1Objective, Stage2Objective, StateBatches, make_train_step},
study.runtime.{adamw, autocast, set_fused_attn, CudaGraphStep}. Teacher training is the step of
study.teacher.train_scratch on a batch already on the device.

FLOPs are analytic model FLOPs (matmuls only, as in MFU conventions; norms, softmax,
GELU and the loss are not counted). Per block and token, forward:
    2 * (4 D^2 [qkv + proj] + 2 r D^2 [MLP fc1 + fc2]) + 4 T D [QK^T and AV]
a training step is 3x forward (backward = 2x forward); the teacher adds the patch
embedding (2 P^2 C D per patch token) and the head (2 D classes per image).
MFU = model FLOPs / step time / the GPU's dense bf16 peak (H100 SXM and H200:
989.4 TFLOP/s), reported for the fp32 baseline against the same bf16 peak.
Timing: CUDA events around every step after warm-up, median over steps; peak memory
is torch.cuda.max_memory_allocated over the workload. Each fast workload is also run
for a few steps under torch.cuda.set_sync_debug_mode("error") to show its step loop
has no host synchronisation.

Writes gpu_bench.json and gpu_bench.md to --out (default $OUT, else docs/results),
updated after every measurement so a run cut short still leaves its numbers.
Imports torch, timm, numpy and study modules only (no ray / optuna / mlflow).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.science.states import teacher_states  # noqa: E402
from study.trial.activations import _write_states, bytes_per_sample  # noqa: E402
from study.config import RuntimeConfig, load_trial_config  # noqa: E402
from study.trial.data import ImageSpec  # noqa: E402
from study.science.distill import GroupWeights, Stage1Objective, Stage2Objective, StateBatches, make_train_step  # noqa: E402
from study.science.raptor import Raptor  # noqa: E402
from study.runtime import (CudaGraphStep, adamw, autocast, set_fused_attn, step_flops, use_compile,  # noqa: E402
                           use_graphs)
from study.trial.teacher import build_scratch_model  # noqa: E402

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against torch.cuda.get_device_name
BF16_PEAKS = (("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
              ("L40S", 362.0), ("A10", 125.0), ("L4", 121.0))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    depth: int
    width: int
    heads: int
    mlp_ratio: float
    patch: int
    image: int
    chans: int
    classes: int
    teacher_batch: int
    raptor_batch: int
    k: int
    layerscale: float = 0.1
    registers: int = 0

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1 + self.registers

    def block_flops_per_token(self, tokens: int | None = None) -> float:
        """Forward FLOPs of one block for one token: 2 * (4 D^2 + 2 r D^2) + 4 T D."""
        d, t = self.width, tokens or self.tokens
        return 2 * (4 * d * d + 2 * self.mlp_ratio * d * d) + 4 * t * d

    def teacher_forward_flops(self, head: bool = True) -> float:
        """Forward FLOPs per image: L blocks over T tokens + patch embedding (+ head)."""
        patches = self.tokens - 1 - self.registers
        flops = self.depth * self.tokens * self.block_flops_per_token()
        flops += 2 * self.patch ** 2 * self.chans * self.width * patches
        return flops + (2 * self.width * self.classes if head else 0)

    def raptor_step_flops(self, batch: int, depth: int | None = None) -> float:
        """Training FLOPs of one stage-1/2 step: 3 x (B T L block FLOPs); k does not enter."""
        return 3 * batch * self.tokens * (depth or self.depth) * self.block_flops_per_token()

    def with_(self, **kw) -> "Case":
        return dataclasses.replace(self, **kw)


VIT_S = Case("vit_s16_224", depth=12, width=384, heads=6, mlp_ratio=4.0, patch=16, image=224, chans=3, classes=1000,
             teacher_batch=256, raptor_batch=256, k=2)
DIGITS = Case("digits_default", depth=8, width=64, heads=4, mlp_ratio=2.0, patch=2, image=8, chans=1, classes=10,
              teacher_batch=128, raptor_batch=64, k=2)
# the DINOv2 ViT-B/14 shape of docs/science.md §1 (4 registers, 261 tokens), random weights
VIT_B = Case("vit_b14_reg4_224", depth=12, width=768, heads=12, mlp_ratio=4.0, patch=14, image=224, chans=3, classes=1000,
             teacher_batch=128, raptor_batch=128, k=2, registers=4)
# the DINOv2 ViT-L/14 shape (24 blocks, width 1024, 4 registers, 261 tokens): how MFU grows with width
VIT_L = Case("vit_l14_reg4_224", depth=24, width=1024, heads=16, mlp_ratio=4.0, patch=14, image=224, chans=3, classes=1000,
             teacher_batch=64, raptor_batch=64, k=2, registers=4)
QUICK_VIT = Case("vit_quick", depth=4, width=64, heads=2, mlp_ratio=4.0, patch=8, image=32, chans=3, classes=10,
                 teacher_batch=8, raptor_batch=8, k=2)
QUICK_DIGITS = DIGITS.with_(name="digits_quick", depth=4, teacher_batch=16, raptor_batch=16)


@dataclasses.dataclass(frozen=True)
class Variant:
    """RuntimeConfig's speed knobs (+ TF32, which study.runtime.setup turns on)."""
    name: str
    amp: bool = True
    fused_attn: bool = True
    compile: bool | str = "auto"
    fused_adamw: bool = True
    cuda_graphs: bool = True
    tf32: bool = True

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(amp=self.amp, fused_attn=self.fused_attn, compile=self.compile, fused_adamw=self.fused_adamw,
                             cuda_graphs=self.cuda_graphs, progress=False)


FAST = Variant("fast")  # the product's GPU defaults
BASELINE = Variant("baseline fp32 eager", amp=False, fused_attn=False, compile=False, fused_adamw=False, cuda_graphs=False,
                   tf32=False)
ABLATIONS = (
    Variant("fast - cuda_graphs", cuda_graphs=False),
    Variant("fast - compile", compile=False),
    Variant("fast - fused_attn", fused_attn=False),
    Variant("fast - amp (tf32)", amp=False),
    Variant("fast - fused_adamw (no graphs)", fused_adamw=False),
    Variant("fast - graphs - compile", compile=False, cuda_graphs=False),
    Variant("baseline + tf32", amp=False, fused_attn=False, compile=False, fused_adamw=False, cuda_graphs=False, tf32=True),
)


# --------------------------------------------------------------------------- helpers
class Bench:
    def __init__(self, device: torch.device, out: Path, warmup: int, iters: int, compile_mode: str, budget_s: float):
        self.device, self.out, self.warmup, self.iters = device, out, warmup, iters
        self.compile_mode, self.budget_s, self.t0 = compile_mode, budget_s, time.time()
        self.cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if self.cuda else platform.processor() or platform.machine()
        peak = next((p for key, p in BF16_PEAKS if key in name), None) if self.cuda else None
        self.info = {
            "device": name, "device_type": device.type, "bf16_peak_tflops": peak,
            "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.rows: list[dict] = []
        self.extra: dict = {}

    def compiles(self, v: Variant, flops: float) -> bool:
        """The product's rule (study.runtime.use_compile) unless --compile on/off overrides it."""
        if self.compile_mode == "off":
            return False
        if self.compile_mode == "on":
            return v.compile is not False
        return use_compile(v.runtime(), self.device, flops)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_memory(self):
        gc.collect()  # drop the last workload's graphs and their memory pools
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def time_steps(self, step, warmup: int | None = None, iters: int | None = None) -> dict:
        """Run `step()` warmup + iters times; per-step times (ms) from CUDA events (host clock on CPU)."""
        warmup = self.warmup if warmup is None else warmup
        iters = self.iters if iters is None else iters
        t = time.time()
        step()  # first call: compilation, autotuning, allocator growth
        self.sync()
        first_s = time.time() - t
        for _ in range(max(0, warmup - 1)):
            step()
        self.sync()
        times = []
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
            wall = time.time()
            for start, end in events:
                start.record()
                step()
                end.record()
            self.sync()
            wall = time.time() - wall
            times = [s.elapsed_time(e) for s, e in events]
        else:
            wall = time.time()
            for _ in range(iters):
                s = time.perf_counter()
                step()
                times.append((time.perf_counter() - s) * 1e3)
            wall = time.time() - wall
        return {"ms": statistics.median(times), "ms_mean": statistics.fmean(times), "ms_min": min(times),
                "ms_wall": wall * 1e3 / iters, "first_call_s": first_s, "iters": iters}

    def sync_free(self, step, n: int = 3) -> str:
        """Run n steps with CUDA sync debug mode 'error': 'yes' if none synchronised with the host."""
        if not self.cuda:
            return "n/a"
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(n):
                step()
            verdict = "yes"
        except RuntimeError as err:
            verdict = "NO: " + str(err).splitlines()[0][:120]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        self.sync()
        return verdict

    def record(self, row: dict):
        peak = self.info["bf16_peak_tflops"]
        if row.get("flops") and row.get("ms"):
            row["tflops"] = row["flops"] / (row["ms"] * 1e-3) / 1e12
            row["mfu"] = row["tflops"] / peak if peak else None
        if row.get("items") and row.get("ms"):
            row["items_per_s"] = row["items"] / (row["ms"] * 1e-3)
        row["t"] = round(self.elapsed(), 1)
        self.rows.append(row)
        print(fmt_row(row), flush=True)
        self.save()

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"info": self.info, "rows": self.rows, **self.extra}
        (self.out / "gpu_bench.json").write_text(json.dumps(doc, indent=1, default=float))
        (self.out / "gpu_bench.md").write_text(markdown(doc))


def set_matmul(tf32: bool):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def build_teacher(case: Case, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The product's scratch teacher (study.teacher.build_scratch_model) with random weights."""
    cfg = load_trial_config(None, {
        "teacher.depth": case.depth, "teacher.width": case.width, "teacher.heads": case.heads,
        "teacher.mlp_ratio": case.mlp_ratio, "teacher.patch_size": case.patch, "teacher.layerscale_init": case.layerscale,
        "teacher.registers": case.registers,
        "raptor.k": min(case.k, case.depth)})
    spec = ImageSpec(case.chans, case.image, (0.5,) * case.chans, (0.5,) * case.chans, "bilinear", 1.0)
    torch.manual_seed(seed)
    return build_scratch_model(cfg, spec, case.classes).to(device)


def even_phases(depth: int, k: int) -> tuple[tuple[int, int], ...]:
    edges = np.linspace(0, depth, k + 1).round().astype(int)
    return tuple((int(a) + 1, int(b)) for a, b in zip(edges[:-1], edges[1:]))


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def fmt_row(r: dict) -> str:
    return (f"{r['case']:<15} {r['workload']:<18} {r['variant']:<22} B={r.get('batch', '-'):<4} "
            f"{fmt(r.get('ms'), '9.3f')} ms {fmt(r.get('items_per_s'), '10.0f')} img/s "
            f"{fmt(r.get('tflops'), '7.1f')} TF/s MFU {fmt(None if r.get('mfu') is None else 100 * r['mfu'], '5.1f')}% "
            f"mem {fmt(r.get('peak_gib'), '6.2f')} GiB sync-free {r.get('sync_free', '-')}")


# --------------------------------------------------------------------------- workloads
def teacher_train(b: Bench, case: Case, v: Variant) -> None:
    """The step of study.teacher.train_scratch (same compile rule and CUDA graph) on a device batch."""
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
    b.record({"case": case.name, "workload": "teacher train", "variant": v.name, "batch": case.teacher_batch,
              "compiled": compiled, "graphed": getattr(stepper, "captured", False), **timing, "items": case.teacher_batch,
              "flops": 3 * case.teacher_batch * case.teacher_forward_flops(), "peak_gib": b.peak_gib(),
              "sync_free": b.sync_free(step) if v is FAST else "-"})


def extract(b: Bench, case: Case, v: Variant) -> None:
    """study.activations.teacher_states on a device batch: all x_0..x_L (GPU compute only)."""
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
    b.record({"case": case.name, "workload": "extract (device)", "variant": v.name, "batch": batch, **timing,
              "items": batch, "flops": batch * case.teacher_forward_flops(head=False), "peak_gib": b.peak_gib()})


def extract_to_cache(b: Bench, case: Case, v: Variant, n: int, dtype: str = "float32") -> None:
    """End to end: study.activations._write_states (DataLoader -> teacher -> host -> .npy memmap on disk)."""
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
        _write_states(model, warm, b.device, dtype, v.amp, batch, path, False, "bench", [])  # warm-up pass
        path.unlink()
        b.sync()
        t = time.time()
        _write_states(model, dataset, b.device, dtype, v.amp, batch, path, False, "bench", [])
        seconds = time.time() - t
        size = path.stat().st_size
    ms = seconds * 1e3 / math.ceil(n / batch)
    b.record({"case": case.name, "workload": f"extract->cache {'fp16' if dtype == 'float16' else 'fp32'}",
              "variant": v.name, "batch": batch, "ms": ms, "items": min(batch, n), "n": n,
              "flops": min(batch, n) * case.teacher_forward_flops(head=False), "peak_gib": b.peak_gib(),
              "cache_gb_per_s": size / seconds / 1e9})


def raptor_stage(b: Bench, case: Case, v: Variant, stage: int, depth: int | None = None, k: int | None = None,
                 batch: int | None = None, states_dtype: torch.dtype = torch.float32, streaming: bool = False,
                 workload: str | None = None, whole_compile: bool = False, check: bool = False,
                 pure_bf16: bool = False) -> dict:
    """One stage-1/2 step of study.distill (objective + train_step) on synthetic resident states.

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
    r = case.registers
    weights = GroupWeights(0.34, 0.33, 0.33, r) if stage == 1 else GroupWeights(0.45, 0.10, 0.45, r)
    objective_cls = Stage1Objective if stage == 1 else Stage2Objective
    objective = objective_cls(raptor, weights, 0.0, compile=compiled and not whole_compile)
    if whole_compile:
        objective = torch.compile(objective)
    raptor.train()
    opt = adamw([p for p in raptor.parameters() if p.requires_grad], 3e-4, 1e-4, b.device, v.fused_adamw)
    n_samples = batch * (2 if streaming else 3)
    gen = torch.Generator(device=b.device).manual_seed(0)
    shape = (n_samples, depth + 1, case.tokens, case.width)
    states = torch.randn(shape, device=b.device, generator=gen, dtype=states_dtype)
    tmp = None
    if streaming:  # memory-mapped .npy on disk, read back through pinned memory
        tmp = tempfile.NamedTemporaryFile(suffix=".npy", dir=os.environ.get("BENCH_TMP"), delete=False)
        array = np.lib.format.open_memmap(tmp.name, mode="w+", dtype=np.float16 if states_dtype == torch.float16 else np.float32,
                                          shape=shape)
        array[:] = states.cpu().numpy()
        array.flush()
        del states
        source = np.load(tmp.name, mmap_mode="r")
        batches = StateBatches(source, batch, b.device, device_budget=0)
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
    if check:  # the fast step's loss against an fp32 eager reference on the same weights and batch
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
    timing = b.time_steps(step, warmup=3 if slow else None,
                          iters=max(4, b.iters // 4) if streaming else (max(3, b.iters // 2) if slow else b.iters))
    row = {"case": case.name, "workload": workload or f"stage-{stage} step", "variant": v.name + (" +whole-objective compile" if whole_compile else ""),
           "batch": batch, "depth": depth, "k": k, "compiled": compiled,
           "graphed": getattr(getattr(step_fn, "graphed", step_fn), "captured", False), **timing, "items": batch,
           "flops": dcase.raptor_step_flops(batch), "peak_gib": b.peak_gib(),
           "states": "streamed (memmap->pinned)" if streaming else "resident", "states_dtype": str(states_dtype)[6:],
           "sync_free": b.sync_free(step) if (v is FAST and not streaming and workload is None) else "-"}
    if rel_err is not None:
        row["loss_rel_err_vs_fp32"] = rel_err
    b.record(row)
    if tmp is not None:
        os.unlink(tmp.name)
    return row


def graph_check(b: Bench, case: Case, v: Variant, steps: int = 10) -> None:
    """CUDA-graph replay trains exactly like eager: same init, same batches, warmup-cosine LR
    (the scheduler must reach the captured step); compare losses and final weights."""
    if not b.cuda:
        return
    from study.runtime import warmup_cosine
    set_matmul(v.tf32)
    results = {}
    for graphs in (False, True):
        teacher = build_teacher(case, b.device, seed=1)
        raptor = Raptor(teacher, even_phases(case.depth, case.k), init="random").to(b.device).train()
        set_fused_attn(raptor, v.fused_attn)
        rt = dataclasses.replace(v, cuda_graphs=graphs).runtime()
        objective = Stage1Objective(raptor, GroupWeights(0.34, 0.33, 0.33, 0), 0.0, compile=False)
        opt = adamw([p for p in raptor.parameters() if p.requires_grad], 1e-3, 1e-4, b.device, v.fused_adamw)
        sched = warmup_cosine(opt, steps, 3)
        step_fn = make_train_step(objective, opt, b.device, rt, 1)
        gen = torch.Generator(device=b.device).manual_seed(2)
        data = torch.randn(steps, case.raptor_batch, case.depth + 1, case.tokens, case.width, device=b.device, generator=gen)
        losses = []
        for i in range(steps):
            losses.append(step_fn(data[i], 0.5 * (1 - i / steps)))
            sched.step()
        results[graphs] = (torch.stack(losses).cpu(), [p.detach().clone() for p in raptor.parameters() if p.requires_grad],
                           getattr(step_fn, "captured", False))
    (l0, p0, _), (l1, p1, captured) = results[False], results[True]
    b.extra.setdefault("graph_check", []).append({
        "case": case.name, "variant": v.name, "steps": steps, "captured": captured,
        "max_loss_rel_diff": float(((l1 - l0).abs() / l0.abs()).max()),
        "max_param_rel_diff": max(float((a - c).norm() / c.norm().clamp_min(1e-12)) for a, c in zip(p1, p0))})
    print("graph check:", b.extra["graph_check"][-1], flush=True)
    b.save()


def profile_step(b: Bench, case: Case, v: Variant, steps: int = 3) -> None:
    """Kernel-time breakdown of one stage-2 step (launched eagerly so each kernel shows)."""
    from torch.profiler import ProfilerActivity, profile
    import study.distill as distill
    set_matmul(v.tf32)
    b.reset_memory()
    teacher = build_teacher(case, b.device)
    raptor = Raptor(teacher, even_phases(case.depth, case.k)).to(b.device).train()
    set_fused_attn(raptor, v.fused_attn)
    objective = Stage2Objective(raptor, GroupWeights(0.45, 0.10, 0.45, 0), 0.0, compile=True)
    opt = adamw([p for p in raptor.parameters() if p.requires_grad], 3e-4, 1e-4, b.device, True)
    rt = dataclasses.replace(v, cuda_graphs=False).runtime()
    step_fn = make_train_step(objective, opt, b.device, rt, 2)
    x = torch.randn(case.raptor_batch, case.depth + 1, case.tokens, case.width, device=b.device)
    for _ in range(5):
        step_fn(x, 0.0)
    b.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step_fn(x, 0.0)
        b.sync()
    def dev(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    events = [e for e in prof.key_averages() if dev(e) > 0]
    total = sum(dev(e) for e in events) / steps / 1e3
    cats: dict[str, float] = {}
    for e in events:
        n = e.key.lower()
        cat = ("gemm" if any(t in n for t in ("gemm", "xmma", "cutlass", "nvjet", "sm90", "cublas", "matmul")) else
               "attention" if any(t in n for t in ("flash", "fmha", "attention", "cudnn", "sdpa")) else
               "triton (fused pointwise/reduction)" if "triton" in n else
               "adamw" if "adam" in n else "other")
        cats[cat] = cats.get(cat, 0.0) + dev(e) / steps / 1e3
    top = sorted(events, key=lambda e: -dev(e))[:30]
    report = {"kernel_ms_per_step": total, "by_category_ms": cats,
              "top": [{"kernel": e.key[:120], "ms_per_step": dev(e) / steps / 1e3,
                       "calls_per_step": e.count / steps} for e in top]}
    b.extra["profile_stage2"] = report
    print(json.dumps(report, indent=1), flush=True)
    b.save()
    del distill


def explore(b: Bench, case: Case) -> None:
    """Knobs outside the product defaults on the headline step: SDPA backends, inductor autotuning, batch."""
    import study.distill as distill

    def fresh():
        torch._dynamo.reset()
        distill._COMPILED.clear()

    backends = {"flash": torch.backends.cuda.enable_flash_sdp, "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
                "cudnn": torch.backends.cuda.enable_cudnn_sdp}
    before = {"flash": torch.backends.cuda.flash_sdp_enabled(), "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
              "cudnn": torch.backends.cuda.cudnn_sdp_enabled()}
    b.extra["sdpa_defaults"] = before
    for only in ("cudnn", "flash", "efficient"):
        for name, enable in backends.items():
            enable(name == only)
        fresh()
        guarded(raptor_stage, b, case, Variant(f"fast, sdpa={only} only"), 2, workload="stage-2 explore")
    for name, enable in backends.items():
        enable(before[name])
    guarded(raptor_stage, b, case, FAST, 2, batch=512, workload="stage-2 explore")
    import torch._inductor.config as inductor_config
    for key, value in (("coordinate_descent_tuning", True), ("max_autotune", True)):
        if b.over_budget():
            break
        setattr(inductor_config, key, value)
        fresh()
        guarded(raptor_stage, b, case, Variant(f"fast + inductor {key}"), 2, workload="stage-2 explore")
    inductor_config.max_autotune = False
    inductor_config.coordinate_descent_tuning = False
    fresh()


def matmul_ceiling(b: Bench) -> None:
    """Measured bf16 matmul rate (8192^3 on random data) as a sanity check of the peak."""
    if not b.cuda:
        return
    n = 8192
    x = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    timing = b.time_steps(lambda: x @ y, warmup=3, iters=10)
    b.extra["bf16_matmul_8192_tflops"] = 2 * n ** 3 / (timing["ms"] * 1e-3) / 1e12
    print(f"measured bf16 matmul 8192^3: {b.extra['bf16_matmul_8192_tflops']:.0f} TFLOP/s "
          f"(peak used for MFU: {b.info['bf16_peak_tflops']} TFLOP/s)", flush=True)


def sizing(b: Bench, cases) -> None:
    """Activation cache bytes per sample and how many samples stay resident."""
    free = torch.cuda.mem_get_info(b.device)[0] if b.cuda else None
    table = []
    for case in cases:
        for dtype in ("float32", "float16"):
            per = bytes_per_sample(case.depth, case.tokens, case.width, dtype)
            table.append({"case": case.name, "dtype": dtype, "L": case.depth, "T": case.tokens, "D": case.width,
                          "bytes_per_sample": per, "MB_per_sample": per / 1e6,
                          "resident_samples_half_free_gpu": int(free * 0.5 // per) if free else None,
                          "imagenet_1k_train_TB": per * 1_281_167 / 1e12})
    b.extra["cache_sizing"] = table
    b.extra["gpu_free_gib_at_start"] = free / 2**30 if free else None
    b.extra["host_ram_gib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


# --------------------------------------------------------------------------- report
def markdown(doc: dict) -> str:
    info = doc["info"]
    lines = [f"# gpu_bench: {info['device']}", "",
             f"torch {info['torch']}, timm {info['timm']}, CUDA {info['cuda']}, started {info['started']}; "
             f"MFU against dense bf16 peak {info['bf16_peak_tflops']} TFLOP/s"
             + (f"; measured bf16 8192^3 matmul {doc['bf16_matmul_8192_tflops']:.0f} TFLOP/s" if doc.get("bf16_matmul_8192_tflops") else ""),
             "", "| case | workload | variant | batch | L | k | step ms (median) | images/s | model TFLOP/step | TFLOP/s | MFU | peak GiB | no host sync |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['case']} | {r['workload']} | {r['variant']} | {r.get('batch', '')} | {r.get('depth', '')} | {r.get('k', '')} "
                     f"| {fmt(r.get('ms'), '.3f')} | {fmt(r.get('items_per_s'), ',.0f')} | {fmt(r.get('flops', 0) / 1e12, '.3f')} "
                     f"| {fmt(r.get('tflops'), '.1f')} | {fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')}% "
                     f"| {fmt(r.get('peak_gib'), '.2f')} | {r.get('sync_free', '-')} |")
    if doc.get("speedups"):
        lines += ["", "## Fast path over the fp32 eager baseline (same process, same shapes)", "",
                  "| case | workload | fast ms | baseline ms | speed-up |", "|---|---|---|---|---|"]
        for s in doc["speedups"]:
            lines.append(f"| {s['case']} | {s['workload']} | {s['fast_ms']:.3f} | {s['baseline_ms']:.3f} | {s['speedup']:.2f}x |")
    scaling = [r for r in doc["rows"] if r["workload"] in ("stage-2 vs L", "stage-2 vs k")]
    if scaling:
        lines += ["", "## Stage-2 step cost against depth L (k = 2) and against k (L = 12), fast path", "",
                  "| sweep | L | k | step ms | ms per layer | MFU |", "|---|---|---|---|---|---|"]
        for r in scaling:
            lines.append(f"| {r['workload'][-1]} | {r['depth']} | {r['k']} | {r['ms']:.3f} | {r['ms'] / r['depth']:.3f} "
                         f"| {fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')}% |")
    if doc.get("graph_check"):
        lines += ["", "## CUDA-graph replay vs eager (same init, batches and warmup-cosine LR; fp32)", ""]
        for g in doc["graph_check"]:
            lines.append(f"- {g['case']}, {g['steps']} stage-1 steps, captured={g['captured']}: max loss rel. diff "
                         f"{g['max_loss_rel_diff']:.2e}, max weight rel. diff {g['max_param_rel_diff']:.2e}")
    if doc.get("profile_stage2"):
        prof = doc["profile_stage2"]
        lines += ["", f"## Kernel time of one ViT-S stage-2 fast step: {prof['kernel_ms_per_step']:.1f} ms", ""]
        lines += [f"- {k}: {v:.2f} ms" for k, v in sorted(prof["by_category_ms"].items(), key=lambda kv: -kv[1])]
    if doc.get("cache_sizing"):
        lines += ["", "## Activation cache sizing: x_0..x_L per sample", "",
                  "| case | dtype | L+1 x T x D | MB / sample | samples resident in half the free GPU memory | ImageNet-1k train (TB) |",
                  "|---|---|---|---|---|---|"]
        for s in doc["cache_sizing"]:
            lines.append(f"| {s['case']} | {s['dtype']} | {s['L'] + 1} x {s['T']} x {s['D']} | {s['MB_per_sample']:.3f} "
                         f"| {fmt(s['resident_samples_half_free_gpu'], ',')} | {s['imagenet_1k_train_TB']:.2f} |")
    return "\n".join(lines) + "\n"


def speedups(rows) -> list[dict]:
    out = []
    for fast in rows:
        if fast["variant"] != FAST.name:
            continue
        for base in rows:
            if (base["variant"] == BASELINE.name and base["case"] == fast["case"] and base["workload"] == fast["workload"]
                    and base.get("depth") == fast.get("depth") and base.get("batch") == fast.get("batch")):
                out.append({"case": fast["case"], "workload": fast["workload"], "fast_ms": fast["ms"],
                            "baseline_ms": base["ms"], "speedup": base["ms"] / fast["ms"]})
    return out


# --------------------------------------------------------------------------- main
def guarded(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as err:  # one failed measurement must not lose the others
        print(f"FAILED {fn.__name__}{[getattr(a, 'name', a) for a in args[1:]]}: {err!r}", flush=True)
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(0)
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="auto: the product's rule (CUDA and >= 1 TFLOP per step); on: wherever a variant allows it")
    ap.add_argument("--budget-s", type=float, default=460.0, help="skip optional measurements past this many seconds")
    ap.add_argument("--sections", default="all",
                    help="comma list of: digits,vit,ablate,vitb,scale,stream,cache,whole (all) and vitl,bf16,profile,explore (extra)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    warmup = args.warmup or (3 if args.quick else 8)
    iters = args.iters or (3 if args.quick else 25)
    b = Bench(device, Path(args.out), warmup, iters, args.compile, args.budget_s)
    sections = set(args.sections.split(",")) if args.sections != "all" else {"digits", "vit", "ablate", "vitb", "scale", "stream", "cache", "whole"}
    torch._dynamo.config.cache_size_limit = 64
    print(json.dumps(b.info), flush=True)
    vit, digits = (QUICK_VIT, QUICK_DIGITS) if args.quick else (VIT_S, DIGITS)
    b.extra["cases"] = {c.name: dataclasses.asdict(c) | {"tokens": c.tokens} for c in (vit, digits)}
    sizing(b, (vit, digits))
    matmul_ceiling(b)

    if "profile" in sections and b.cuda:
        guarded(profile_step, b, vit, FAST)
    if "explore" in sections and b.cuda:
        guarded(explore, b, vit)
    # 0. CUDA-graph replay trains like eager (fp32, so the two should agree to round-off)
    guarded(graph_check, b, digits, BASELINE.__class__("graph check fp32", amp=False, compile=False, tf32=False))
    # 1. the four workloads, fast vs baseline, both cases (the headline first)
    if "vit" in sections:
        guarded(raptor_stage, b, vit, FAST, 2, check=True)
        guarded(raptor_stage, b, vit, BASELINE, 2)
    for case in [c for c, s in ((vit, "vit"), (digits, "digits")) if s in sections]:
        for v in (FAST, BASELINE):
            guarded(teacher_train, b, case, v)
            guarded(extract, b, case, v)
            guarded(raptor_stage, b, case, v, 1)
            if case is not vit:
                guarded(raptor_stage, b, case, v, 2, check=v is FAST)
        if b.cuda:
            guarded(teacher_train, b, case, Variant("fast - cuda_graphs", cuda_graphs=False))
            if case is vit:
                guarded(teacher_train, b, case, Variant("fast - compile", compile=False))
            else:  # below the 1 TFLOP/step rule: show what compiling would buy
                guarded(teacher_train, b, case, Variant("fast + compile", compile=True))
                guarded(raptor_stage, b, case, Variant("fast - cuda_graphs", cuda_graphs=False), 2)
                guarded(raptor_stage, b, case, Variant("fast + compile", compile=True), 2)
        b.extra["speedups"] = speedups(b.rows)
        b.save()
    # 2. which knob buys what, on the headline step
    if "ablate" in sections:
        for v in ABLATIONS:
            guarded(raptor_stage, b, vit, v, 2)
    # 3. cost against depth L and number of blocks k (fast path, fixed batch)
    # 2b. the DINOv2-B-shaped teacher of docs/science.md (width 768): less memory-bound than width 384
    if "vitb" in sections and not args.quick:
        guarded(raptor_stage, b, VIT_B, FAST, 2, check=True)
        guarded(raptor_stage, b, VIT_B, BASELINE, 2)
    if "bf16" in sections:  # how far fewer bytes would go on the memory-bound ViT-S step
        guarded(raptor_stage, b, vit, FAST, 2, pure_bf16=True, workload="stage-2 pure bf16 (bench only)")
    if "vitl" in sections and not args.quick:
        guarded(raptor_stage, b, VIT_L, FAST, 2, check=True)
        guarded(raptor_stage, b, VIT_L, BASELINE, 2)
    if "scale" in sections:
        depths = (2, 4, 8) if args.quick else (6, 12, 24)
        ks = (1, 2, 4) if args.quick else (1, 2, 3, 4, 6, 12)
        for depth in depths:
            guarded(raptor_stage, b, vit, FAST, 2, depth=depth, k=2, workload="stage-2 vs L")
        for k in ks:
            guarded(raptor_stage, b, vit, FAST, 2, k=k, workload="stage-2 vs k")
    # 4. product batch size, activation dtype and the streaming path
    if "stream" in sections and not b.over_budget():
        guarded(raptor_stage, b, vit, FAST, 2, batch=64, workload="stage-2 B=64")
        guarded(raptor_stage, b, vit, FAST, 2, states_dtype=torch.float16, workload="stage-2 fp16 states")
        guarded(raptor_stage, b, vit, FAST, 2, states_dtype=torch.float16, streaming=True, workload="stage-2 streamed fp16")
    if "cache" in sections and not b.over_budget():
        guarded(extract_to_cache, b, vit, FAST, n=8 * vit.teacher_batch if args.quick else 1024, dtype="float16")
        guarded(extract_to_cache, b, digits, FAST, n=64 if args.quick else 1797)
    if "whole" in sections and b.compile_mode != "off" and b.cuda and not b.over_budget():
        guarded(raptor_stage, b, vit, FAST, 2, whole_compile=True, workload="stage-2 step")
    b.extra["speedups"] = speedups(b.rows)
    b.extra["elapsed_s"] = b.elapsed()
    b.save()
    print("\n" + markdown({"info": b.info, "rows": b.rows, **b.extra}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
