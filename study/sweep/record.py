"""The one MLflow writer of trials: every run the study (or its synthetic sweep) records goes through here.

A trial is written in the steps a sweep sees it: `create_trial_run` (tags) ->
`log_params` (its flat config) -> `log_epochs` (per-epoch curves, during training)
-> `log_result` (final metrics, per-layer R^2, tags, dataset inputs, artifacts and, with the
spec's ``record.log_model``, the Raptor as an MLflow PyTorch model: `log_model`) -> `end_trial`
(status). The Tune callback (`study.sweep.tracking`) calls them one by one as events
arrive; `log_trial` calls them all at once for a finished trial (`study.sweep.synthetic`).
Names come from `study.contract`; `analysis.load` reads what this writes. Values go in
`log_batch` calls (never one call per value).

Imports MLflow but not Ray, so the analysis can use it without starting Ray.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.contract import (
    DATA_KEY,
    EMERGENCE_KEY,
    EPOCH_KEYS,
    FAILURE_TAG,
    LAYER_RESULT_KEYS,
    MLFLOW_END_STATUS,
    MODEL_ARTIFACT,
    OPTUNA_TRIAL_TAG,
    PARENT_TAG,
    PHASE_BOUNDS_TAG,
    RAPTOR_EXAMPLE_KEY,
    RAPTOR_FILE,
    RAPTOR_MODULE_KEY,
    RESULT_ARTIFACT,
    ROLE_TAG,
    ROLE_TRIAL,
    RUNNING,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    STATUS_TAG,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TEACHER_KEY_PARAM,
    TRIAL_ID_TAG,
    emergence_metric,
    epoch_metric,
    layer_metric,
)

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput
    from mlflow.tracking import MlflowClient

# MLflow's entities are imported where a write builds them: a trial's process imports this module (through the sweep
# driver) but never writes to MLflow, and importing MLflow there cost seconds (results/throughput/README.md, smoke
# sweep).

BATCH_METRICS, BATCH_PARAMS = 1000, 100  # MLflow's log_batch limits
Steps = dict[str, int]
"""metric name -> last step already logged (a resumed trial never logs a step twice)."""


def param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow records it: where its run goes and what it is; once it ended, what it gave.

    Args:
        sweep: the sweep's name (the experiment).
        sweep_id: the launch's id (``raptor.sweep_id``).
        trial_id: Tune's trial id (``raptor.trial_id``): a resumed trial finds its run again by it.
        parent_run_id: the sweep's parent run.
        run_name: the run's name in the UI (`study.contract.trial_run_name`).
        teacher_key: hash of what determines the trial's teacher.
        params: the flat trial config (dotted keys).
        history: the distillation's per-epoch records (logged by `log_trial`; the Tune callback logs them live).
        result: the trial's result.json content; None for a trial stopped before its evaluation.
        status: the outcome (`study.contract.STATUSES`).
        out_dir: the trial's folder: its files become the run's artifacts.
        source: the command that ran the sweep (the runs table's Source column); None: no source tags.
        optuna_trial: the trial's Optuna trial number; None when no Optuna study samples the sweep.
    """

    sweep: str
    sweep_id: str
    trial_id: str
    parent_run_id: str
    run_name: str
    teacher_key: str
    params: Mapping[str, Any] = field(default_factory=dict)
    history: Sequence[Mapping[str, Any]] = ()
    result: Mapping[str, Any] | None = None
    status: str = RUNNING
    out_dir: Path | None = None
    source: str | None = None
    optuna_trial: int | None = None

    def tags(self) -> dict[str, str]:
        """The tags a new trial run starts with."""
        tags = {
            ROLE_TAG: ROLE_TRIAL,
            SWEEP_TAG: self.sweep,
            SWEEP_ID_TAG: self.sweep_id,
            TRIAL_ID_TAG: self.trial_id,
            PARENT_TAG: self.parent_run_id,
            STATUS_TAG: RUNNING,
            TEACHER_KEY_PARAM: self.teacher_key,
        }
        if self.source:
            tags |= source_tags(self.source)
        if self.optuna_trial is not None:
            tags[OPTUNA_TRIAL_TAG] = str(self.optuna_trial)
        return tags


def source_tags(source: str) -> dict[str, str]:
    """MLflow's source tags for a run started by the command `source` (the runs table's Source column)."""
    return {SOURCE_NAME_TAG: source, SOURCE_TYPE_TAG: "LOCAL"}


def create_trial_run(client: MlflowClient, experiment_id: str, trial: TrialRecord) -> str:
    """A new child run of the sweep's parent, tagged as a running trial (`TrialRecord.tags`)."""
    return client.create_run(experiment_id, run_name=trial.run_name, tags=trial.tags()).info.run_id


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
    for snapshot in (result.get("teacher") or {}).get(EMERGENCE_KEY) or []:  # the teacher across its training
        values += [
            (emergence_metric(key), value, int(snapshot["epoch"]))
            for key, value in snapshot.items()
            if key != "epoch" and value is not None and math.isfinite(value)
        ]
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
    model: bool = False,
    register_as: str | None = None,
) -> None:
    """Everything a finished trial adds: metrics, per-layer R^2, tags, dataset inputs and artifacts.

    With `out_dir` its files are the artifacts; else ``result.json`` is written from `result`. With `model`
    (``record.log_model``) the Raptor in `out_dir` is also logged as an MLflow model (`log_model`)."""
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
    if model:
        if out_dir is None:
            raise ValueError("record.log_model: the trial's folder (out_dir) holds the Raptor; none was given")
        log_model(client, run_id, out_dir, register_as)


def pinned(package: str) -> str:
    """``name==version`` of an installed package, without a local build label (``2.5.1+cu124`` -> ``2.5.1``)."""
    from importlib.metadata import version

    return f"{package}=={version(package).split('+')[0]}"


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's global tracking URI set to `uri` for a call that takes a run but not a store (MLflow 3's
    ``log_model``), then put back, ``MLFLOW_TRACKING_URI`` included (MLflow's own helper unsets it)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_model(client: MlflowClient, run_id: str, out_dir: Path, register_as: str | None = None):
    """The trial's Raptor as an MLflow PyTorch model at `MODEL_ARTIFACT` of the run, once per run.

    The model is `RaptorTokens`: x_0 tokens [B, T, D] float32 -> the Raptor's final tokens [B, T, D]; its signature
    is inferred from the test rows saved with it (also its input example). `register_as`: a new version of that
    registered model. The `study` package goes with it (``code_paths``), so ``mlflow.pytorch.load_model`` unpickles
    it without this checkout. Returns MLflow's ModelInfo, or None when the run already has its model (a trial
    replayed after a crash keeps the one it logged)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    import study
    from study.science.raptor import RaptorTokens

    run = client.get_run(run_id)
    if run.outputs is not None and run.outputs.model_outputs:
        return None
    saved = torch.load(out_dir / RAPTOR_FILE, map_location="cpu", weights_only=False)
    if RAPTOR_MODULE_KEY not in saved:
        raise ValueError(f"record.log_model: {out_dir / RAPTOR_FILE} holds weights only (its trial ran without it)")
    model = RaptorTokens(saved[RAPTOR_MODULE_KEY].float())
    example = saved[RAPTOR_EXAMPLE_KEY].float().numpy()
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    # in the run's experiment (left to itself, log_model would put it in the global active experiment)
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id, params=run.data.params
    )
    with global_tracking_uri(client.tracking_uri):
        return mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            model_id=logged.model_id,
            run_id=run_id,
            signature=signature,
            input_example=example,
            registered_model_name=register_as,
            # pickled, not torch.export'ed (MLflow's newer default): an exported program is fixed to the example's
            # batch size and has no eval()/state_dict; the pickle loads as the RaptorTokens module itself
            serialization_format="pickle",
            code_paths=[str(Path(study.__file__).parent)],
            pip_requirements=[pinned(p) for p in ("torch", "timm", "numpy", "pydantic")],
        )


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
    client: MlflowClient, experiment_id: str, trial: TrialRecord, *, model: bool = False, register_as: str | None = None
) -> str:
    """A whole trial in one call, in the same steps the Tune callback takes (`model`, `register_as`: the spec's
    ``record``, as in `log_result`). Returns the run id."""
    run_id = create_trial_run(client, experiment_id, trial)
    log_params(client, run_id, trial.params)
    logged: Steps = {}
    log_epochs(client, run_id, trial.history, logged)
    if trial.result is not None:
        log_result(
            client, run_id, trial.result, out_dir=trial.out_dir, logged=logged, model=model, register_as=register_as
        )
    end_trial(client, run_id, trial.status)
    return run_id
