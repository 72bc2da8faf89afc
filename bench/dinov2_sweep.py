"""`search_spaces/dinov2.yaml` end to end on a randomly initialised DINOv2 ViT-B/14-reg4.

The path a user with weights takes, offline: the shipped spec, unchanged but for `--set`
overrides that point it at a local ImageFolder (built here: synthetic 64 px images, a few
classes), switch the pretrained weights off (same architecture, random init seeded by
teacher.seed) and shorten the run. Then it reads every trial's result.json and prints the
time per stage: teacher + state extraction (first trial: cache miss; later trials: hits),
similarity + partition, distillation on the Ray Train worker (stage 1 and stage 2 epochs
summed), evaluation (fidelity, probes, dynamics).

Not part of CI (a ViT-B at 224 px wants a GPU). Usage:
    python -m bench.dinov2_sweep --out /tmp/dinov2_runs [--results results/dinov2_gpu/README.md] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import RESULTS, ROOT
from study.contract import R2_FINAL, VAL_R2

SHORT_RUN = {
    "teacher.pretrained": "false",
    "data.max_samples": "256",
    "search.num_samples": "4",
    "distill.stage1.epochs": "3",
    "distill.stage2.epochs": "2",
    "scheduler.type": "none",  # ASHA's grace period (5 epochs) is the whole of this short run
}
STAGES = [
    "teacher_and_states_s",
    "similarity_s",
    "distill_s",
    "stage1_s",
    "stage2_s",
    "evaluate_s",
    "dynamics_s",
    "total_s",
]


def synthetic_imagefolder(root: Path, classes: int, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """root/class_c/img_i.png: a class-coloured square at a random place on noise (RGB, `size` px)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            image = rng.integers(0, 96, (size, size, 3))
            y, x = rng.integers(0, size // 2, 2)
            image[y : y + size // 2, x : x + size // 2] = colour
            Image.fromarray(image.astype(np.uint8)).save(folder / f"img_{i}.png")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/dinov2_runs", help="sweep output root (also holds the images)")
    parser.add_argument("--results", default=str(RESULTS / "dinov2_gpu" / "README.md"))
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more sweep overrides")
    args = parser.parse_args()

    out = Path(args.out)
    images = synthetic_imagefolder(out / "images", args.classes, args.per_class)
    overrides = {"data.path": str(images), **SHORT_RUN, **dict(pair.split("=", 1) for pair in args.set)}
    spec_path = ROOT / "search_spaces" / "dinov2.yaml"
    command = [sys.executable, "-m", "study.cli", "sweep", str(spec_path), "--out", str(out)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    print(" ".join(command), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0

    import torch

    from study.cli import parse_overrides
    from study.sweep.space import load_sweep

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = [json.loads(p.read_text()) for p in sorted((out / "trials" / "dinov2").glob("*/result.json"))]
    spec = load_sweep(spec_path, parse_overrides([f"{k}={v}" for k, v in overrides.items()]))
    res = spec.resources
    lines = [
        f"# dinov2.yaml end to end on a randomly initialised {spec.base['teacher']['timm_name']} ({device})",
        "",
        f"torch {torch.__version__}; sweep exit code {rc}; wall {wall:.1f} s for {len(results)} finished trials "
        f"({spec.search.max_concurrent} at once; per trial driver {res.driver_cpu:g} CPU + "
        f"{res.driver_gpu:g} GPU, "
        f"{res.workers} worker(s) of {res.worker_cpu:g} CPU + {res.worker_gpu:g} GPU).",
        "",
        "Command: `raptor-study sweep search_spaces/dinov2.yaml` with "
        + " ".join(f"`--set {k}={v}`" for k, v in overrides.items() if k != "data.path")
        + f" and `--set data.path=` a synthetic ImageFolder ({args.classes} classes x {args.per_class} images,"
        " 64 px,"
        f" resized to the teacher's {spec.base['data']['image_size']} px).",
        "",
    ]
    if results:
        first = results[0]
        lines += [
            f"Teacher: depth {first['teacher']['depth']}, width {first['teacher']['width']}, "
            f"{first['teacher']['num_registers']} registers, "
            f"{len(first['similarity']['cosine'])} x {len(first['similarity']['cosine'])} similarity; "
            f"timm `{first['config']['teacher']['timm_name']}` (pretrained=false).",
            "",
            "Seconds per stage, per trial (teacher_and_states: build the teacher, extract x_0..x_L of every "
            "split, or read them from the cache; distill: the Ray Train worker group from start to its last "
            "checkpoint; stage1/stage2: the epochs' own time inside it; evaluate: fidelity, probes, dynamics "
            "and figures):",
            "",
        ]
        header = ["trial", "k", "phase_bounds", R2_FINAL, VAL_R2, *STAGES]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for path, r in zip(sorted((out / "trials" / "dinov2").glob("*/result.json")), results):
            m, t = r["metrics"], r["timings"]
            row = [
                path.parent.name,
                r["config"]["raptor"]["k"],
                r["partition"]["phase_bounds"],
                f"{m[R2_FINAL]:.4f}",
                f"{m[VAL_R2]:.4f}",
                *(f"{t[s]:.1f}" if s in t else "-" for s in STAGES),
            ]
            lines.append("| " + " | ".join(map(str, row)) + " |")
        for stage in (1, 2):
            times = [[rec["seconds"] for rec in r["history"] if rec["stage"] == stage] for r in results]
            first, later = [t[0] for t in times if t], [x for t in times for x in t[1:]]
            lines += [
                "",
                f"Stage {stage}: first epoch (torch.compile of the step + CUDA-graph capture) median "
                f"{np.median(first):.2f} s; later epochs median {np.median(later):.2f} s "
                f"({len(later)} epochs, validation included)."
                if later
                else "",
            ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
