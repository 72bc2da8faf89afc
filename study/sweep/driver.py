"""Sweeps: Ray Tune + Optuna search over trials, Ray Train workers distilling, MLflow recording.

Composition (Ray Train V2, the default in the installed Ray): each Tune trial
runs `trial_driver`, a function trainable that runs the one trial pipeline
(`study.trial.pipeline.run_trial`) with the `RayTrainWorkers` runner: the
distillation runs on Ray Train workers (DDP), whose per-epoch reports reach
Tune (so ASHA can stop weak trials); everything else runs in the driver.
`MlflowTrialCallback` in this driver process mirrors everything into MLflow.

Output layout under the output root (default `runs/`):
    mlflow.db, mlartifacts/     the local MLflow store (unless --tracking-uri)
    ray/<sweep>/                Tune experiment state (what `resume` restores) and
                                sweep_spec.json, the spec as launched (--set applied)
    ray/_train/<sweep>/<trial>/ Ray Train runs with per-epoch checkpoints
    trials/<sweep>/<trial>/     each trial's result.json, figures, Raptor weights
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from rich.console import Console
from rich.table import Table

from study.trial.cache import atomic_write
from study.config import ConfigError, deep_merge
from study.trial.data import check_data_source
from study.trial.onnx_vit import check_teacher_source
from study.sweep.space import SweepSpec, check_same_spec, load_sweep
from study.sweep.tracking import (MlflowTrialCallback, default_tracking_uri, ensure_experiment, ensure_parent_run, finish_parent,
                       mark_orphans, trial_name)
from study.sweep.monitor import SweepMonitor, TimedCallback
from study.sweep.raytrain import RayTrainWorkers
from study.trial.pipeline import run_trial

log = logging.getLogger(__name__)
console = Console()


@dataclass(frozen=True)
class SweepPaths:
    """Absolute locations of one sweep's outputs (must be shared by all nodes of a cluster)."""

    root: Path

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    def experiment(self, sweep: str) -> Path:
        return self.ray / sweep

    def launched_spec(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_spec.json"

    def train(self, sweep: str) -> Path:
        return self.ray / "_train" / sweep

    def trials(self, sweep: str) -> Path:
        return self.root / "trials" / sweep

    def logs(self, sweep: str) -> Path:
        return self.root / "logs" / sweep

    def events(self, sweep: str) -> Path:
        return self.experiment(sweep) / "events.json"

    def sweep_timings(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_timings.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


# ----------------------------------------------------------------------------- trial driver
def trial_driver(params: dict[str, Any], spec: SweepSpec, paths: SweepPaths) -> None:
    """A Tune trial: the one trial pipeline with its distillation on Ray Train workers, then a report."""
    trial_id = tune.get_context().get_trial_id()
    out_dir = paths.trials(spec.name) / trial_id
    if (out_dir / "result.json").is_file():  # finished before a crash that Tune's state had not saved yet
        saved = json.loads((out_dir / "result.json").read_text())
        tune.report({**saved["metrics"], "out_dir": str(out_dir)})
        return
    cfg = spec.trial_config(params, name=trial_name(spec.name, trial_id))
    res = spec.resources
    runner = RayTrainWorkers(trial_id, paths.train(spec.name), workers=res.workers, worker_cpu=res.worker_cpu,
                             worker_gpu=res.worker_gpu, report_to_tune=True, local=res.local_train)
    result = run_trial(cfg, out_dir, runner=runner)
    tune.report({**result["metrics"], "out_dir": str(out_dir)})


# ----------------------------------------------------------------------------- sweep
QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow", "alembic", "optuna")


def quiet_console(verbose: bool) -> None:
    """Default console: the sweep's progress view only. Ray workers' output stays in Ray's log files
    (`log_to_driver=False`), Tune prints no status tables (`verbose=0`), and the driver's Ray, MLflow and Optuna
    loggers show warnings only. `verbose` keeps all of it."""
    if verbose:
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new engine prints its tables even at verbose=0
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def connect_ray(address: str | None, verbose: bool = True, logs_link: Path | None = None) -> None:
    """Start a new local Ray (default; never silently joins another sweep's cluster) or join the
    cluster at `address` ('auto': the one `ray start` made on this machine), failing fast with one line.

    Token authentication (on by default for clusters from `ray start --head`) is read by Ray
    at import; the CLI sets it up before importing Ray (`cli.enable_ray_token_auth`)."""
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise ConfigError(f"--address: cannot reach a Ray cluster at {address!r} ({err})") from None
    try:
        context = ray.init(address=address or "local", ignore_reinit_error=True, include_dashboard=False,
                           log_to_driver=verbose, configure_logging=False,
                           logging_level=logging.INFO if verbose else logging.WARNING)
    except ConnectionError as err:
        raise ConfigError(f"--address: could not join the Ray cluster at {address!r} ({err}); if it uses token "
                          "authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from None
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    if logs_link is not None and session:  # Ray's log files, reachable from the run folder
        logs_link.parent.mkdir(parents=True, exist_ok=True)
        logs_link.unlink(missing_ok=True)
        try:
            logs_link.symlink_to(Path(session) / "logs", target_is_directory=True)
        except OSError as err:
            log.warning("could not link Ray's logs at %s (%s); they are in %s/logs", logs_link, err, session)


def concurrency_that_fits(spec: SweepSpec) -> int:
    """How many trials may run at once: a trial holds its driver's and its workers' resources
    together, so if `max_concurrent` drivers took more than the cluster can also give their
    workers, no worker group could ever start (a deadlock). Caps at what the cluster has now."""
    total = ray.cluster_resources()
    res, fits = spec.resources, spec.search.max_concurrent
    for kind, per_trial in (("CPU", res.driver_cpu + res.workers * res.worker_cpu),
                            ("GPU", res.driver_gpu + res.workers * res.worker_gpu)):
        have = total.get(kind, 0.0)
        if per_trial <= 0:
            continue
        if per_trial > have + 1e-9:
            raise ConfigError(f"resources: one trial needs {per_trial:g} {kind} (driver + {res.workers} worker(s)); "
                              f"the Ray cluster has {have:g}")
        if fits * per_trial > have + 1e-9:
            fits = int(have // per_trial + 1e-9)
            log.warning("search.max_concurrent=%d trials x %g %s exceed the cluster's %g %s: running %d at once",
                        spec.search.max_concurrent, per_trial, kind, have, kind, fits)
    return fits


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What Tune reserves for a trial's process: the driver's share, plus its worker's in Ray Train local mode
    (the worker then runs in that process)."""
    res = spec.resources
    if res.local_train:
        return {"CPU": res.driver_cpu + res.worker_cpu, "GPU": res.driver_gpu + res.worker_gpu}
    return {"CPU": res.driver_cpu, "GPU": res.driver_gpu}


def make_trainable(spec: SweepSpec, paths: SweepPaths):
    return tune.with_resources(tune.with_parameters(trial_driver, spec=spec, paths=paths), trial_resources(spec))


def build_tuner(spec: SweepSpec, paths: SweepPaths, callbacks: list, max_concurrent: int,
                verbose: bool = True) -> tune.Tuner:
    from optuna.samplers import RandomSampler, TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    search_alg = None
    if s.sampler != "grid":
        sampler = TPESampler(seed=s.seed) if s.sampler == "tpe" else RandomSampler(seed=s.seed)
        search_alg = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=max_concurrent)
    scheduler = None
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor, max_t=100_000)
    return tune.Tuner(
        make_trainable(spec, paths),
        param_space=spec.tune_space(),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=s.num_samples,
                                    metric=s.metric, mode=s.mode,
                                    max_concurrent_trials=None if search_alg else max_concurrent,  # the limiter caps it
                                    reuse_actors=spec.resources.reuse_actors),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(paths.ray), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=1 if verbose else 0),
    )


def resolve_spec(spec: SweepSpec, paths: SweepPaths) -> SweepSpec:
    """Pin the cache folder to an absolute shared path (Ray workers run in other folders)."""
    cache_dir = spec.base.get("runtime", {}).get("cache_dir")
    cache_dir = str(Path(cache_dir).resolve()) if cache_dir else str(paths.cache)
    return spec.model_copy(update={"base": deep_merge(spec.base, {"runtime": {"cache_dir": cache_dir}})})


def run_sweep(spec_path: str | Path, out_root: Path, *, address: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, overrides: dict[str, Any] | None = None, verbose: bool = False) -> pd.DataFrame:
    """Launch (or resume) the sweep in `spec_path` with `--set` overrides; returns one row per trial.

    By default the console shows one live progress view; `verbose` shows Ray's and Tune's own output instead
    (Ray's log files are linked at OUT/logs/<sweep>/ray either way)."""
    quiet_console(verbose)
    # Tune saves its experiment state at most every 10 s by default ('auto'). A driver killed after a trial started
    # but before that save resumes without the trial and runs a new one, leaving the first one's MLflow run orphaned;
    # with trials that start 0.1 s apart (actor reuse) that window is hit. 1 s keeps it short for a small cost.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    from mlflow.tracking import MlflowClient

    t_start = time.perf_counter()
    paths = SweepPaths(out_root.resolve())
    spec = resolve_spec(load_sweep(spec_path, overrides), paths)
    check_data_source(spec.trial_config({}).data)  # a missing dataset folder fails here, not in every trial
    check_teacher_source(spec.trial_config({}))  # so does a missing ONNX teacher file / package
    experiment_dir = paths.experiment(spec.name)
    can_restore = tune.Tuner.can_restore(str(experiment_dir))
    if resume and not can_restore:
        raise ConfigError(f"resume: no sweep '{spec.name}' to resume under {paths.ray}")
    if not resume and can_restore:
        raise ConfigError(f"sweep: '{spec.name}' already exists under {paths.ray}; use `raptor-study resume` or another --out")
    launched = paths.launched_spec(spec.name)
    if resume and launched.is_file():
        check_same_spec(json.loads(launched.read_text()), spec)
    tracking_uri = tracking_uri or default_tracking_uri(paths.root)
    clock = {"setup_s": time.perf_counter() - t_start}

    def setup_tracking() -> tuple[MlflowClient, str, str]:
        t0 = time.perf_counter()
        client = MlflowClient(tracking_uri)
        try:
            artifacts = paths.root / "mlartifacts" if tracking_uri.startswith("sqlite") else None
            experiment_id = ensure_experiment(client, spec.name, artifacts)
        except Exception as err:  # noqa: BLE001 - any failure to reach the store is a setup error
            raise ConfigError(f"--tracking-uri: cannot use MLflow tracking store {tracking_uri!r} "
                              f"({str(err).splitlines()[0]})") from None
        parent_run_id = ensure_parent_run(client, experiment_id, spec.name, spec.model_dump(mode="json"))
        clock["mlflow_setup_s"] = time.perf_counter() - t0
        return client, experiment_id, parent_run_id

    # the tracking store's setup (a new SQLite store creates its schema: seconds) runs while Ray starts
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-setup") as pool:
        tracking = pool.submit(setup_tracking)
        t0 = time.perf_counter()
        connect_ray(address, verbose, logs_link=paths.logs(spec.name) / "ray")
        clock["ray_init_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            client, experiment_id, parent_run_id = tracking.result()
        except ConfigError:
            if not address:
                ray.shutdown()  # the local Ray this call started
            raise
        clock["setup_s"] += time.perf_counter() - t0  # waiting for the store after Ray was up
    if not resume:
        atomic_write(launched, lambda tmp: tmp.write_text(json.dumps(spec.model_dump(mode="json"), indent=1)))
    max_concurrent = concurrency_that_fits(spec)
    if resume:  # the MLflow callback comes back with the experiment state
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=make_trainable(spec, paths),
                                   resume_unfinished=True, restart_errored=True)
    else:
        mlflow_callback = TimedCallback(MlflowTrialCallback(tracking_uri, experiment_id, parent_run_id, spec))
        total = spec.search.num_samples * _grid_size(spec)
        monitor = SweepMonitor(spec.name, total, max_concurrent, spec.search.metric, spec.search.mode,
                               paths.events(spec.name), live=not verbose, mlflow=mlflow_callback, console=console)
        tuner = build_tuner(spec, paths, [mlflow_callback, monitor], max_concurrent, verbose)
    t0 = time.perf_counter()
    grid = tuner.fit()
    clock["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = results_table(grid, spec)
    orphans = mark_orphans(client, experiment_id, spec.name, keep=set())
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    summary = {f"trials.{k}": v for k, v in counts.items()} | {"trials.orphaned": len(orphans)}
    if len(table) and table[spec.search.metric].notna().any():
        summary[f"best.{spec.search.metric}"] = (table[spec.search.metric].max() if spec.search.mode == "max"
                                                 else table[spec.search.metric].min())
    finish_parent(client, parent_run_id, summary)
    clock["finish_s"] = time.perf_counter() - t0
    clock["total_s"] = time.perf_counter() - t_start
    atomic_write(paths.sweep_timings(spec.name), lambda tmp: tmp.write_text(json.dumps(clock, indent=1)))
    show_table(table, spec, paths, tracking_uri)
    return table


def _grid_size(spec: SweepSpec) -> int:
    """Trials per sample: the product of the choice lists for a grid search, else 1."""
    size = 1
    if spec.search.sampler == "grid":
        for dist in spec.space.values():
            size *= len(dist.choice or [None])
    return size


def results_table(grid, spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: id, status, searched params, objective and headline metrics."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        unfinished = "pruned" if spec.scheduler.type == "asha" else "stopped"  # ASHA's stop, or an interrupt
        status = "failed" if result.error else ("finished" if "r2.final" in metrics else unfinished)
        row = {"trial_id": metrics.get("trial_id", Path(result.path).name), "status": status}
        row.update({key: result.config.get(key) for key in spec.space})
        for key in dict.fromkeys((spec.search.metric, "r2.final", "acc.ratio")):
            row[key] = metrics.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


def show_table(table: pd.DataFrame, spec: SweepSpec, paths: SweepPaths, tracking_uri: str) -> None:
    view = Table(title=f"sweep {spec.name}: {len(table)} trials")
    for column in table.columns:  # short headers: the last part of dotted names
        view.add_column(column if column in ("r2.final", "acc.ratio") else column.rsplit(".", 1)[-1], justify="right")
    for _, row in table.iterrows():
        view.add_row(*("" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(view)
    console.print(f"trial outputs: {paths.trials(spec.name)}")
    console.print(f"MLflow: {tracking_uri}  (browse: raptor-study ui --out {paths.root})")
