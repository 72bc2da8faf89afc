"""A sweep's runs in the MLflow store: its experiment, its parent run, finding runs again, and the recovery of runs a
stopped driver left open (orphaned after a crash, KILLED after Ctrl-C or SIGTERM); MLflow's system metrics.

Imports MLflow where it is used and never Ray, so the synthetic sweep (study/sweep/synthetic.py) builds its parent run
with `create_parent_run` without starting Ray."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from study.config import ConfigError
from study.contract import (
    ACC_RATIO,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    FAILED,
    NOTE_TAG,
    PHASE_METRICS,
    R2_FINAL,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    RUNNING,
    SEARCHED_TAG,
    SPEC_ARTIFACT,
    SPEC_HASH_TAG,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TRIAL_ID_TAG,
)
from study.sweep.record import end_trial
from study.sweep.space import SweepSpec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


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


def system_metrics_available() -> bool:
    """MLflow's system metrics need psutil (a dependency; NVML, from nvidia-ml-py, adds the GPUs)."""
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def start_system_metrics(run_id: str, tracking_uri: str):
    """Sample CPU / memory / disk / network (and GPUs) of this machine, the sweep driver's, into `run_id` with
    MLflow's own monitor, every RAPTOR_SYSTEM_METRICS_S seconds (default 10); None without psutil."""
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


def stop_system_metrics(monitor) -> None:
    """Stop the monitor; a run that ended before its first sample was logged gets one sample taken now, so every
    run that had a monitor has system metrics (MLflow's monitor logs only after a full sampling interval)."""
    monitor.finish()
    if getattr(monitor, "_logging_step", 1) == 0:
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 - system metrics are a diagnostic: never fail a trial for them
            log.warning("system metrics of run %s: the final sample was not logged (%s)", monitor._run_id, err)


def finish_parent(
    client: MlflowClient, parent_run_id: str, summary: dict[str, float], status: str = "FINISHED"
) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_terminated(parent_run_id, status=status)
