"""The causes study's analysis (docs/science.md, "Beyond the paper: what causes block recurrence") over every sweep
whose name starts with `--prefix` (bench/causes_chunk.sh names them causes_<factor>_<level>_sd<SD> and
causes_base_sd<SD>) in one or more MLflow stores (each device session's runs_gpu/mlflow.db, fetched in its chunk's
store.tgz): analysis/causes.py's effects.csv, forest.png, mediation.csv, emergence.csv / .png and summary.json,
written to `--out`. The teachers' phase snapshots are read from the trials' ``teacher.emergence.*`` step metrics,
which live in the store itself (result.json artifacts stay on the device).

    python -m bench.causes_report --tracking-uri sqlite:///A/mlflow.db --tracking-uri sqlite:///B/mlflow.db
    python -m bench.causes_report [--runs runs_gpu] [--out results/causes] [--prefix causes_]
"""

from __future__ import annotations

import argparse

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.causes import EMERGENCE_CURVES, write_causes
from analysis.load import load_trials
from study.contract import EMERGENCE_KEY, emergence_metric
from study.store import tracking_uri


def emergence_from_metrics(client: MlflowClient, run_ids) -> dict[str, dict]:
    """run id -> a result.json-shaped ``{'teacher': {'emergence': [{'epoch', <curve>: value, ...}]}}`` from the run's
    ``teacher.emergence.<curve>`` step metrics (step = epochs done); runs without them are left out."""
    results = {}
    for run_id in run_ids:
        by_epoch: dict[int, dict] = {}
        for curve in EMERGENCE_CURVES:
            for point in client.get_metric_history(run_id, emergence_metric(curve)):
                by_epoch.setdefault(point.step, {"epoch": point.step})[curve] = point.value
        if by_epoch:
            results[run_id] = {"teacher": {EMERGENCE_KEY: [by_epoch[e] for e in sorted(by_epoch)]}}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs_gpu", help="the runs root whose store holds the sweeps")
    parser.add_argument(
        "--tracking-uri", action="append", default=None, help="an MLflow store instead of the runs root's (repeatable)"
    )
    parser.add_argument("--out", default="results/causes")
    parser.add_argument("--prefix", default="causes_")
    args = parser.parse_args(argv)
    uris = args.tracking_uri or [tracking_uri(None, args.runs)]
    frames, results, names = [], {}, []
    for uri in uris:
        client = MlflowClient(uri)
        found = sorted(e.name for e in client.search_experiments() if e.name.startswith(args.prefix))
        if found:
            frames.append(load_trials(found, uri))
            results |= emergence_from_metrics(client, frames[-1]["run_id"])
            names += found
    if not names:
        raise SystemExit(f"no sweep named {args.prefix}* in {', '.join(uris)}")
    # a session's later store.tgz holds its earlier chunks too: each run once
    trials = pd.concat(frames, ignore_index=True).drop_duplicates("run_id")
    summary = write_causes(trials, args.out, results)
    print(f"{len(names)} sweeps, {len(trials)} trials -> {args.out} ({len(summary['effects'])} primary effects)")
    return summary


if __name__ == "__main__":
    main()
