"""The Python API: the same sweeps and reports as the CLI, for notebooks and scripts.

    from study import run_sweep, report
    table = run_sweep("search_spaces/smoke.yaml", out="runs")           # or a dict, or a SweepSpec
    table = run_sweep({"name": "mine", "space": {"raptor.k": {"choice": [2, 3]}}}, out="runs")
    path = report("smoke", out="runs")                                   # HTML report; Markdown beside it

Ray and MLflow are imported only when called (this module is importable anywhere).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.store import DEFAULT_RUNS_ROOT
from study.store import tracking_uri as resolve_tracking_uri


def run_sweep(
    spec: Any,
    out: str | Path = DEFAULT_RUNS_ROOT,
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
    out: str | Path | None = None,
    report_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = False,
    runs: str | Path | None = None,
) -> Path:
    """Write the statistics report of one or more sweeps (by name); returns the HTML file's path.

    `out` is the runs root (as for `run_sweep`), `report_dir` the report folder (default OUT/reports/NAME).
    `runs` is the old name of the runs root (with it, `out` is the report folder, as before), for one release."""
    from analysis.report import write_report

    if runs is not None:
        warnings.warn(
            "report(runs=...) is deprecated: `out` is the runs root, `report_dir` the report folder",
            DeprecationWarning,
            stacklevel=2,
        )
        root, report_dir = Path(runs), report_dir or out
    else:
        root = Path(out or DEFAULT_RUNS_ROOT)
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    out_dir = Path(report_dir) if report_dir else root / "reports" / "-".join(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(write_report(names, resolve_tracking_uri(tracking_uri, root), out_dir, log_to_mlflow=log_to_mlflow))
