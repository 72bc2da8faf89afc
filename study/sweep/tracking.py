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
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console

from study.config import ConfigError
from study.contract import (
    ACC_RATIO,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    FAILED,
    FINISHED,
    NOTE_TAG,
    PHASE_METRICS,
    PRUNED,
    R2_FINAL,
    RESULT_ARTIFACT,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    RUNNING,
    SEARCHED_TAG,
    SPEC_ARTIFACT,
    SPEC_HASH_TAG,
    STATUS_TAG,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TRIAL_ID_TAG,
    trial_run_name,
)
from study.sweep.record import create_trial_run, end_trial, log_epochs, log_params, log_result
from study.sweep.space import RecordConfig, SweepSpec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow itself is imported where it is used (as in study.sweep.record): trial processes import this module through
# the sweep driver but never talk to the tracking store.

console = Console()

log = logging.getLogger(__name__)

# Fail fast on an unreachable server; this module retries and buffers by itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def trial_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def default_tracking_uri(out_root: Path) -> str:
    """The embedded default: a SQLite store in the output folder."""
    return f"sqlite:///{(out_root / 'mlflow.db').resolve()}"


def _unreachable(err: Exception) -> bool:
    text = f"{err} {err.__cause__} {err.__context__}".lower()
    return any(
        s in text
        for s in (
            "connection refused",
            "max retries exceeded",
            "failed to establish",
            "timed out",
            "connectionerror",
            "remote end closed",
            "name or service not known",
        )
    )


class ResilientWriter:
    """Applies MLflow writes in order on a background thread; while the server is unreachable they wait.

    `write(op)` queues `op(client)` and returns at once (the Tune event loop never waits for
    MLflow); the writer thread applies the queue in order. An unreachable server triggers one
    warning and retries with backoff; nothing is dropped. An op failing for another reason
    is logged, set aside, and raised by the next `flush` (the queue goes on meanwhile).
    `flush(patience_s)` waits up to `patience_s` seconds for the queue to drain.
    With ``background=False`` each `write` applies the queue in the caller's thread.
    """

    def __init__(self, tracking_uri: str, background: bool = True):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.background = background
        self.pending: deque[Callable[[MlflowClient], Any]] = deque()
        self.errors: list[Exception] = []
        self.outage_since: float | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._delay = 1.0

    def write(self, op: Callable[[MlflowClient], Any]) -> None:
        with self._cond:
            self.pending.append(op)
            self._cond.notify_all()
        if not self.background:
            self._apply_pending(wait=False)
        elif self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._apply_pending, kwargs={"wait": True}, daemon=True, name="mlflow-writer"
            )
            self._thread.start()

    def _apply_one(self) -> bool:
        """Apply the head of the queue; False while the server is unreachable."""
        op = self.pending[0]
        try:
            op(self.client)
        except Exception as err:  # noqa: BLE001 - outage: keep the op; anything else: set aside, raise at flush
            if _unreachable(err):
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning(
                        "MLflow tracking server %s unreachable; buffering %d write(s) and retrying "
                        "(training continues)",
                        redact(self.tracking_uri),
                        len(self.pending),
                    )
                return False
            log.error("MLflow write failed (%s); continuing with the next writes", str(err).splitlines()[0])
            self.errors.append(err)
        with self._cond:
            self.pending.popleft()
            self._cond.notify_all()
        self._delay = 1.0
        if self.outage_since is not None:
            log.warning(
                "MLflow tracking server back after %.0f s; buffered writes delivered",
                time.monotonic() - self.outage_since,
            )
            self.outage_since = None
        return True

    def _apply_pending(self, wait: bool) -> None:
        while True:
            with self._cond:
                while wait and not self.pending:
                    self._cond.wait()
                if not self.pending:
                    return
            if not self._apply_one():
                if not wait:
                    return
                with self._cond:  # back off; a flush() wakes us to retry at once
                    self._cond.wait(self._delay)
                self._delay = min(self._delay * 2, 30.0)

    def flush(self, patience_s: float = 0.0) -> bool:
        """Wait up to `patience_s` s for every queued op to be applied. True when none is left.
        Raises the first op error set aside since the last flush."""
        deadline = time.monotonic() + patience_s
        if not self.background:
            while self.pending:
                self._apply_pending(wait=False)
                if not self.pending or time.monotonic() >= deadline:
                    break
                time.sleep(min(self._delay, max(0.0, deadline - time.monotonic())))
                self._delay = min(self._delay * 2, 30.0)
        else:
            with self._cond:
                self._cond.notify_all()  # retry now rather than after the backoff
                while self.pending and time.monotonic() < deadline:
                    self._cond.wait(min(1.0, deadline - time.monotonic()))
        if self.errors:
            first, self.errors = self.errors[0], []
            raise first
        return not self.pending


def redact(uri: str) -> str:
    """A tracking URI with any user:password removed (credentials are never logged)."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for `name`, created (with a local artifact root for local stores) if missing.

    Tagged as a model-training experiment, so MLflow 3.x's UI opens it on its runs table."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    experiment_id = client.create_experiment(name, artifact_location=location)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    return experiment_id


def find_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=10_000)


def sweep_parents(client: MlflowClient, experiment_id: str, sweep: str) -> list:
    return find_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}' and tags.`{SWEEP_TAG}` = '{sweep}'")


def check_no_collision(client: MlflowClient, experiment_id: str, spec: SweepSpec, spec_hash: str) -> None:
    """Refuse a launch whose sweep name already has a parent run with another spec hash in this experiment."""
    for run in sweep_parents(client, experiment_id, spec.name):
        other = run.data.tags.get(SPEC_HASH_TAG)
        if other and other != spec_hash:
            raise ConfigError(
                f"sweep: experiment '{spec.name}' already holds sweep {run.data.tags.get(SWEEP_ID_TAG)} "
                f"(run {run.info.run_id}) with spec hash {other}; this spec hashes to {spec_hash}. "
                "Rename the sweep, or pass --new to add a separate sweep to the experiment"
            )


def find_parent(client: MlflowClient, experiment_id: str, sweep_id: str) -> str | None:
    found = find_runs(
        client, experiment_id, f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}' and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'"
    )
    return found[0].info.run_id if found else None


def create_parent_run(
    client: MlflowClient,
    experiment_id: str,
    spec: SweepSpec,
    *,
    sweep_id: str,
    spec_hash: str,
    spec_text: str,
    provenance: dict[str, str],
) -> str:
    """The sweep's parent run: tags (sweep id, spec hash, provenance), the spec as artifact and description."""
    searched = list(spec.space)
    tags = {
        ROLE_TAG: ROLE_SWEEP,
        SWEEP_TAG: spec.name,
        SWEEP_ID_TAG: sweep_id,
        SPEC_HASH_TAG: spec_hash,
        SEARCHED_TAG: json.dumps(searched),
        NOTE_TAG: parent_description(spec, spec_text, None),
        **provenance,
    }
    run = client.create_run(experiment_id, run_name=f"sweep:{spec.name}:{sweep_id}", tags=tags)
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), SPEC_ARTIFACT)
    return run.info.run_id


def parent_description(spec: SweepSpec, spec_text: str, report: str | None) -> str:
    """The parent run's Markdown description: what to compare, where the report is, the spec as launched."""
    searched = ", ".join(f"`{key}`" for key in spec.space) or "nothing (a fixed config)"
    lines = [
        f"**Sweep `{spec.name}`**" + (f": {spec.description}" if spec.description else ""),
        "",
        f"Primary relation: {PRIMARY_RELATION} (docs/science.md).",
        "",
        f"Searched: {searched}; objective `{spec.search.metric}` ({spec.search.mode}). Compare trials in the "
        "Chart or Parallel-coordinates view of this experiment's runs table.",
        "",
    ]
    lines.append(f"Report: {report}" if report else f"Report: `raptor-study report {spec.name}` (linked once written)")
    lines += ["", "Spec as launched:", "", "```yaml", spec_text.rstrip(), "```"]
    return "\n".join(lines)


PRIMARY_RELATION = f"fidelity (`{R2_FINAL}`, `{ACC_RATIO}`) against within-phase similarity (`{PHASE_METRICS[0]}`)"


def reopen_parent(client: MlflowClient, parent_run_id: str) -> None:
    client.update_run(parent_run_id, status="RUNNING")


def mark_orphans(client: MlflowClient, experiment_id: str, sweep_id: str, keep: set[str]) -> list[str]:
    """Child runs left RUNNING by a crash whose trial is not active -> FAILED. Returns their ids."""
    orphans = []
    for run in find_runs(
        client,
        experiment_id,
        f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}' and tags.`{SWEEP_ID_TAG}` = "
        f"'{sweep_id}' and attributes.status = 'RUNNING'",
    ):
        if run.data.tags.get(TRIAL_ID_TAG) not in keep:
            end_trial(client, run.info.run_id, FAILED, "orphaned: its sweep driver stopped")
            orphans.append(run.info.run_id)
    return orphans


def mark_interrupted(
    client: MlflowClient, experiment_id: str, sweep_id: str, parent_run_id: str, cause: str = "Ctrl-C"
) -> list[str]:
    """After Ctrl-C or SIGTERM (`cause`): unfinished child runs and the parent end KILLED (resume reopens them).
    Returns the children."""
    killed = []
    for run in find_runs(
        client,
        experiment_id,
        f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}' and tags.`{SWEEP_ID_TAG}` = "
        f"'{sweep_id}' and attributes.status = 'RUNNING'",
    ):
        end_trial(client, run.info.run_id, RUNNING, f"interrupted ({cause}); `raptor-study resume` continues it")
        killed.append(run.info.run_id)
    client.set_terminated(parent_run_id, status="KILLED")
    return killed


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
    ):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.spec = spec
        self.sweep, self.sweep_id, self.system_metrics = spec.name, sweep_id, system_metrics
        self._reset()

    def _reset(self) -> None:
        self.writer = ResilientWriter(self.tracking_uri)
        self.run_ids: dict[str, str] = {}  # trial_id -> run id
        self.logged_steps: dict[str, dict[str, int]] = {}  # trial_id -> metric -> last step logged
        self.monitors: dict[str, Any] = {}  # trial_id -> MLflow system-metrics monitor
        self.indices: dict[str, int] = {}  # trial_id -> 1-based position among the sweep's trials (run names)
        self.started: set[str] = set()  # trials Tune started in this process (the others ended before a resume)

    _STATE = ("tracking_uri", "experiment_id", "parent_run_id", "spec", "sweep", "sweep_id", "system_metrics")

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
            run_id = create_trial_run(
                client,
                self.experiment_id,
                sweep=self.sweep,
                sweep_id=self.sweep_id,
                trial_id=trial_id,
                parent_run_id=self.parent_run_id,
                run_name=trial_run_name(self._params(trial), trial_id, self.indices.get(trial_id)),
                teacher_key=self._config(trial).teacher_key(),
            )
        self.run_ids[trial_id] = run_id
        return run_id

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
            monitor.finish()

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


def system_metrics_available() -> bool:
    """MLflow's system metrics need psutil (and pynvml for GPUs): optional dependencies."""
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def start_system_metrics(run_id: str, tracking_uri: str):
    """Sample CPU / memory (/ GPU) into `run_id` with MLflow's own monitor; None without psutil."""
    if not system_metrics_available():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=float(os.environ.get("RAPTOR_SYSTEM_METRICS_S", "10")),
        samples_before_logging=1,
        tracking_uri=tracking_uri,
    )
    monitor.start()
    return monitor


def finish_parent(
    client: MlflowClient, parent_run_id: str, summary: dict[str, float], status: str = "FINISHED"
) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_terminated(parent_run_id, status=status)
