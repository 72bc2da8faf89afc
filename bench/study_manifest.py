"""Write a study folder's manifest.json from a finished sweep: spec and its hash, code commit, device, commands,
start/end, wall and GPU time, trials finished/failed (results/README.md: the layout and how a study folder is made).

Everything but the device and the command lines is read from the sweep's MLflow parent run (the tags a launch
writes: spec hash, git commit and dirty flag; its start and end; the trial counts it logs when the sweep ends);
what the store does not hold is written as null.

    python -m bench.study_manifest results/NAME --spec search_spaces/NAME.yaml --runs runs --device nvidia-h200 \
        --command "raptor-study sweep search_spaces/NAME.yaml --out runs" [--sweep NAME ...] [--gpus 1]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from analysis.results_index import MANIFEST_FIELDS
from bench.common import ROOT, write_json
from study.contract import (
    FAILED,
    FINISHED,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    PRUNED,
    ROLE_SWEEP,
    ROLE_TAG,
    RUNNING,
    SPEC_HASH_TAG,
    SWEEP_TAG,
    trials_count_metric,
)


def iso(ms: int | None) -> str | None:
    """MLflow's epoch milliseconds as an ISO 8601 UTC time; None stays None."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def sweep_record(client, sweep: str) -> dict[str, Any]:
    """What the latest parent run of `sweep` holds: spec hash, commit, dirty flag, start/end (ms), trial counts.

    Args:
        client: an MlflowClient on the sweep's tracking store.
        sweep: the sweep's name (its MLflow experiment).
    """
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise SystemExit(f"--sweep {sweep}: no such experiment in the tracking store")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}' and tags.`{SWEEP_TAG}` = '{sweep}'",
        order_by=["attributes.start_time DESC"],
    )
    if not parents:
        raise SystemExit(f"--sweep {sweep}: the experiment has no sweep parent run")
    run = parents[0]
    metrics, tags = run.data.metrics, run.data.tags
    return {
        "spec_hash": tags.get(SPEC_HASH_TAG),
        "code_commit": tags.get(GIT_COMMIT_TAG),
        "git_dirty": tags.get(GIT_DIRTY_TAG),
        "start_ms": run.info.start_time,
        "end_ms": run.info.end_time,
        # a finished sweep's summary (it carries the orphan count) once left out the statuses no trial had: 0
        "trials": {
            s: metrics.get(trials_count_metric(s), 0 if trials_count_metric("orphaned") in metrics else None)
            for s in (FINISHED, FAILED, PRUNED, RUNNING)
        },
    }


def build_manifest(
    folder: Path,
    spec: str,
    records: dict[str, dict[str, Any]],
    device: str,
    commands: list[str],
    gpus: int,
    title: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The manifest of study `folder` from the parent-run records of its sweeps (name -> `sweep_record`).

    Args:
        folder: the study folder (results/NAME); its name is the study's.
        spec: the spec's path, relative to the repository root.
        records: sweep name -> what `sweep_record` read.
        device: the machine kind that ran it (e.g. nvidia-h200, cpu).
        commands: the command lines, in the order they ran.
        gpus: GPUs held while the sweeps ran; GPU time = wall time x gpus.
        title: one line on what the study asks (default: the spec's `description`).
        overrides: the --set pairs the launch used.
    """
    starts = [r["start_ms"] for r in records.values() if r["start_ms"]]
    ends = [r["end_ms"] for r in records.values() if r["end_ms"]]
    walls = [(r["end_ms"] - r["start_ms"]) / 1000 for r in records.values() if r["start_ms"] and r["end_ms"]]
    wall = sum(walls) if len(walls) == len(records) else None
    commits = {r["code_commit"] for r in records.values()}
    counts = {}
    for status in (FINISHED, FAILED, PRUNED, RUNNING):
        values = [r["trials"][status] for r in records.values()]
        counts[status] = None if None in values else int(sum(values))
    manifest = {
        "study": folder.name,
        "title": title,
        "spec": spec,
        "spec_hash": {name: r["spec_hash"] for name, r in records.items()},
        "overrides": overrides or [],
        "sweeps": list(records),
        "code_commit": commits.pop() if len(commits) == 1 else sorted(c for c in commits if c) or None,
        "git_dirty": {name: r["git_dirty"] for name, r in records.items()},
        "device": device,
        "commands": commands,
        "start": iso(min(starts)) if starts else None,
        "end": iso(max(ends)) if ends else None,
        "wall_s": wall,
        "gpu_s": None if wall is None else wall * gpus,
        "trials": counts,
        "sources": {
            "spec_hash, code_commit, git_dirty, start, end, trials": "the sweeps' MLflow parent runs",
            "wall_s": "sum over the sweeps of parent-run end - start",
            "gpu_s": f"wall_s x {gpus} GPU(s) held",
            "device, commands": "given to bench.study_manifest",
        },
    }
    missing = set(MANIFEST_FIELDS) - set(manifest)
    assert not missing, missing
    return manifest


def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    from study.store import default_tracking_uri
    from study.sweep.space import load_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the study folder, results/NAME")
    parser.add_argument("--spec", required=True, help="the spec, e.g. search_spaces/NAME.yaml")
    parser.add_argument("--runs", default="runs", help="the sweep's output root (its MLflow store)")
    parser.add_argument("--tracking-uri", help="the tracking store, if not the output root's")
    parser.add_argument("--sweep", action="append", default=[], help="sweep name(s) (default: the spec's name)")
    parser.add_argument("--device", required=True, help="the machine kind, e.g. nvidia-h200 or cpu")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs held while it ran (0 on a CPU)")
    parser.add_argument("--command", action="append", default=[], help="a command line that ran (repeat)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a --set the launch used (repeat)")
    parser.add_argument("--title", help="one line on what the study asks (default: the spec's description)")
    args = parser.parse_args(argv)

    spec = load_sweep(args.spec)
    client = MlflowClient(args.tracking_uri or default_tracking_uri(Path(args.runs)))
    records = {name: sweep_record(client, name) for name in args.sweep or [spec.name]}
    spec_path = Path(args.spec).resolve()
    manifest = build_manifest(
        Path(args.folder),
        str(spec_path.relative_to(ROOT)) if spec_path.is_relative_to(ROOT) else str(spec_path),
        records,
        args.device,
        args.command,
        args.gpus,
        title=args.title or spec.description,
        overrides=args.sets,
    )
    path = write_json(Path(args.folder) / "manifest.json", manifest, indent=1)
    print(f"wrote {path}: {json.dumps(manifest['trials'])}, wall {manifest['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
