"""The Python API: the same sweeps and reports as the CLI, for notebooks and scripts.

    from study import run_sweep, report
    table = run_sweep("search_spaces/smoke.yaml", out="runs")           # or a dict, or a SweepSpec
    table = run_sweep({"name": "mine", "space": {"raptor.k": {"choice": [2, 3]}}}, out="runs")
    path = report("smoke", runs="runs")                                  # HTML report; Markdown beside it

Ray and MLflow are imported only when called (this module is importable anywhere).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_sweep(
    spec: Any,
    out: str | Path = "runs",
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    new: bool = False,
):
    """Launch (or `resume`) the sweep `spec` (a path to a YAML file, a dict or a `SweepSpec`); returns a
    DataFrame with one row per trial. `address` defaults to RAY_ADDRESS (else a new local Ray) and
    `tracking_uri` to MLFLOW_TRACKING_URI (else a SQLite store under `out`)."""
    from study.sweep.driver import run_sweep as _run

    return _run(
        spec, Path(out), address=address, tracking_uri=tracking_uri, resume=resume, overrides=overrides, new=new
    )


def report(
    experiments: str | Sequence[str],
    *,
    runs: str | Path = "runs",
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = False,
) -> Path:
    """Write the statistics report of one or more sweeps (by name); returns the HTML file's path."""
    from analysis.report import write_report

    names = [experiments] if isinstance(experiments, str) else list(experiments)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(runs) / 'mlflow.db').resolve()}"
    out_dir = Path(out) if out else Path(runs) / "reports" / "-".join(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(write_report(names, uri, out_dir, log_to_mlflow=log_to_mlflow))
