"""The causes study's analysis (docs/science.md, "Beyond the paper: what causes block recurrence") over every sweep of
a store whose name starts with `--prefix` (bench/causes_chunk.sh names them causes_<factor>_<level>_sd<SD> and
causes_base_sd<SD>): analysis/causes.py's effects.csv, forest.png, mediation.csv, emergence.csv / .png and
summary.json, written to `--out`.

    python -m bench.causes_report [--runs runs_gpu] [--out results/causes] [--prefix causes_]
"""

from __future__ import annotations

import argparse

from mlflow.tracking import MlflowClient

from analysis.causes import write_causes
from analysis.load import load_results, load_trials
from study.store import tracking_uri


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs_gpu", help="the runs root whose store holds the sweeps")
    parser.add_argument("--tracking-uri", default=None, help="an MLflow store instead of the runs root's")
    parser.add_argument("--out", default="results/causes")
    parser.add_argument("--prefix", default="causes_")
    args = parser.parse_args(argv)
    uri = tracking_uri(args.tracking_uri, args.runs)
    names = sorted(e.name for e in MlflowClient(uri).search_experiments() if e.name.startswith(args.prefix))
    if not names:
        raise SystemExit(f"no sweep named {args.prefix}* in {uri}")
    trials = load_trials(names, uri)
    summary = write_causes(trials, args.out, load_results(trials["run_id"], uri))
    print(f"{len(names)} sweeps, {len(trials)} trials -> {args.out} ({len(summary['effects'])} primary effects)")
    return summary


if __name__ == "__main__":
    main()
