"""What a sweep prints: a quiet console by default (the progress view only; Ray, Tune, MLflow and Optuna at warning
level, Ray's own "resume with Tuner.restore" hint dropped: the sweep names its `raptor-study resume` command), and
the result table at the end."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from study.contract import ACC_RATIO, FAILED, FINISHED, PRUNED, R2_FINAL
from study.store import redact
from study.sweep.paths import SweepPaths
from study.sweep.space import SweepSpec

console = Console()


QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow", "alembic", "optuna")
# Ray's notices at WARNING that need no action: a new local cluster uses token authentication (its default, which
# we keep); Tune writes no TensorBoard files where tensorboardX is not installed (MLflow is the tracker)
RAY_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.utils.callback")


class DropRayResumeHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(path=..., trainable=...)" after an interrupt: the sweep
    prints its own `raptor-study resume` command, the one to follow (Tuner.restore alone would lose the callbacks'
    links to MLflow)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


RAY_RESUME_HINT_LOGGER = "ray.tune.tune"


def drop_ray_resume_hint() -> None:
    """Install `DropRayResumeHint` once on the logger Tune writes its hint to (verbose or not)."""
    logger = logging.getLogger(RAY_RESUME_HINT_LOGGER)
    if not any(isinstance(f, DropRayResumeHint) for f in logger.filters):
        logger.addFilter(DropRayResumeHint())


def resume_command(spec_source: object, overrides: dict | None, root: Path) -> str:
    """The command that continues an interrupted sweep: the spec file as given and the launch's --set values (a
    spec given as a dict or SweepSpec: the Python API call)."""
    if isinstance(spec_source, (str, Path)):
        sets = "".join(f" --set {key}={value!r}" if isinstance(value, str) and " " in value else f" --set {key}={value}"
                       for key, value in (overrides or {}).items())  # fmt: skip
        return f"raptor-study resume {spec_source}{sets} --out {root}"
    return f"study.run_sweep(spec, out={str(root)!r}, resume=True)"


def quiet_console(verbose: bool) -> None:
    """Default console: the sweep's progress view only. Ray workers' output stays in Ray's log files
    (`log_to_driver=False`), Tune prints no status tables (`verbose=0`), and the driver's Ray, MLflow and Optuna
    loggers show warnings only. `verbose` keeps all of it."""
    if verbose:
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new engine prints its tables even at verbose=0
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # MLflow sets its own loggers' level when it is imported (from MLFLOW_LOGGING_LEVEL, default INFO), which undoes
    # the setLevel below when MLflow is imported later, as it now is; and its artifact downloads draw progress bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in RAY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def results_table(grid, spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: id, status, searched params, objective and headline metrics."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        unfinished = PRUNED if spec.scheduler.type == "asha" else "stopped"  # ASHA's stop, or an interrupt
        status = FAILED if result.error else (FINISHED if R2_FINAL in metrics else unfinished)
        row = {"trial_id": metrics.get("trial_id", Path(result.path).name), "status": status}
        row.update({key: (result.config or {}).get(key) for key in spec.space})  # None: never started
        for key in dict.fromkeys((spec.search.metric, R2_FINAL, ACC_RATIO)):
            row[key] = metrics.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


def short_headers(columns: list[str]) -> list[str]:
    """Table headers: the last part of dotted names (teacher.sd_rate -> sd_rate), the whole name where the last
    part is shared (teacher.seed beside seed) and for the headline metrics."""
    tails = [c if c in (R2_FINAL, ACC_RATIO) else c.rsplit(".", 1)[-1] for c in columns]
    return [tail if tails.count(tail) == 1 else column for column, tail in zip(columns, tails, strict=True)]


def result_table(table: pd.DataFrame, title: str) -> Table:
    """The sweep's result table as rich renders it: short headers, floats to 4 significant digits."""
    view = Table(title=title)
    for header in short_headers(list(table.columns)):
        view.add_column(header, justify="right")
    for _, row in table.iterrows():
        view.add_row(*("" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return view


def print_whole(view: Table, out: Console) -> None:
    """Print a table: in a terminal at the terminal's width (rich narrows the columns); elsewhere (a log file, a
    pipe, CI) at the table's own width, which rich would otherwise cut to 80 columns, truncating ids and values."""
    if out.is_terminal:
        out.print(view)
        return
    width = out.width  # rich caps `print(width=...)` at the console's width, so widen the console for this table
    out.width = max(width, out.measure(view, options=out.options.update_width(10_000)).maximum)
    try:
        out.print(view)
    finally:
        out.width = width


def show_table(table: pd.DataFrame, spec: SweepSpec, paths: SweepPaths, tracking_uri: str) -> None:
    print_whole(result_table(table, f"sweep {spec.name}: {len(table)} trials"), console)
    console.print(f"trial outputs: {paths.trials(spec.name)}")
    console.print(
        f"MLflow: {redact(tracking_uri)}  (browse: raptor-study ui {spec.name} --out {paths.root})", soft_wrap=True
    )
