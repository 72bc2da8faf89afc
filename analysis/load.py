"""Read a sweep's trials from MLflow into one tidy DataFrame (through `MlflowClient` only).

One row per trial run (tag ``raptor.role=trial``): identity columns, the typed
config params (dotted keys, e.g. ``teacher.sd_rate``), the final metrics (latest
value of each key) and the per-layer R^2 histories as list columns (``r2.layer``,
``r2.layer.cls``, ...; element ``i`` is teacher layer ``i + 1``).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study.contract import (
    EMERGENCE_PREFIX,
    LAYER_METRIC_PREFIXES,
    METRIC_NAMES,
    METRIC_PREFIXES,
    MLFLOW_STATUS,
    PARENT_TAG,
    RESULT_ARTIFACT,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    RUNNING,
    STATUS_TAG,
    STATUSES,
    SWEEP_TAG,
    TEACHER_KEY_PARAM,
    TEXT_PARAMS,
)

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = (
    "run_id",
    "run_name",
    "experiment",
    "sweep",
    "parent_run_id",
    "status",
    "mlflow_status",
    "start_time",
)
_INTEGER = re.compile(r"[+-]?\d+")


def load_trials(experiments: Sequence[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """All trial runs of the named experiments, one row per trial, oldest first.

    ``tracking_uri=None`` uses MLflow's default (``MLFLOW_TRACKING_URI`` or its
    built-in default). ``status`` is the ``raptor.status`` tag, falling back to
    the MLflow run status (FINISHED -> finished, FAILED -> failed, KILLED ->
    pruned, RUNNING/SCHEDULED -> running). ``frame.attrs["params"]`` lists the
    config-param columns and ``frame.attrs["layer_metrics"]`` the per-layer list
    columns. ``teacher.key`` is read from the run's tag of that name when it was
    not logged as a param. Raises ``ValueError`` naming any experiment that does not exist.
    """
    client = MlflowClient(tracking_uri)
    ids = _experiment_ids(client, experiments)
    rows, params, metrics, layers = [], [], [], []
    for name, experiment_id in ids.items():
        for run in _search(client, [experiment_id], f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'"):
            rows.append(_identity(run, name))
            tagged_key = (
                {TEACHER_KEY_PARAM: run.data.tags[TEACHER_KEY_PARAM]} if TEACHER_KEY_PARAM in run.data.tags else {}
            )
            params.append({**tagged_key, **run.data.params})
            metrics.append({k: v for k, v in run.data.metrics.items() if not k.startswith(LAYER_METRIC_PREFIXES)})
            layers.append(
                {
                    k: _layer_history(client, run.info.run_id, k)
                    for k in run.data.metrics
                    if k.startswith(LAYER_METRIC_PREFIXES)
                }
            )
    identity = pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS))
    param_frame = pd.DataFrame(params, index=identity.index)
    param_frame = param_frame.apply(_typed_param).reindex(sorted(param_frame.columns), axis=1)
    metric_frame = pd.DataFrame(metrics, index=identity.index, dtype=float)
    metric_frame = metric_frame.reindex(sorted(metric_frame.columns), axis=1)
    layer_frame = pd.DataFrame(layers, index=identity.index)
    layer_frame = layer_frame.reindex(sorted(layer_frame.columns), axis=1)
    clashes = set(param_frame.columns) & set(metric_frame.columns)
    if clashes:
        raise ValueError(f"names logged both as param and metric: {sorted(clashes)}")
    frame = pd.concat([identity, param_frame, metric_frame, layer_frame], axis=1)
    frame = frame.sort_values(["experiment", "start_time"], kind="stable").reset_index(drop=True)
    frame.attrs["params"] = list(param_frame.columns)
    frame.attrs["layer_metrics"] = list(layer_frame.columns)
    return frame


def load_results(run_ids: Iterable[str], tracking_uri: str | None = None) -> dict[str, dict[str, Any]]:
    """``result.json`` of each run, keyed by run id, via the client's artifact download.

    Runs whose artifact is missing or unreadable are skipped with a logged
    warning; compare the result's keys with the ids asked for to count them.
    """
    client = MlflowClient(tracking_uri)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                local = client.download_artifacts(run_id, RESULT_ARTIFACT, dst_path=str(Path(tmp) / run_id))
                results[run_id] = json.loads(Path(local).read_text())
            except (MlflowException, OSError, json.JSONDecodeError) as err:
                log.warning("run %s: no readable %s (%s)", run_id, RESULT_ARTIFACT, err)
    return results


def find_sweep_runs(experiments: Sequence[str], tracking_uri: str | None = None) -> list[str]:
    """Run ids of the sweep parent runs (tag ``raptor.role=sweep``) of the named experiments."""
    client = MlflowClient(tracking_uri)
    ids = list(_experiment_ids(client, experiments).values())
    return [run.info.run_id for run in _search(client, ids, f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'")]


def _experiment_ids(client: MlflowClient, names: Sequence[str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ValueError(f"no MLflow experiment named {name!r} at tracking URI {client.tracking_uri!r}")
        ids[name] = experiment.experiment_id
    return ids


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _identity(run: Run, experiment: str) -> dict[str, Any]:
    tags = run.data.tags
    tagged = tags.get(STATUS_TAG, "").lower()
    status = tagged if tagged in STATUSES else MLFLOW_STATUS.get(run.info.status, RUNNING)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment": experiment,
        "sweep": tags.get(SWEEP_TAG, experiment),
        "parent_run_id": tags.get(PARENT_TAG),
        "status": status,
        "mlflow_status": run.info.status,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
    }


def _layer_history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """Values at steps 1..max step (latest timestamp wins on repeats; gaps are NaN)."""
    latest: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run_id, key):
        if metric.step >= 1 and (metric.step not in latest or metric.timestamp >= latest[metric.step][0]):
            latest[metric.step] = (metric.timestamp, metric.value)
    depth = max(latest, default=0)
    return [latest[step][1] if step in latest else np.nan for step in range(1, depth + 1)]


def _typed_param(column: pd.Series) -> pd.Series:
    """Strings back to types, column-wise: bool, integer, float, else text ("None" -> missing)."""
    values = column.where(column != "None")
    present = values.dropna()
    if column.name in TEXT_PARAMS or present.empty:
        return values
    if present.isin(["True", "False"]).all():
        return values.map({"True": True, "False": False}).astype("boolean")
    if pd.to_numeric(present, errors="coerce").notna().all():
        numbers = pd.to_numeric(values)
        return numbers.astype("Int64") if present.str.fullmatch(_INTEGER).all() else numbers.astype(float)
    return values


PARAM_PREFIXES = ("data.", "teacher.", "raptor.", "distill.", "partition.", "similarity.", "dynamics.", "runtime.",
                  "seed", "name")  # fmt: skip
"""Column prefixes of the config params in an exported trials table (the rest are identity and metrics)."""


def read_trials_csv(path: str | Path) -> pd.DataFrame:
    """An exported trials table (a report's ``tables/trials.csv``) in the `load_trials` layout: text params as
    text, per-layer histories back to lists, ``attrs["params"]`` and ``attrs["layer_metrics"]`` set."""
    frame = pd.read_csv(path, dtype={name: str for name in TEXT_PARAMS}, low_memory=False)
    layers = [c for c in frame if c.startswith(LAYER_METRIC_PREFIXES)]
    for column in layers:
        frame[column] = frame[column].map(lambda v: json.loads(v) if isinstance(v, str) and v.startswith("[") else v)
    metrics = {c for c in frame if c in METRIC_NAMES or c.startswith((*METRIC_PREFIXES, EMERGENCE_PREFIX))}
    frame.attrs["params"] = [c for c in frame if c.startswith(PARAM_PREFIXES) and c not in metrics and c not in layers]
    frame.attrs["layer_metrics"] = layers
    return frame
