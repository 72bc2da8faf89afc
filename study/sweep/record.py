"""The one MLflow writer of trials: every run the study (or its synthetic sweep) records goes through here.

A trial is written in the steps a sweep sees it: `create_trial_run` (tags) ->
`log_params` (its flat config) -> `log_epochs` (per-epoch curves, during training)
-> `log_result` (final metrics, per-layer R^2, tags, dataset inputs, artifacts)
-> `end_trial` (status). The Tune callback (`study.sweep.tracking`) calls them
one by one as events arrive; `log_trial` calls them all at once for a finished
trial (`analysis.synthetic`). Names come from `study.contract`; `analysis.load`
reads what this writes. Values go in `log_batch` calls (never one call per value).

Imports MLflow but not Ray, so the analysis can use it without starting Ray.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.contract import (
    DATA_KEY,
    EPOCH_KEYS,
    FAILURE_TAG,
    LAYER_RESULT_KEYS,
    MLFLOW_END_STATUS,
    PARENT_TAG,
    PHASE_BOUNDS_TAG,
    RESULT_ARTIFACT,
    ROLE_TAG,
    ROLE_TRIAL,
    RUNNING,
    STATUS_TAG,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TEACHER_KEY_PARAM,
    TRIAL_ID_TAG,
    epoch_metric,
    layer_metric,
)

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput
    from mlflow.tracking import MlflowClient

# MLflow's entities are imported where a write builds them: a trial's process imports this module (through the sweep
# driver) but never writes to MLflow, and importing MLflow there cost seconds (docs/results/throughput.md, smoke sweep).

BATCH_METRICS, BATCH_PARAMS = 1000, 100  # MLflow's log_batch limits
Steps = dict[str, int]
"""metric name -> last step already logged (a resumed trial never logs a step twice)."""


def param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def create_trial_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    sweep: str,
    sweep_id: str,
    trial_id: str,
    parent_run_id: str,
    run_name: str,
    teacher_key: str,
) -> str:
    """A new child run of the sweep's parent, tagged as a running trial of the teacher `teacher_key`."""
    tags = {
        ROLE_TAG: ROLE_TRIAL,
        SWEEP_TAG: sweep,
        SWEEP_ID_TAG: sweep_id,
        TRIAL_ID_TAG: trial_id,
        PARENT_TAG: parent_run_id,
        STATUS_TAG: RUNNING,
        TEACHER_KEY_PARAM: teacher_key,
    }
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any], existing: Iterable[str] = ()) -> None:
    """The flat trial config as params (dotted keys, the spec's names); keys in `existing` are skipped."""
    from mlflow.entities import Param

    skip = set(existing)
    items = [Param(k, param_value(v)) for k, v in params.items() if k not in skip]
    for start in range(0, len(items), BATCH_PARAMS):
        client.log_batch(run_id, params=items[start : start + BATCH_PARAMS])


def log_metrics(
    client: MlflowClient, run_id: str, values: Iterable[tuple[str, float, int]], logged: Steps | None = None
) -> None:
    """(name, value, step) triples in batches; steps at or below `logged[name]` are skipped, `logged` updated."""
    from mlflow.entities import Metric

    logged = {} if logged is None else logged
    now = _now_ms()
    fresh = [Metric(key, float(value), now, step) for key, value, step in values if step > logged.get(key, -1)]
    for start in range(0, len(fresh), BATCH_METRICS):
        client.log_batch(run_id, metrics=fresh[start : start + BATCH_METRICS])
    for metric in fresh:
        logged[metric.key] = max(metric.step, logged.get(metric.key, -1))


def epoch_values(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """Distillation history records -> ``stage{n}.{key}`` at step = epoch."""
    return [
        (epoch_metric(int(r["stage"]), key), r[key], int(r["epoch"]))
        for r in records
        for key in EPOCH_KEYS
        if r.get(key) is not None
    ]


def log_epochs(
    client: MlflowClient, run_id: str, records: Iterable[Mapping[str, Any]], logged: Steps | None = None
) -> None:
    log_metrics(client, run_id, epoch_values(records), logged)


def result_values(result: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """A result.json's final metrics (step 0) and per-layer R^2 of each token group (step = layer 1..L)."""
    values = [(key, value, 0) for key, value in result["metrics"].items() if value is not None]
    for entry, prefix in LAYER_RESULT_KEYS.items():  # strict and pooled R^2 per layer
        for group, per_layer in (result.get(entry) or {}).items():
            values += [(layer_metric(group, prefix), value, layer) for layer, value in enumerate(per_layer, start=1)]
    return values


def dataset_inputs(data: Mapping[str, Any]) -> list[DatasetInput]:
    """One MLflow dataset input per split from a result.json ``data`` entry: named ``{dataset}-{split}``, with
    the split's digest (MLflow keeps one input per name and digest), its size as profile and the split as context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps(data.get("source", {}), sort_keys=True)
    digests = data.get("digests", {})
    return [
        DatasetInput(
            Dataset(
                name=f"{data['name']}-{split}",
                digest=digests.get(split, data["digest"]),
                source_type="local",
                source=source,
                profile=json.dumps({"num_rows": int(size), "splits": data["splits"]}),
            ),
            tags=[InputTag("mlflow.data.context", split)],
        )
        for split, size in data["splits"].items()
    ]


def log_result(
    client: MlflowClient,
    run_id: str,
    result: Mapping[str, Any],
    *,
    out_dir: Path | None = None,
    logged: Steps | None = None,
) -> None:
    """Everything a finished trial adds: metrics, per-layer R^2, tags, dataset inputs and artifacts.

    With `out_dir` its files are the artifacts; else ``result.json`` is written from `result`."""
    from mlflow.entities import RunTag

    log_metrics(client, run_id, result_values(result), logged)
    tags = []
    if "teacher" in result:
        tags.append(RunTag(TEACHER_KEY_PARAM, result["teacher"]["key"]))
    if "partition" in result:
        tags.append(RunTag(PHASE_BOUNDS_TAG, json.dumps(result["partition"]["phase_bounds"])))
    if tags:
        client.log_batch(run_id, tags=tags)
    if "digest" in (result.get(DATA_KEY) or {}):
        client.log_inputs(run_id, datasets=dataset_inputs(result[DATA_KEY]))
    if out_dir is not None:
        client.log_artifacts(run_id, str(out_dir))
    else:
        client.log_text(run_id, json.dumps(result), RESULT_ARTIFACT)


def end_trial(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """Tag the outcome and end the run; a run already ended so keeps its end time (a trial replayed after a crash)."""
    from mlflow.entities import RunTag

    mlflow_status = MLFLOW_END_STATUS[status]
    run = client.get_run(run_id)
    if run.info.status == mlflow_status and run.data.tags.get(STATUS_TAG) == status:
        return
    tags = [RunTag(STATUS_TAG, status)] + ([RunTag(FAILURE_TAG, reason[:5000])] if reason else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, status=mlflow_status)


def log_trial(
    client: MlflowClient,
    experiment_id: str,
    *,
    sweep: str,
    sweep_id: str,
    trial_id: str,
    parent_run_id: str,
    run_name: str,
    teacher_key: str,
    params: Mapping[str, Any],
    history: Iterable[Mapping[str, Any]],
    result: Mapping[str, Any] | None,
    status: str,
    out_dir: Path | None = None,
) -> str:
    """A whole trial in one call, in the same steps the Tune callback takes. Returns the run id."""
    run_id = create_trial_run(
        client,
        experiment_id,
        sweep=sweep,
        sweep_id=sweep_id,
        trial_id=trial_id,
        parent_run_id=parent_run_id,
        run_name=run_name,
        teacher_key=teacher_key,
    )
    log_params(client, run_id, params)
    logged: Steps = {}
    log_epochs(client, run_id, history, logged)
    if result is not None:
        log_result(client, run_id, result, out_dir=out_dir, logged=logged)
    end_trial(client, run_id, status)
    return run_id
