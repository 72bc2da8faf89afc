"""Sweeps: Ray Tune + Optuna search over trials, Ray Train workers distilling, MLflow recording.

Composition (Ray Train V2, the default in the installed Ray): each Tune trial
runs `trial_driver` (study/sweep/tuning.py), a function trainable that runs the one trial pipeline
(`study.trial.pipeline.run_trial`) with the `RayTrainWorkers` runner: the
distillation runs on Ray Train workers (DDP), whose per-epoch reports reach
Tune (so ASHA can stop weak trials); everything else runs in the driver.
`MlflowTrialCallback` (study/sweep/tracking.py) in this driver process mirrors everything into MLflow.

This module launches and resumes: the spec, the lock, the tracking store set up while Ray starts, the fit, and
the sweep's end (its parent run, its table). Where outputs go: study/sweep/paths.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from filelock import FileLock, Timeout
from ray import tune

from study.config import ConfigError
from study.contract import (
    COMMAND_TAG,
    FINISHED,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    OPTUNA_STUDY_TAG,
    STATUSES,
    VERSION_TAG,
    best_metric,
    trials_count_metric,
)
from study.store import ARTIFACTS_DIR, redact
from study.store import tracking_uri as resolve_tracking_uri
from study.sweep.console import console, drop_ray_resume_hint, quiet_console, results_table, resume_command, show_table
from study.sweep.monitor import SweepMonitor, TimedCallback
from study.sweep.optuna_link import OptunaLink
from study.sweep.paths import SweepPaths
from study.sweep.plan import trial_count
from study.sweep.record import source_tags
from study.sweep.runs import (
    check_no_collision,
    create_parent_run,
    ensure_experiment,
    find_parent,
    finish_parent,
    mark_interrupted,
    mark_orphans,
    reopen_parent,
    start_system_metrics,
    stop_system_metrics,
    sweep_parents,
)
from study.sweep.signals import Interrupts, SweepInterrupted, signal_label
from study.sweep.space import SweepSpec, as_sweep_spec, check_same_spec, spec_hash, spec_text
from study.sweep.tracking import MlflowTrialCallback
from study.sweep.tuning import build_tuner, concurrency_that_fits, connect_ray, make_trainable, resolve_spec
from study.sweep.view import save_runs_view
from study.trial.cache import atomic_write
from study.trial.sources import check_data_source, check_teacher_source

log = logging.getLogger(__name__)

__all__ = ["SweepInterrupted", "run_sweep"]


def launch_lock(paths: SweepPaths, sweep: str) -> FileLock:
    """Held while a sweep runs from this output root: a second launch (or resume) of it is refused."""
    paths.ray.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.lock(sweep)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"sweep: '{sweep}' is already running from {paths.root} (lock {paths.lock(sweep)}); "
            "wait for it, or use another --out"
        ) from None
    return lock


def run_sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    out_root: str | Path = "runs",
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    new: bool = False,
    verbose: bool = False,
    source: str | None = None,
) -> pd.DataFrame:
    """Launch (or resume) a sweep; returns one row per trial.

    `spec` is a typed `SweepSpec`, a dict (the YAML's tree) or a path to a YAML file; `overrides` are
    `--set` values. `address` (else RAY_ADDRESS, else a new local Ray) and `tracking_uri` (else
    MLFLOW_TRACKING_URI, else a SQLite store under `out_root`). A launch whose sweep name already has a
    parent run with another spec hash in the experiment is refused unless `new`. Ctrl-C or SIGTERM raises
    `SweepInterrupted` after the graceful stop (the CLI exits 130 or 143). By default the console shows one live
    progress view; `verbose` shows Ray's and Tune's own output instead (Ray's log files are linked at
    OUT/logs/<sweep>/ray either way). `source`: the entry point that ran the sweep, its runs' Source in MLflow (default:
    `entry_point`)."""
    quiet_console(verbose)
    drop_ray_resume_hint()
    # Tune saves its experiment state at most every 10 s by default ('auto'). A driver killed after a trial started
    # but before that save resumes without the trial and runs a new one, leaving the first one's MLflow run orphaned;
    # with trials that start 0.1 s apart (actor reuse) that window is hit. 1 s keeps it short for a small cost.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    t_start = time.perf_counter()
    paths = SweepPaths(Path(out_root).resolve())
    spec_source = spec
    loaded = as_sweep_spec(spec, overrides)
    text = spec_text(loaded if overrides else spec)
    digest = spec_hash(loaded)
    spec = resolve_spec(loaded, paths)
    check_data_source(spec.trial_config({}).data)  # a missing dataset folder fails here, not in every trial
    check_teacher_source(spec.trial_config({}))  # so does a missing ONNX teacher file / package
    address = address or os.environ.get("RAY_ADDRESS") or None
    launch = Launch(
        spec=spec,
        paths=paths,
        text=text,
        digest=digest,
        address=address,
        tracking_uri=resolve_tracking_uri(tracking_uri, paths.root),
        resume=resume,
        new=new,
        verbose=verbose,
        t_start=t_start,
        source=source or entry_point(spec_source, resume),
        resume_hint=resume_command(spec_source, overrides, paths.root),
    )
    lock = launch_lock(paths, spec.name)
    try:
        return _run_locked(launch)
    finally:
        lock.release()


@dataclass(frozen=True)
class Launch:
    """One launch (or resume) of a sweep, as `run_sweep` resolved it.

    Args:
        spec: the validated spec (overrides applied, cache folder pinned).
        paths: where its outputs go.
        text: the spec as the user wrote it (the parent run's description).
        digest: its hash (`spec_hash`).
        address: the Ray cluster to join; None: a new local Ray.
        tracking_uri: the MLflow store.
        resume: continue the sweep instead of launching it.
        new: launch even if the experiment holds a sweep of this name with another spec hash.
        verbose: Ray's and Tune's own output instead of the progress view.
        t_start: `time.perf_counter()` when `run_sweep` was called (sweep_timings.json).
        source: the command that ran the sweep (the runs' Source column).
        resume_hint: the command that continues it after an interrupt.
    """

    spec: SweepSpec
    paths: SweepPaths
    text: str
    digest: str
    address: str | None
    tracking_uri: str
    resume: bool
    new: bool
    verbose: bool
    t_start: float
    source: str
    resume_hint: str


def _run_locked(launch: Launch) -> pd.DataFrame:
    spec, paths, tracking_uri, resume = launch.spec, launch.paths, launch.tracking_uri, launch.resume
    text, digest, address, new, verbose, t_start = (
        launch.text,
        launch.digest,
        launch.address,
        launch.new,
        launch.verbose,
        launch.t_start,
    )
    from mlflow.tracking import MlflowClient

    experiment_dir = paths.experiment(spec.name)
    can_restore = tune.Tuner.can_restore(str(experiment_dir))
    if resume and not can_restore:
        raise ConfigError(f"resume: no sweep '{spec.name}' to resume under {paths.ray}")
    if not resume and can_restore:
        raise ConfigError(
            f"sweep: '{spec.name}' already exists under {paths.ray}; use `raptor-study resume` or another --out"
        )
    launched = paths.launched_spec(spec.name)
    if resume and launched.is_file():
        check_same_spec(json.loads(launched.read_text()), spec)

    def setup_tracking() -> tuple[MlflowClient, str, str, str]:
        """The MLflow side of the launch: store (a new SQLite store creates its schema: seconds), experiment,
        parent run. Runs in a thread while Ray starts."""
        t0 = time.perf_counter()
        client = MlflowClient(tracking_uri)
        artifact_root = paths.root / ARTIFACTS_DIR if tracking_uri.startswith("sqlite") else None
        try:
            experiment_id = ensure_experiment(client, spec.name, artifact_root)
        except Exception as err:  # noqa: BLE001 - any failure to reach the store is a setup error
            raise ConfigError(
                f"--tracking-uri: cannot use MLflow tracking store {redact(tracking_uri)!r} "
                f"({str(err).splitlines()[0]})"
            ) from None
        if resume:
            id_file = paths.sweep_id_file(spec.name)
            sweep_id = id_file.read_text().strip() if id_file.is_file() else ""
            parent_run_id = find_parent(client, experiment_id, sweep_id) if sweep_id else None
            if parent_run_id is None:  # a store written before sweep ids: the one parent of this name
                parents = sweep_parents(client, experiment_id, spec.name)
                if not parents:
                    raise ConfigError(
                        f"resume: no parent run of sweep '{spec.name}' (sweep id {sweep_id or '?'}) in "
                        f"{redact(tracking_uri)}; was it launched with another --tracking-uri?"
                    )
                parent_run_id = parents[0].info.run_id
            reopen_parent(client, parent_run_id)
        else:
            if not new:
                check_no_collision(client, experiment_id, spec, digest)
            sweep_id = uuid.uuid4().hex[:12]
            optuna_tag = {} if spec.search.sampler == "grid" else {OPTUNA_STUDY_TAG: optuna_study_name(spec, sweep_id)}
            parent_run_id = create_parent_run(
                client,
                experiment_id,
                spec,
                sweep_id=sweep_id,
                spec_hash=digest,
                spec_text=text,
                provenance=source_provenance()
                | source_tags(launch.source)
                | {COMMAND_TAG: command_line()}
                | optuna_tag,
            )
        clock["mlflow_setup_s"] = time.perf_counter() - t0
        return client, experiment_id, sweep_id, parent_run_id

    clock = {"setup_s": time.perf_counter() - t_start}
    # The tracking store's setup runs while Ray starts (results/throughput/README.md, lever 4: both take seconds)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-setup") as pool:
        tracking = pool.submit(setup_tracking)
        t0 = time.perf_counter()
        try:
            connect_ray(address, verbose, logs_link=paths.logs(spec.name) / "ray")
        except BaseException:
            tracking.cancel()
            raise
        clock["ray_init_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            client, experiment_id, sweep_id, parent_run_id = tracking.result()
        except ConfigError:
            if not address:
                ray.shutdown()  # the local Ray this call started
            raise
        clock["setup_s"] += time.perf_counter() - t0  # waiting for the store after Ray was up
    save_runs_view(client, experiment_id, spec)  # the runs table `raptor-study ui` opens (study/sweep/view.py)
    if not resume:
        atomic_write(launched, lambda tmp: tmp.write_text(json.dumps(spec.model_dump(mode="json"), indent=1)))
        atomic_write(paths.sweep_id_file(spec.name), lambda tmp: tmp.write_text(sweep_id))
    max_concurrent = concurrency_that_fits(spec)
    monitor = start_system_metrics(parent_run_id, tracking_uri)
    if resume:  # the callbacks and the Optuna searcher (with its storage) come back with the experiment state
        tuner = tune.Tuner.restore(
            str(experiment_dir), trainable=make_trainable(spec, paths), resume_unfinished=True, restart_errored=True
        )
    else:
        callback = TimedCallback(
            MlflowTrialCallback(
                tracking_uri,
                experiment_id,
                parent_run_id,
                spec,
                sweep_id,
                system_metrics=monitor is not None,
                source=launch.source,
                optuna=optuna_link(spec, paths, sweep_id),
            )
        )
        progress = SweepMonitor(
            spec.name,
            trial_count(spec),
            max_concurrent,
            spec.search.metric,
            spec.search.mode,
            paths.events(spec.name),
            live=not verbose,
            mlflow=callback,
            console=console,
        )
        tuner = build_tuner(
            spec,
            paths,
            [callback, progress],
            max_concurrent,
            study_name=optuna_study_name(spec, sweep_id),
            verbose=verbose,
        )
    t0 = time.perf_counter()
    try:
        with Interrupts() as interrupts:
            grid = tuner.fit()
    finally:
        if monitor is not None:
            stop_system_metrics(monitor)
    clock["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # finish_s: the results table and MLflow's parent run, after fit
    table = results_table(grid, spec)
    if interrupts.count:
        killed = mark_interrupted(client, experiment_id, sweep_id, parent_run_id, signal_label(interrupts.signum))
        done = int((table["status"] == FINISHED).sum()) if len(table) else 0
        console.print(
            f"[yellow]interrupted[/yellow]: {done} trial(s) finished, {len(killed)} unfinished (KILLED in "
            f"MLflow, parent too). Continue with: {launch.resume_hint}",
            highlight=False,
            soft_wrap=True,
        )
        raise SweepInterrupted(spec.name, interrupts.signum)
    orphans = mark_orphans(client, experiment_id, sweep_id, keep=set())
    counts = {status: 0 for status in STATUSES} | (table["status"].value_counts().to_dict() if len(table) else {})
    summary = {trials_count_metric(k): v for k, v in counts.items()} | {trials_count_metric("orphaned"): len(orphans)}
    if len(table) and table[spec.search.metric].notna().any():
        summary[best_metric(spec.search.metric)] = (
            table[spec.search.metric].max() if spec.search.mode == "max" else table[spec.search.metric].min()
        )
    finish_parent(client, parent_run_id, summary)
    clock["finish_s"] = time.perf_counter() - t0
    clock["total_s"] = time.perf_counter() - t_start
    atomic_write(paths.sweep_timings(spec.name), lambda tmp: tmp.write_text(json.dumps(clock, indent=1)))
    show_table(table, spec, paths, tracking_uri)
    if spec.search.sampler != "grid":
        console.print(f"Optuna study: raptor-study dashboard {spec.name} --out {paths.root}", soft_wrap=True)
    return table


def optuna_link(spec: SweepSpec, paths: SweepPaths, sweep_id: str) -> OptunaLink | None:
    """The link between the sweep's MLflow runs and its Optuna study (None for a grid: Tune's own search)."""
    if spec.search.sampler == "grid":
        return None
    return OptunaLink(optuna_study_name(spec, sweep_id), spec.search.storage, paths.optuna_journal(spec.name))


def optuna_study_name(spec: SweepSpec, sweep_id: str) -> str:
    return f"{spec.name}-{sweep_id}"


def command_line() -> str:
    """This process's command as a user would type it (``raptor-study sweep search_spaces/smoke.yaml``; ``python -m
    study`` is the same entry point)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join(["raptor-study" if program == "__main__.py" else program, *sys.argv[1:]])


def entry_point(spec_source: object, resume: bool) -> str:
    """The runs' Source: the entry point and the spec file's name (``raptor-study sweep smoke.yaml``); from the
    Python API with a dict or SweepSpec, the calling script's name."""
    if isinstance(spec_source, (str, Path)):
        return f"raptor-study {'resume' if resume else 'sweep'} {Path(spec_source).name}"
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return f"{program} (study.run_sweep)"


def source_provenance() -> dict[str, str]:
    """Tags naming the code that ran: package version, git commit and dirty flag (when in a git checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tags = {VERSION_TAG: version("raptor-study")}
    except PackageNotFoundError:
        tags = {VERSION_TAG: "unknown"}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags
    return tags | {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(dirty)).lower()}
