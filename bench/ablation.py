"""The paper's ablation table on digits, in process: rows x k x seeds of search_spaces/ablation.yaml.

Runs the grid of `search_spaces/ablation.yaml` (its `ablation_row` cases, or a subset: --rows, --ks, --seeds) one
trial at a time with `run_trial` (no Ray: the point is the science, and the teacher is trained once into the cache),
and writes the per-run rows and a per-(row, k) summary beside the paper's table (k = 3: 3.9 / 72.7 / 75.2 / 76.7 /
82.4 / 83.0%; docs/science.md §4) to results/ablation_digits/.

Not part of CI. Usage:
    nice python -m bench.ablation [--cache-dir DIR] [--rows tf_only stage2] [--ks 2 3 4] [--seeds 0 1 2]
                                  [--set teacher.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import RESULTS, machine_line, parse_sets, summarise, write_report
from study.contract import (
    ABLATION_ROW,
    ACC_FINETUNED,
    ACC_FLOOR,
    ACC_HEAD,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TEACHER,
    ACC_TRANSFER_RATIO,
    R2_FINAL,
    R2_POOLED_FINAL,
    group_metric,
    partition_metric,
)
from study.sweep.space import load_sweep
from study.trial.pipeline import run_trial

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "ablation.yaml"
METRICS = (
    ACC_HEAD,
    ACC_FINETUNED,
    ACC_TEACHER,
    ACC_RAPTOR,
    ACC_FLOOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TRANSFER_RATIO,
    R2_FINAL,
    R2_POOLED_FINAL,
    group_metric(R2_FINAL, "cls"),
    partition_metric("dp_differs"),
)
PAPER = (
    "Paper (k = 3, DINOv2 ViT-B/14, ImageNet, the teacher's own frozen head; docs/science.md §4): TF only 3.9%; "
    "+ AR with annealing 72.7%; + depth scaling 75.2%; + cls weighting 76.7%; + stage 2 82.4%; + a fine-tuned "
    "probe 83.0% (the stage2 row's acc.finetuned)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="teacher/activation cache (default: a fresh temp folder)")
    parser.add_argument("--out", help="trial output root (default: a temp folder)")
    parser.add_argument("--rows", nargs="+", help="ablation rows to run (default: every case of the spec)")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra trial override KEY=VALUE")
    parser.add_argument("--results", default=str(RESULTS / "ablation_digits"))
    args = parser.parse_args()

    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="raptor_ablation_cache_"))
    out_root = Path(args.out or tempfile.mkdtemp(prefix="raptor_ablation_runs_"))
    extra = {"runtime.cache_dir": str(cache_dir), **parse_sets(args.sets)}
    spec = load_sweep(SPEC, extra)
    cases = list(spec.space[ABLATION_ROW].cases)
    chosen = args.rows or cases
    if set(chosen) - set(cases):
        parser.error(f"--rows: unknown row(s) {sorted(set(chosen) - set(cases))} (one of {', '.join(cases)})")
    rows, t_start = [], time.perf_counter()
    for k in args.ks:
        for row in chosen:
            for seed in args.seeds:
                name = f"{row}_k{k}_seed{seed}"
                cfg = spec.trial_config({ABLATION_ROW: row, "raptor.k": k, "seed": seed}, name=name)
                t0 = time.perf_counter()
                m = run_trial(cfg, out_root / name)["metrics"]
                rows.append(
                    {
                        "row": row,
                        "k": k,
                        "seed": seed,
                        **{key: m.get(key) for key in METRICS},
                        "wall_s": time.perf_counter() - t0,
                    }
                )
                print(f"[{name}] " + " ".join(f"{key}={m.get(key, float('nan')):.4f}" for key in METRICS), flush=True)
    runs = pd.DataFrame(rows)
    runs["row"] = pd.Categorical(runs["row"], categories=[c for c in cases if c in chosen], ordered=True)
    summary = summarise(runs, ["k", "row"], list(METRICS))
    machine = machine_line(t_start)
    base = spec.trial_config({})
    header = (
        f"search_spaces/ablation.yaml, in process (bench/ablation.py): teacher depth {base.teacher.depth} width "
        f"{base.teacher.width} epochs {base.teacher.epochs} sd {base.teacher.sd_rate} seed {base.teacher.seed}; "
        f"tf_mode {base.distill.tf_mode}, anneal {base.distill.anneal}, grad_clip {base.distill.grad_clip}, "
        f"stage epochs {base.distill.stage1.epochs}+{base.distill.stage2.epochs}; rows {chosen}, k {args.ks}, "
        f"Raptor seeds {args.seeds}; extra overrides {parse_sets(args.sets) or 'none'}; mean +- sample std over "
        f"seeds"
    )
    print(header, machine, summary.to_string(index=False), sep="\n")
    readme = write_report(
        Path(args.results),
        "python -m bench.ablation",
        [header, machine, PAPER],
        {"per k and row": summary, "per run": runs},
        {"ablation_digits_runs": runs},
    )
    print(f"wrote {readme}, ablation_digits_runs.csv")


if __name__ == "__main__":
    main()
