"""Re-analyse the digits sd_study with the teacher as the unit (docs/science.md §7).

The sweep's MLflow store is gone, but its report kept the full trial table
(results/sd_study_cpu/tables/trials.csv: every trial's params and final metrics,
one row per trial, with teacher.key). This script re-reads it, writes a full report folder
(report.md/html, summary.json, tables/) and prints naive vs cluster-level numbers side by side.

    PYTHONPATH=. python -m bench.sd_study_reanalysis [--trials CSV] [--out DIR] [--target r2.final]

The store predates r2_pooled.* (docs/science.md §5), so the primary target defaults to r2.final
here; the predictor is the spec's default, phase.cosine.within_sim.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from analysis.report import write_trials_report
from analysis.sweep import Reading
from bench.common import RESULTS, ROOT
from study.contract import PRIMARY_PREDICTOR, R2_FINAL, TEACHER_KEY_PARAM, TEXT_PARAMS

TRIALS = RESULTS / "sd_study_cpu" / "tables" / "trials.csv"
OUT = RESULTS / "sd_study_cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=Path, default=TRIALS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--target", default=R2_FINAL)
    parser.add_argument("--predictor", default=PRIMARY_PREDICTOR)
    parser.add_argument("--resamples", type=int, default=4999)
    args = parser.parse_args()
    trials = pd.read_csv(args.trials, dtype={name: str for name in TEXT_PARAMS})
    trials.attrs["params"] = [c for c in trials if c.startswith(("teacher.", "raptor.", "distill.", "seed"))]
    reading = Reading(predictor=args.predictor, target=args.target, source="given")
    start = time.perf_counter()
    write_trials_report(trials, args.out, title="sd_study re-analysed: teacher as the unit",
                        source=f"Trials: {args.trials.relative_to(ROOT)} (the sweep's exported trial table).",
                        reading=reading, n_resamples=args.resamples)  # fmt: skip
    seconds = time.perf_counter() - start
    summary = json.loads((args.out / "summary.json").read_text())
    primary, naive = summary["primary"], summary["naive"]
    print(f"analysis took {seconds:.1f} s; {primary['n_trials']} trials, {primary['n_teachers']} teachers "
          f"({trials[TEACHER_KEY_PARAM].nunique()} keys in the table)")  # fmt: skip
    for label, record in (("cluster", primary), ("naive", naive), ("unadjusted", summary["unadjusted"])):
        print(f"{label:10s} " + json.dumps({k: record.get(k) for k in
              ("method", "slope", "slope_ci", "r2", "r2_ci", "p", "note")}))  # fmt: skip
    print(summary["power"]["statement"])


if __name__ == "__main__":
    main()
