"""Checks and explorations around the timed loops (CUDA only): CUDA-graph replay trains like eager,
a kernel-time breakdown of the headline step, knobs outside the product defaults, the matmul ceiling."""

from __future__ import annotations

import dataclasses
import json

import torch

from bench.gpu.harness import Bench, guarded
from bench.gpu.models import FAST, Case, Variant, build_teacher, even_phases, set_matmul
from bench.gpu.steps import raptor_stage, stage_weights
from study.runtime import adamw, set_fused_attn, warmup_cosine
from study.science.distill import Stage1Objective, Stage2Objective, make_train_step, reset_compiled_layer_loss
from study.science.raptor import Raptor


def graph_check(b: Bench, case: Case, v: Variant, steps: int = 10) -> None:
    """CUDA-graph replay trains exactly like eager: same init, same batches, warmup-cosine LR
    (the scheduler must reach the captured step); compare losses and final weights."""
    if not b.cuda:
        return
    set_matmul(v.tf32)
    results = {}
    for graphs in (False, True):
        teacher = build_teacher(case, b.device, seed=1)
        raptor = Raptor(teacher, even_phases(case.depth, case.k), init="random").to(b.device).train()
        set_fused_attn(raptor, v.fused_attn)
        rt = dataclasses.replace(v, cuda_graphs=graphs).runtime()
        objective = Stage1Objective(raptor, stage_weights(1, 0), 0.0, compile=False)
        opt = adamw([p for p in raptor.parameters() if p.requires_grad], 1e-3, 1e-4, b.device, v.fused_adamw)
        sched = warmup_cosine(opt, steps, 3)
        step_fn = make_train_step(objective, opt, b.device, rt, 1)
        gen = torch.Generator(device=b.device).manual_seed(2)
        data = torch.randn(
            steps, case.raptor_batch, case.depth + 1, case.tokens, case.width, device=b.device, generator=gen
        )
        losses = []
        for i in range(steps):
            losses.append(step_fn(data[i], 0.5 * (1 - i / steps)))
            sched.step()
        weights = [p.detach().clone() for p in raptor.parameters() if p.requires_grad]
        results[graphs] = (torch.stack(losses).cpu(), weights, getattr(step_fn, "captured", False))
    (l0, p0, _), (l1, p1, captured) = results[False], results[True]
    b.extra.setdefault("graph_check", []).append(
        {
            "case": case.name,
            "variant": v.name,
            "steps": steps,
            "captured": captured,
            "max_loss_rel_diff": float(((l1 - l0).abs() / l0.abs()).max()),
            "max_param_rel_diff": max(float((a - c).norm() / c.norm().clamp_min(1e-12)) for a, c in zip(p1, p0)),
        }
    )
    print("graph check:", b.extra["graph_check"][-1], flush=True)
    b.save()


def kernel_category(name: str) -> str:
    """Coarse kind of a CUDA kernel from its name."""
    n = name.lower()
    if any(t in n for t in ("gemm", "xmma", "cutlass", "nvjet", "sm90", "cublas", "matmul")):
        return "gemm"
    if any(t in n for t in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if "triton" in n:
        return "triton (fused pointwise/reduction)"
    return "adamw" if "adam" in n else "other"


def profile_step(b: Bench, case: Case, v: Variant, steps: int = 3) -> None:
    """Kernel-time breakdown of one stage-2 step (launched eagerly so each kernel shows)."""
    from torch.profiler import ProfilerActivity, profile

    set_matmul(v.tf32)
    b.reset_memory()
    teacher = build_teacher(case, b.device)
    raptor = Raptor(teacher, even_phases(case.depth, case.k)).to(b.device).train()
    set_fused_attn(raptor, v.fused_attn)
    objective = Stage2Objective(raptor, stage_weights(2, 0), 0.0, compile=True)
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
        cat = kernel_category(e.key)
        cats[cat] = cats.get(cat, 0.0) + dev(e) / steps / 1e3
    top = sorted(events, key=lambda e: -dev(e))[:30]
    report = {
        "kernel_ms_per_step": total,
        "by_category_ms": cats,
        "top": [
            {"kernel": e.key[:120], "ms_per_step": dev(e) / steps / 1e3, "calls_per_step": e.count / steps} for e in top
        ],
    }
    b.extra["profile_stage2"] = report
    print(json.dumps(report, indent=1), flush=True)
    b.save()


def fresh_compile() -> None:
    """Forget every compiled graph, so the next step compiles under the current settings."""
    torch._dynamo.reset()
    reset_compiled_layer_loss()


def explore(b: Bench, case: Case) -> None:
    """Knobs outside the product defaults on the headline step: SDPA backends, inductor autotuning, batch."""
    import torch._inductor.config as inductor_config

    backends = {
        "flash": torch.backends.cuda.enable_flash_sdp,
        "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
        "cudnn": torch.backends.cuda.enable_cudnn_sdp,
    }
    before = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
    }
    b.extra["sdpa_defaults"] = before
    for only in ("cudnn", "flash", "efficient"):
        for name, enable in backends.items():
            enable(name == only)
        fresh_compile()
        guarded(raptor_stage, b, case, Variant(f"fast, sdpa={only} only"), 2, workload="stage-2 explore")
    for name, enable in backends.items():
        enable(before[name])
    guarded(raptor_stage, b, case, FAST, 2, batch=512, workload="stage-2 explore")
    for key, value in (("coordinate_descent_tuning", True), ("max_autotune", True)):
        if b.over_budget():
            break
        setattr(inductor_config, key, value)
        fresh_compile()
        guarded(raptor_stage, b, case, Variant(f"fast + inductor {key}"), 2, workload="stage-2 explore")
    inductor_config.max_autotune = False
    inductor_config.coordinate_descent_tuning = False
    fresh_compile()


def matmul_ceiling(b: Bench) -> None:
    """Measured bf16 matmul rate (8192^3 on random data) as a sanity check of the peak."""
    if not b.cuda:
        return
    n = 8192
    x = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    timing = b.time_steps(lambda: x @ y, warmup=3, iters=10)
    b.extra["bf16_matmul_8192_tflops"] = 2 * n**3 / (timing["ms"] * 1e-3) / 1e12
    print(
        f"measured bf16 matmul 8192^3: {b.extra['bf16_matmul_8192_tflops']:.0f} TFLOP/s "
        f"(peak used for MFU: {b.info['bf16_peak_tflops']} TFLOP/s)",
        flush=True,
    )
