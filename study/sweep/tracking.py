"""MLflow tracking of sweeps: one experiment per sweep, a parent run, one child run per trial.

All MLflow writes happen in the sweep driver through a Ray Tune `Callback`
(`MlflowTrialCallback`), so trial processes never talk to the tracking store.
Ray's own `MLflowLoggerCallback` logs flat results only; this one adds what a
study needs: parent/child runs, the full trial config as params, per-layer
R^2 as metric steps, artifacts (figures, result.json, the Raptor weights),
pruned/failed status, one run per trial across `resume` (runs are found again
by their `raptor.trial_id` tag and steps are never logged twice), and
buffering with retries while a tracking server is unreachable.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study.contract import (FAILED, FINISHED, PARENT_TAG, PRUNED, ROLE_SWEEP, ROLE_TAG, ROLE_TRIAL, RUNNING, STATUS_TAG,
                             SWEEP_TAG, TRIAL_ID_TAG)

from study.sweep.space import SweepSpec

log = logging.getLogger(__name__)

# Fail fast on an unreachable server; this module retries and buffers by itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

EPOCH_KEYS = ("loss", "val_r2", "lambda_tf", "seconds")  # per-epoch metrics, logged as `stage{n}.{key}` at step = epoch


def trial_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def default_tracking_uri(out_root: Path) -> str:
    """The embedded default: a SQLite store in the output folder."""
    return f"sqlite:///{(out_root / 'mlflow.db').resolve()}"


def _unreachable(err: Exception) -> bool:
    text = f"{err} {err.__cause__} {err.__context__}".lower()
    return any(s in text for s in ("connection refused", "max retries exceeded", "failed to establish", "timed out",
                                   "connectionerror", "remote end closed", "name or service not known"))


class ResilientWriter:
    """Applies MLflow writes in order; while the server is unreachable they wait in a buffer.

    `write(op)` queues `op(client)` and tries to flush; an unreachable server
    triggers one warning and the ops stay queued until a later flush succeeds.
    Other MLflow errors propagate.
    """

    def __init__(self, tracking_uri: str):
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.pending: list[Callable[[MlflowClient], Any]] = []
        self.outage_since: float | None = None

    def write(self, op: Callable[[MlflowClient], Any]) -> None:
        self.pending.append(op)
        self.flush()

    def flush(self, patience_s: float = 0.0) -> bool:
        """Apply queued ops; keep retrying for up to `patience_s` seconds. True when all applied."""
        deadline = time.monotonic() + patience_s
        delay = 1.0
        while self.pending:
            try:
                self.pending[0](self.client)
            except MlflowException as err:
                if not _unreachable(err):
                    raise
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("MLflow tracking server %s unreachable; buffering %d write(s) and retrying (training continues)",
                                self.tracking_uri, len(self.pending))
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.pending.pop(0)
        if self.outage_since is not None:
            log.warning("MLflow tracking server back after %.0f s; buffered writes delivered", time.monotonic() - self.outage_since)
            self.outage_since = None
        return True


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for `name`, created (with a local artifact root for local stores) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def find_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=10_000)


def ensure_parent_run(client: MlflowClient, experiment_id: str, sweep: str, spec: dict) -> str:
    """The sweep's parent run (reused on resume), holding the sweep spec."""
    existing = find_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}' and tags.`{SWEEP_TAG}` = '{sweep}'")
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=f"sweep:{sweep}", tags={ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: sweep})
    client.log_dict(run.info.run_id, spec, "sweep_spec.json")
    return run.info.run_id


def mark_orphans(client: MlflowClient, experiment_id: str, sweep: str, keep: set[str]) -> list[str]:
    """Child runs left RUNNING by a crash whose trial is not active -> FAILED. Returns their ids."""
    orphans = []
    for run in find_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}' and tags.`{SWEEP_TAG}` = '{sweep}' and attributes.status = 'RUNNING'"):
        if run.data.tags.get(TRIAL_ID_TAG) not in keep:
            client.set_tag(run.info.run_id, STATUS_TAG, FAILED)
            client.set_tag(run.info.run_id, "raptor.failure", "orphaned: its sweep driver stopped")
            client.set_terminated(run.info.run_id, status="FAILED")
            orphans.append(run.info.run_id)
    return orphans


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


class MlflowTrialCallback(Callback):
    """Ray Tune callback: mirrors every trial into an MLflow child run of the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, spec: SweepSpec):
        self.tracking_uri, self.experiment_id, self.parent_run_id, self.spec = tracking_uri, experiment_id, parent_run_id, spec
        self.sweep = spec.name
        self._reset()

    def _reset(self) -> None:
        self.writer = ResilientWriter(self.tracking_uri)
        self.run_ids: dict[str, str] = {}  # trial_id -> run id
        self.logged_steps: dict[tuple[str, str], int] = {}  # (trial_id, metric) -> last step logged

    # Tune pickles callbacks with the experiment; `resume` restores them. Keep only the
    # constructor arguments: runs and logged steps are found again in MLflow.
    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in ("tracking_uri", "experiment_id", "parent_run_id", "spec", "sweep")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- run bookkeeping ------------------------------------------------------------
    # Every MLflow call goes through the writer's queue, run lookup and creation included,
    # so a tracking-server outage at any point only delays the calls: they run, in order,
    # once the server answers, while the trials go on training.
    def _run_id(self, client: MlflowClient, trial_id: str) -> str:
        """The trial's run (found again by tag after a resume, else created). Runs inside queued ops."""
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        found = find_runs(client, self.experiment_id, f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'")
        if found:  # resumed trial: continue its run, never duplicate it
            run_id = found[0].info.run_id
            if found[0].info.status != "FINISHED":  # a finished run replayed after a crash stays as it ended
                client.update_run(run_id, status="RUNNING")
            for key in found[0].data.metrics:
                history = client.get_metric_history(run_id, key)
                self.logged_steps[(trial_id, key)] = max(m.step for m in history)
        else:
            run_id = client.create_run(self.experiment_id, run_name=trial_name(self.sweep, trial_id),
                                       tags={ROLE_TAG: ROLE_TRIAL, SWEEP_TAG: self.sweep, TRIAL_ID_TAG: trial_id,
                                             PARENT_TAG: self.parent_run_id, STATUS_TAG: RUNNING}).info.run_id
        self.run_ids[trial_id] = run_id
        return run_id

    def _write(self, trial_id: str, op: Callable[[MlflowClient, str], Any]) -> None:
        """Queue `op(client, run_id)` for the trial's run."""
        self.writer.write(lambda c: op(c, self._run_id(c, trial_id)))

    def _log_metrics(self, trial_id: str, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)

        def log_fresh(client: MlflowClient, run_id: str) -> None:
            fresh = []
            for key, value in values.items():
                if step <= self.logged_steps.get((trial_id, key), -1):
                    continue  # already logged before a resume
                fresh.append(Metric(key, float(value), now, step))
            for start in range(0, len(fresh), 500):
                client.log_batch(run_id, metrics=fresh[start:start + 500])
            for metric in fresh:
                self.logged_steps[(trial_id, metric.key)] = step

        self._write(trial_id, log_fresh)

    # -- Tune hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        params = self.spec.trial_config(trial.config, name=trial_name(self.sweep, trial.trial_id)).flat()

        def log_params(client: MlflowClient, run_id: str) -> None:
            existing = client.get_run(run_id).data.params
            items = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
            for start in range(0, len(items), 100):
                client.log_batch(run_id, params=items[start:start + 100])

        self._write(trial.trial_id, log_params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "stage" in result and "epoch" in result and "r2.final" not in result:
            stage, epoch = int(result["stage"]), int(result["epoch"])
            self._log_metrics(trial.trial_id, {f"stage{stage}.{k}": result[k] for k in EPOCH_KEYS if k in result}, epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if "r2.final" not in result:  # stopped by the scheduler before its evaluation
            self._finish(trial.trial_id, PRUNED, "KILLED")
            return
        out_dir = Path(result["out_dir"])
        saved = json.loads((out_dir / "result.json").read_text())
        self._log_metrics(trial.trial_id, saved["metrics"], 0)
        for key, prefix in (("r2_per_layer", "r2.layer"), ("r2_pooled_per_layer", "r2_pooled.layer")):
            for group, values in (saved.get(key) or {}).items():
                suffix = "" if group == "all" else f".{group}"
                for layer, value in enumerate(values, start=1):
                    self._log_metrics(trial.trial_id, {f"{prefix}{suffix}": value}, layer)
        tags = [RunTag("teacher.key", saved["teacher"]["key"]),
                RunTag("partition.phase_bounds", json.dumps(saved["partition"]["phase_bounds"]))]
        self._write(trial.trial_id, lambda c, run_id: c.log_batch(run_id, tags=tags))
        self._write(trial.trial_id, lambda c, run_id: c.log_artifacts(run_id, str(out_dir)))
        self._finish(trial.trial_id, FINISHED, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id, FAILED, "FAILED")

    def _finish(self, trial_id: str, status: str, mlflow_status: str) -> None:
        def terminate(client: MlflowClient, run_id: str) -> None:
            run = client.get_run(run_id)
            if run.info.status == mlflow_status and run.data.tags.get(STATUS_TAG) == status:
                return  # already ended so (a trial replayed after a crash): keep its end time
            client.set_tag(run_id, STATUS_TAG, status)
            client.set_terminated(run_id, status=mlflow_status)

        self._write(trial_id, terminate)

    def on_experiment_end(self, trials, **info):
        if not self.writer.flush(patience_s=float(os.environ.get("RAPTOR_MLFLOW_FLUSH_PATIENCE_S", "600"))):
            log.error("MLflow still unreachable; %d write(s) could not be delivered", len(self.writer.pending))


def finish_parent(client: MlflowClient, parent_run_id: str, summary: dict[str, float]) -> None:
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items()])
    client.set_terminated(parent_run_id, status=RunStatus.to_string(RunStatus.FINISHED))
