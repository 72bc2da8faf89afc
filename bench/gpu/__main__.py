"""`python -m bench.gpu`: the command line, and which measurements run in which order (see bench/gpu/__init__.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

import bench.gpu
from bench.common import RESULTS
from bench.gpu.diagnostics import explore, graph_check, matmul_ceiling, profile_step
from bench.gpu.harness import Bench, guarded
from bench.gpu.mfu import cache_sizing
from bench.gpu.models import ABLATIONS, BASELINE, DIGITS, FAST, QUICK_DIGITS, QUICK_VIT, VIT_B, VIT_L, VIT_S, Variant
from bench.gpu.report import markdown, speedups
from bench.gpu.steps import extract, extract_to_cache, raptor_stage, teacher_train

DEFAULT_SECTIONS = ("digits", "vit", "ablate", "vitb", "scale", "stream", "cache", "whole")
EXTRA_SECTIONS = ("vitl", "bf16", "profile", "explore")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=bench.gpu.__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS / "gpu"))
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto: the product's rule (CUDA and >= 1 TFLOP per step); on: wherever a variant allows it",
    )
    ap.add_argument("--budget-s", type=float, default=460.0, help="skip optional measurements past this many seconds")
    ap.add_argument(
        "--sections",
        default="all",
        help=f"comma list of: {','.join(DEFAULT_SECTIONS)} (all) and {','.join(EXTRA_SECTIONS)} (extra)",
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(
        "cuda"
        if (args.device == "auto" and torch.cuda.is_available())
        else ("cpu" if args.device == "auto" else args.device)
    )
    warmup = args.warmup or (3 if args.quick else 8)
    iters = args.iters or (3 if args.quick else 25)
    b = Bench(device, Path(args.out), warmup, iters, args.compile, args.budget_s)
    sections = set(DEFAULT_SECTIONS) if args.sections == "all" else set(args.sections.split(","))
    torch._dynamo.config.cache_size_limit = 64
    print(json.dumps(b.info), flush=True)
    vit, digits = (QUICK_VIT, QUICK_DIGITS) if args.quick else (VIT_S, DIGITS)
    b.extra["cases"] = {c.name: dataclasses.asdict(c) | {"tokens": c.tokens} for c in (vit, digits)}
    b.extra.update(cache_sizing((vit, digits), torch.cuda.mem_get_info(b.device)[0] if b.cuda else None))
    matmul_ceiling(b)

    if "profile" in sections and b.cuda:
        guarded(profile_step, b, vit, FAST)
    if "explore" in sections and b.cuda:
        guarded(explore, b, vit)
    # 0. CUDA-graph replay trains like eager (fp32, so the two should agree to round-off)
    guarded(graph_check, b, digits, Variant("graph check fp32", amp=False, compile=False, tf32=False))
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
    # 2b. the DINOv2-B-shaped teacher of docs/science.md (width 768): less memory-bound than width 384
    if "vitb" in sections and not args.quick:
        guarded(raptor_stage, b, VIT_B, FAST, 2, check=True)
        guarded(raptor_stage, b, VIT_B, BASELINE, 2)
    if "bf16" in sections:  # how far fewer bytes would go on the memory-bound ViT-S step
        guarded(raptor_stage, b, vit, FAST, 2, pure_bf16=True, workload="stage-2 pure bf16 (bench only)")
    if "vitl" in sections and not args.quick:
        guarded(raptor_stage, b, VIT_L, FAST, 2, check=True)
        guarded(raptor_stage, b, VIT_L, BASELINE, 2)
    # 3. cost against depth L and number of blocks k (fast path, fixed batch)
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
        guarded(
            raptor_stage, b, vit, FAST, 2, states_dtype=torch.float16, streaming=True, workload="stage-2 streamed fp16"
        )
    if "cache" in sections and not b.over_budget():
        guarded(extract_to_cache, b, vit, FAST, n=8 * vit.teacher_batch if args.quick else 1024, dtype="float16")
        guarded(extract_to_cache, b, digits, FAST, n=64 if args.quick else 1797)
    if "whole" in sections and b.compile_mode != "off" and b.cuda and not b.over_budget():
        guarded(raptor_stage, b, vit, FAST, 2, whole_compile=True, workload="stage-2 step")
    b.extra["speedups"] = speedups(b.rows)
    b.extra["elapsed_s"] = b.elapsed()
    b.save()
    print("\n" + markdown(b.doc()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
