"""MLflow tracking of sweeps: one experiment per sweep, a parent run, one child run per trial.

All MLflow writes happen in the sweep driver through a Ray Tune `Callback`
(`MlflowTrialCallback`), so trial processes never talk to the tracking store.
Ray's own `MLflowLoggerCallback` logs flat results only; this one adds what a
study needs: parent/child runs, the full trial config as params, per-layer
R^2 as metric steps, artifacts (figures, result.json, the Raptor weights; the Raptor as an MLflow model
with the spec's `record.log_model`),
pruned/failed status, one run per trial across `resume` (runs are found again
by their `raptor.trial_id` tag and steps are never logged twice), and
buffering with retries while a tracking server is unreachable.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console

from study.contract import (
    FAILED,
    FINISHED,
    OPTUNA_TRIAL_TAG,
    PRUNED,
    R2_FINAL,
    RESULT_ARTIFACT,
    ROLE_TAG,
    ROLE_TRIAL,
    STATUS_TAG,
    SWEEP_ID_TAG,
    TRIAL_ID_TAG,
    trial_run_name,
)
from study.sweep.optuna_link import OptunaLink
from study.sweep.record import TrialRecord, create_trial_run, end_trial, log_epochs, log_params, log_result
from study.sweep.runs import find_runs, start_system_metrics, stop_system_metrics
from study.sweep.space import RecordConfig, SweepSpec
from study.sweep.writer import ResilientWriter

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow itself is imported where it is used (as in study.sweep.record): trial processes import this module through
# the sweep driver but never talk to the tracking store.

console = Console()

log = logging.getLogger(__name__)


def trial_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def error_reason(trial) -> str:
    """One line saying why a Tune trial failed (its error's last line), e.g. an out-of-memory error."""
    text = ""
    try:
        error = trial.get_error()
        text = str(error) if error is not None else ""
    except Exception:  # noqa: BLE001 - older/other trial objects: fall back to the error file
        pass
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    oom = [line for line in lines if is_oom_text(line)]
    return (oom or lines or ["unknown error"])[-1][:500]


def is_oom_text(text: str) -> bool:
    text = text.lower()
    return "out of memory" in text or "outofmemoryerror" in text or "cannot allocate memory" in text


class MlflowTrialCallback(Callback):
    """Ray Tune callback: mirrors every trial into an MLflow child run of the sweep's parent run.

    The callback only queues writes (`ResilientWriter`); the writes themselves are the
    steps of `study.sweep.record`, the one trial writer."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        spec: SweepSpec,
        sweep_id: str = "",
        system_metrics: bool = False,
        source: str | None = None,
        optuna: OptunaLink | None = None,
    ):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.spec = spec
        self.sweep, self.sweep_id, self.system_metrics = spec.name, sweep_id, system_metrics
        self.source, self.optuna = source, optuna
        self._reset()

    def _reset(self) -> None:
        self.writer = ResilientWriter(self.tracking_uri)
        self.run_ids: dict[str, str] = {}  # trial_id -> run id
        self.logged_steps: dict[str, dict[str, int]] = {}  # trial_id -> metric -> last step logged
        self.monitors: dict[str, Any] = {}  # trial_id -> MLflow system-metrics monitor
        self.indices: dict[str, int] = {}  # trial_id -> 1-based position among the sweep's trials (run names)
        self.started: set[str] = set()  # trials Tune started in this process (the others ended before a resume)

    _STATE = (
        "tracking_uri",
        "experiment_id",
        "parent_run_id",
        "spec",
        "sweep",
        "sweep_id",
        "system_metrics",
        "source",
        "optuna",
    )

    # Tune pickles callbacks with the experiment; `resume` restores them. Keep only the
    # constructor arguments: runs and logged steps are found again in MLflow.
    def __getstate__(self) -> dict:
        return {k: self.__dict__.get(k) for k in self._STATE}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- run bookkeeping ------------------------------------------------------------
    # Every MLflow call goes through the writer's queue, run lookup and creation included,
    # so a tracking-server outage at any point only delays the calls: they run, in order,
    # once the server answers, while the trials go on training.
    def _config(self, trial):
        return self.spec.trial_config(trial.config, name=trial_name(self.sweep, trial.trial_id))

    def _params(self, trial) -> dict[str, Any]:
        return self._config(trial).flat()

    def _run_id(self, client: MlflowClient, trial) -> str:
        """The trial's run (found again by tag after a resume, else created). Runs inside queued ops."""
        trial_id = trial.trial_id
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        logged = self.logged_steps.setdefault(trial_id, {})
        found = find_runs(client, self.experiment_id, f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'")
        if found:  # resumed trial: continue its run, never duplicate it
            run_id = found[0].info.run_id
            if found[0].info.status != "FINISHED":  # a finished run replayed after a crash stays as it ended
                client.update_run(run_id, status="RUNNING")
            for key in found[0].data.metrics:
                logged[key] = max(m.step for m in client.get_metric_history(run_id, key))
        else:
            record = TrialRecord(
                sweep=self.sweep,
                sweep_id=self.sweep_id,
                trial_id=trial_id,
                parent_run_id=self.parent_run_id,
                run_name=trial_run_name(self._params(trial), trial_id, self.indices.get(trial_id)),
                teacher_key=self._config(trial).teacher_key(),
                source=getattr(self, "source", None),  # a callback pickled before sources were recorded
            )
            run_id = create_trial_run(client, self.experiment_id, record)
            self._link_optuna(client, trial_id, run_id, record.run_name)
        self.run_ids[trial_id] = run_id
        return run_id

    def _link_optuna(self, client: MlflowClient, trial_id: str, run_id: str, run_name: str) -> None:
        """The run and its Optuna trial point at each other (study/sweep/optuna_link.py); a failure costs the link
        only."""
        link = getattr(self, "optuna", None)
        if link is None:
            return
        try:
            number = link.link(trial_id, run_id, run_name)
        except Exception as err:  # noqa: BLE001 - an unreadable Optuna storage must not stop the MLflow record
            log.warning("trial %s: cannot link its Optuna trial (%s)", trial_id, str(err).splitlines()[0])
            return
        if number is not None:
            client.set_tag(run_id, OPTUNA_TRIAL_TAG, str(number))

    def _write(self, trial, op: Callable[[MlflowClient, str], Any]) -> None:
        """Queue `op(client, run_id)` for the trial's run."""
        self.writer.write(lambda c: op(c, self._run_id(c, trial)))

    # -- Tune hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        if trial in trials:  # Tune keeps its trials in creation order, across resume too
            self.indices[trial.trial_id] = trials.index(trial) + 1
        params = self._params(trial)
        self._write(trial, lambda c, run_id: log_params(c, run_id, params, c.get_run(run_id).data.params))
        if self.system_metrics:
            self._write(trial, lambda c, run_id: self._start_monitor(trial.trial_id, run_id))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "stage" in result and "epoch" in result and R2_FINAL not in result:
            record = dict(result)
            self._write(
                trial,
                lambda c, run_id: log_epochs(c, run_id, [record], self.logged_steps.setdefault(trial.trial_id, {})),
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        write_result = self._result_op(trial, history=False)
        if write_result is None:  # stopped by the scheduler before its evaluation
            self._finish(trial, PRUNED)
            return
        self._write(trial, write_result)
        self._finish(trial, FINISHED)

    def _result_op(self, trial, history: bool) -> Callable[[MlflowClient, str], None] | None:
        """The write of a finished trial's results from its result.json (with `history`, its epochs too: those
        the run lacks); None for a trial stopped before its evaluation."""
        result = trial.last_result or {}
        if R2_FINAL not in result:
            return None
        out_dir = Path(result["out_dir"])
        saved = json.loads((out_dir / RESULT_ARTIFACT).read_text())
        record = getattr(self.spec, "record", None) or RecordConfig()  # a spec pickled before `record` existed

        def write(client: MlflowClient, run_id: str) -> None:
            logged = self.logged_steps.setdefault(trial.trial_id, {})
            if history:
                log_epochs(client, run_id, saved.get("history") or [], logged)
            log_result(
                client,
                run_id,
                saved,
                out_dir=out_dir,
                logged=logged,
                model=record.log_model,
                register_as=record.register_as,
            )

        return write

    def recover_ended(self, trials) -> None:
        """Trials that ended before a resume (Tune restores them as TERMINATED and runs no hook for them) whose
        MLflow writes were lost when the driver was killed (queued, not yet delivered): their run is completed
        from the trial's result.json (params, missing epochs, results) and ended as Tune ended the trial. A run
        that was delivered whole (tagged with its status) is left as it is."""
        ended = []  # (trial, the outcome Tune gave it)
        for trial in trials:
            if trial.status == Trial.TERMINATED and trial.trial_id not in self.started:
                self.indices[trial.trial_id] = trials.index(trial) + 1
                ended.append((trial, FINISHED if R2_FINAL in (trial.last_result or {}) else PRUNED))
        if not ended:
            return

        def recover(client: MlflowClient) -> None:
            query = f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}' and tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}'"
            outcome = {
                run.data.tags.get(TRIAL_ID_TAG): run.data.tags.get(STATUS_TAG)
                for run in find_runs(client, self.experiment_id, query)
            }
            for trial, status in ended:
                if outcome.get(trial.trial_id) == status:  # delivered whole before the driver stopped
                    continue
                try:
                    write_result = self._result_op(trial, history=True)
                except (OSError, ValueError) as err:  # its folder is gone or unreadable: its run stays as it was
                    log.warning(
                        "trial %s: cannot complete its MLflow run from %s (%s)", trial.trial_id, RESULT_ARTIFACT, err
                    )
                    continue
                run_id = self._run_id(client, trial)
                log_params(client, run_id, self._params(trial), client.get_run(run_id).data.params)
                if write_result is not None:
                    write_result(client, run_id)
                end_trial(client, run_id, status)

        self.writer.write(recover)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_reason(trial)
        console.print(f"[red]trial {trial.trial_id} failed[/red]: {reason}", highlight=False, soft_wrap=True)
        self._finish(trial, FAILED, reason)

    def _finish(self, trial, status: str, reason: str | None = None) -> None:
        def finish(client: MlflowClient, run_id: str) -> None:
            self._stop_monitor(trial.trial_id)
            end_trial(client, run_id, status, reason)

        self._write(trial, finish)

    def _start_monitor(self, trial_id: str, run_id: str) -> None:
        monitor = start_system_metrics(run_id, self.tracking_uri)
        if monitor is not None:
            self.monitors[trial_id] = monitor

    def _stop_monitor(self, trial_id: str) -> None:
        monitor = self.monitors.pop(trial_id, None)
        if monitor is not None:
            stop_system_metrics(monitor)

    def flush(self, patience_s: float | None = None) -> bool:
        """Deliver every queued write (waiting up to RAPTOR_MLFLOW_FLUSH_PATIENCE_S, default 600 s)."""
        patience = float(os.environ.get("RAPTOR_MLFLOW_FLUSH_PATIENCE_S", "600")) if patience_s is None else patience_s
        delivered = self.writer.flush(patience_s=patience)
        if not delivered:
            log.error("MLflow still unreachable; %d write(s) could not be delivered", len(self.writer.pending))
        return delivered

    def on_experiment_end(self, trials, **info):
        self.recover_ended(trials)
        self.flush()
