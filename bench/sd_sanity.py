"""does stochastic depth move phase structure and Raptor fidelity the way the paper says?

Trains teachers at SD 0.0 and 0.5 with 3 seeds each (teacher.seed 0, 1, 2; the
default trial otherwise: digits, 8 blocks, width 64, patch 2, k=2), runs one trial
per teacher and prints, per SD, mean +- std over seeds of: mean within-phase cosine
similarity, phase contrast (within - between), final-layer R^2 strict and pooled (all
tokens and cls), the paper's probe ratio (acc.ratio: each model's own probe), the
transfer ratio (acc.transfer_ratio: the teacher's probe on Raptor features, the study's
acc.ratio before docs/science.md §5 took the paper's protocol), the floor-normalised
recovery, and whether the DP and the reference's bisection partitions differ. The paper
(small ViTs on CIFAR-100) expects higher SD -> higher layer-layer similarity and higher
Raptor fidelity. Writes the per-run rows and the summary as CSV and Markdown to
results/sd_sanity/.

Not part of CI. Usage:
    nice python -m bench.sd_sanity [--cache-dir /tmp/fresh] [--out /tmp/runs] [--sds 0.0 0.5] [--seeds 0 1 2]
                                   [--set teacher.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import RESULTS, machine_line, parse_sets, summarise, write_report
from study.config import load_trial_config
from study.contract import (
    ACC_FLOOR,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TEACHER,
    ACC_TRANSFER_RATIO,
    R2_FINAL,
    R2_POOLED_FINAL,
    TEACHER_TEST_ACC,
    group_metric,
    partition_metric,
    phase_metric,
)
from study.trial.pipeline import run_trial

METRICS = {  # column -> metric name in result.json (the column is the metric's name but for the first two and last)
    "within_sim": phase_metric("cosine", "within_sim"),
    "contrast": phase_metric("cosine", "contrast"),
    **{
        name: name
        for name in (
            R2_FINAL,
            R2_POOLED_FINAL,
            group_metric(R2_FINAL, "cls"),
            group_metric(R2_POOLED_FINAL, "cls"),
            ACC_TEACHER,
            ACC_RAPTOR,
            ACC_FLOOR,
            ACC_RATIO,
            ACC_RECOVERED,
            ACC_TRANSFER_RATIO,
        )
    },
    "dp_differs": partition_metric("dp_differs"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="teacher/activation cache (default: a fresh temp folder)")
    parser.add_argument("--out", help="trial output root (default: a temp folder)")
    parser.add_argument("--sds", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="runtime.num_threads (default: torch's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra trial override KEY=VALUE")
    parser.add_argument("--results", default=str(RESULTS / "sd_sanity"))
    args = parser.parse_args()

    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="raptor_sd_cache_"))
    out_root = Path(args.out or tempfile.mkdtemp(prefix="raptor_sd_runs_"))
    base = {"runtime.cache_dir": str(cache_dir), "runtime.progress": False, "raptor.k": args.k, **parse_sets(args.sets)}
    if args.threads:
        base["runtime.num_threads"] = args.threads

    rows, t_start = [], time.perf_counter()
    for sd in args.sds:
        for seed in args.seeds:
            name = f"sd{sd:g}_seed{seed}"
            cfg = load_trial_config(None, {**base, "teacher.sd_rate": sd, "teacher.seed": seed, "name": name})
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_trial(cfg, out_root / name)
            m = result["metrics"]
            row = {
                "sd": sd,
                "seed": seed,
                "teacher_test_acc": m.get(TEACHER_TEST_ACC),
                **{col: m[key] for col, key in METRICS.items()},
                "phase_bounds": str(result["partition"]["phase_bounds"]),
                "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
            }
            rows.append(row)
            print(
                f"[{name}] "
                + " ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()
                    if k not in ("sd", "seed")
                ),
                flush=True,
            )

    runs = pd.DataFrame(rows)
    summary = summarise(runs, ["sd"], ["teacher_test_acc", *METRICS])
    summary["phase_bounds"] = [", ".join(sorted(set(g["phase_bounds"]))) for _, g in runs.groupby("sd", sort=True)]
    machine = machine_line(t_start)
    cfg = load_trial_config(None, base)
    header = (
        f"default trial (digits, teacher depth {cfg.teacher.depth} width {cfg.teacher.width} patch "
        f"{cfg.teacher.patch_size} epochs {cfg.teacher.epochs}, k={cfg.raptor.k}, stage epochs "
        f"{cfg.distill.stage1.epochs}+{cfg.distill.stage2.epochs}, tf_mode {cfg.distill.tf_mode}, grad_clip "
        f"{cfg.distill.grad_clip}); teacher.sd_rate in {args.sds}, teacher.seed in {args.seeds}; extra overrides "
        f"{parse_sets(args.sets) or 'none'}; mean +- sample std (ddof=1) over seeds; within_sim and contrast are "
        f"phase.cosine.* of the k={cfg.raptor.k} partition; dp_differs: share of runs whose DP and bisection "
        f"partitions differ"
    )
    print(header)
    print(machine)
    print(summary.to_string(index=False))
    print(runs.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    readme = write_report(
        Path(args.results),
        "python -m bench.sd_sanity",
        [header, machine],
        {"per SD": summary, "per run": runs},
        {"sd_sanity_runs": runs, "sd_sanity_summary": summary},
    )
    print(f"wrote {readme}, sd_sanity_runs.csv, sd_sanity_summary.csv")


if __name__ == "__main__":
    main()
