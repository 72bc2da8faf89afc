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
import signal
import socket
import subprocess
import threading
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
from rich.console import Console
from rich.table import Table

from study.config import ConfigError
from study.configio import deep_merge
from study.contract import (
    ACC_RATIO,
    FAILED,
    FINISHED,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    PRUNED,
    R2_FINAL,
    VERSION_TAG,
    best_metric,
    trials_count_metric,
)
from study.sweep.monitor import SweepMonitor, TimedCallback
from study.sweep.space import SweepSpec, as_sweep_spec, check_same_spec, spec_hash, spec_text
from study.sweep.tracking import (
    MlflowTrialCallback,
    check_no_collision,
    create_parent_run,
    default_tracking_uri,
    ensure_experiment,
    find_parent,
    finish_parent,
    is_oom_text,
    mark_interrupted,
    mark_orphans,
    redact,
    reopen_parent,
    start_system_metrics,
    sweep_parents,
    trial_name,
)
from study.trial.cache import atomic_write
from study.trial.sources import check_data_source, check_teacher_source

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

    def sweep_id_file(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_id"

    def optuna_journal(self, sweep: str) -> Path:
        return self.experiment(sweep) / "optuna.journal"

    def lock(self, sweep: str) -> Path:
        return self.ray / f".{sweep}.lock"


# ----------------------------------------------------------------------------- trial driver
def trial_driver(params: dict[str, Any], spec: SweepSpec, paths: SweepPaths) -> None:
    """A Tune trial: the one trial pipeline with its distillation on Ray Train workers, then a report.

    The pipeline (torch, timm, scikit-learn, matplotlib) is imported here, in the trial's process: the sweep
    driver's process never trains, and importing it there cost seconds per launch (results/throughput/README.md)."""
    from study.sweep.raytrain import RayTrainWorkers
    from study.trial.pipeline import run_trial

    trial_id = tune.get_context().get_trial_id()
    out_dir = paths.trials(spec.name) / trial_id
    if (out_dir / "result.json").is_file():  # finished before a crash that Tune's state had not saved yet
        saved = json.loads((out_dir / "result.json").read_text())
        tune.report({**saved["metrics"], "out_dir": str(out_dir)})
        return
    cfg = spec.trial_config(params, name=trial_name(spec.name, trial_id))
    res = spec.resources
    runner = RayTrainWorkers(
        trial_id,
        paths.train(spec.name),
        workers=res.workers,
        worker_cpu=res.worker_cpu,
        worker_gpu=res.worker_gpu,
        report_to_tune=True,
        local=res.local_train,
    )
    try:
        result = run_trial(cfg, out_dir, runner=runner, keep_model=spec.record.log_model)
    except Exception as err:
        if not (spec.search.oom_retry and is_oom_text(f"{type(err).__name__}: {err}")) or cfg.distill.batch_size < 2:
            raise
        half = cfg.distill.batch_size // 2  # search.oom_retry: once, with half the distillation batch
        log.warning(
            "trial %s ran out of memory (%s); retrying with distill.batch_size=%d",
            trial_id,
            str(err).splitlines()[-1][:200],
            half,
        )
        cfg = spec.trial_config({**params, "distill.batch_size": half}, name=cfg.name)
        runner = RayTrainWorkers(
            f"{trial_id}-oom",
            paths.train(spec.name),
            workers=res.workers,
            worker_cpu=res.worker_cpu,
            worker_gpu=res.worker_gpu,
            report_to_tune=True,
            local=res.local_train,
        )
        result = run_trial(cfg, out_dir, runner=runner, keep_model=spec.record.log_model)
    tune.report({**result["metrics"], "out_dir": str(out_dir)})


# ----------------------------------------------------------------------------- sweep
QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow", "alembic", "optuna")
# Ray's notices at WARNING that need no action: a new local cluster uses token authentication (its default, which
# we keep); Tune writes no TensorBoard files where tensorboardX is not installed (MLflow is the tracker)
RAY_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.utils.callback")


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
        context = ray.init(
            address=address or "local",
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=verbose,
            configure_logging=False,
            logging_level=logging.INFO if verbose else logging.WARNING,
        )
    except ConnectionError as err:
        raise ConfigError(
            f"--address: could not join the Ray cluster at {address!r} ({err}); if it uses token "
            "authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        ) from None
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
    for kind, per_trial in (
        ("CPU", res.driver_cpu + res.workers * res.worker_cpu),
        ("GPU", res.driver_gpu + res.workers * res.worker_gpu),
    ):
        have = total.get(kind, 0.0)
        if per_trial <= 0:
            continue
        if per_trial > have + 1e-9:
            raise ConfigError(
                f"resources: one trial needs {per_trial:g} {kind} (driver + {res.workers} worker(s)); "
                f"the Ray cluster has {have:g}"
            )
        if fits * per_trial > have + 1e-9:
            fits = int(have // per_trial + 1e-9)
            log.warning(
                "search.max_concurrent=%d trials x %g %s exceed the cluster's %g %s: running %d at once",
                spec.search.max_concurrent,
                per_trial,
                kind,
                have,
                kind,
                fits,
            )
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


def optuna_storage(spec: SweepSpec, paths: SweepPaths):
    """The Optuna study's storage: the spec's RDB URL, else a JournalStorage file in the sweep's Ray folder
    (`optuna-dashboard <that file>` opens it)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if spec.search.storage:
        return RDBStorage(spec.search.storage)
    paths.optuna_journal(spec.name).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(paths.optuna_journal(spec.name))))


def build_tuner(
    spec: SweepSpec, paths: SweepPaths, callbacks: list, max_concurrent: int, study_name: str, verbose: bool = True
) -> tune.Tuner:
    from optuna.samplers import RandomSampler, TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    search_alg = None
    if s.sampler != "grid":
        sampler = TPESampler(seed=s.seed) if s.sampler == "tpe" else RandomSampler(seed=s.seed)
        searcher = OptunaSearch(sampler=sampler, storage=optuna_storage(spec, paths), study_name=study_name)
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    scheduler = None
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            max_t=100_000,
        )
    return tune.Tuner(
        make_trainable(spec, paths),
        param_space=spec.tune_space(),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=s.num_samples,
            metric=s.metric,
            mode=s.mode,
            max_concurrent_trials=None if search_alg else max_concurrent,  # the limiter caps it
            reuse_actors=spec.resources.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(paths.ray),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1 if verbose else 0,
        ),
    )


def resolve_spec(spec: SweepSpec, paths: SweepPaths) -> SweepSpec:
    """Pin the cache folder to an absolute shared path (Ray workers run in other folders)."""
    cache_dir = spec.base.get("runtime", {}).get("cache_dir")
    cache_dir = str(Path(cache_dir).resolve()) if cache_dir else str(paths.cache)
    return spec.model_copy(update={"base": deep_merge(spec.base, {"runtime": {"cache_dir": cache_dir}})})


class SweepInterrupted(Exception):
    """The sweep was stopped by Ctrl-C (SIGINT) or SIGTERM; its state is saved and `resume` continues it.
    `exit_code`: 128 + the signal's number, as a shell reports a process that signal ended (130, 143)."""

    def __init__(self, sweep: str, signum: int = signal.SIGINT) -> None:
        super().__init__(sweep)
        self.exit_code = 128 + int(signum)


def signal_label(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, a batch scheduler's preemption notice) during `Tuner.fit`: the first
    stops scheduling through Tune's own graceful stop (SIGUSR1: the experiment state is saved, running trials keep
    their last checkpoint, callbacks end and flush MLflow); a second exits at once with 128 + its number."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.signum: int = signal.SIGINT
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # this handler decides; Tune keeps its SIGUSR1 stop
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        label = signal_label(signum)
        if self.count > 1:
            console.print(f"[red]second {label}[/red]: exiting now", highlight=False)
            os._exit(128 + signum)
        self.signum = signum
        console.print(
            f"[yellow]{label}[/yellow]: stopping the sweep (no new trials; running trials keep their last "
            f"checkpoint; MLflow is flushed). {label} again to quit at once.",
            highlight=False,
            soft_wrap=True,
        )
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # Tune's loop is not running yet
        os.kill(os.getpid(), signal.SIGUSR1)


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
) -> pd.DataFrame:
    """Launch (or resume) a sweep; returns one row per trial.

    `spec` is a typed `SweepSpec`, a dict (the YAML's tree) or a path to a YAML file; `overrides` are
    `--set` values. `address` (else RAY_ADDRESS, else a new local Ray) and `tracking_uri` (else
    MLFLOW_TRACKING_URI, else a SQLite store under `out_root`). A launch whose sweep name already has a
    parent run with another spec hash in the experiment is refused unless `new`. Ctrl-C or SIGTERM raises
    `SweepInterrupted` after the graceful stop (the CLI exits 130 or 143). By default the console shows one live
    progress view; `verbose` shows Ray's and Tune's own output instead (Ray's log files are linked at
    OUT/logs/<sweep>/ray either way)."""
    quiet_console(verbose)
    # Tune saves its experiment state at most every 10 s by default ('auto'). A driver killed after a trial started
    # but before that save resumes without the trial and runs a new one, leaving the first one's MLflow run orphaned;
    # with trials that start 0.1 s apart (actor reuse) that window is hit. 1 s keeps it short for a small cost.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    t_start = time.perf_counter()
    paths = SweepPaths(Path(out_root).resolve())
    loaded = as_sweep_spec(spec, overrides)
    text = spec_text(loaded if overrides else spec)
    digest = spec_hash(loaded)
    spec = resolve_spec(loaded, paths)
    check_data_source(spec.trial_config({}).data)  # a missing dataset folder fails here, not in every trial
    check_teacher_source(spec.trial_config({}))  # so does a missing ONNX teacher file / package
    address = address or os.environ.get("RAY_ADDRESS") or None
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(paths.root)
    lock = launch_lock(paths, spec.name)
    try:
        return _run_locked(spec, paths, text, digest, address, tracking_uri, resume, new, verbose, t_start)
    finally:
        lock.release()


def _run_locked(
    spec: SweepSpec,
    paths: SweepPaths,
    text: str,
    digest: str,
    address: str | None,
    tracking_uri: str,
    resume: bool,
    new: bool,
    verbose: bool,
    t_start: float,
) -> pd.DataFrame:
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
        artifact_root = paths.root / "mlartifacts" if tracking_uri.startswith("sqlite") else None
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
            parent_run_id = create_parent_run(
                client,
                experiment_id,
                spec,
                sweep_id=sweep_id,
                spec_hash=digest,
                spec_text=text,
                provenance=source_provenance(),
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
                tracking_uri, experiment_id, parent_run_id, spec, sweep_id, system_metrics=monitor is not None
            )
        )
        progress = SweepMonitor(
            spec.name,
            spec.search.num_samples * _grid_size(spec),
            max_concurrent,
            spec.search.metric,
            spec.search.mode,
            paths.events(spec.name),
            live=not verbose,
            mlflow=callback,
            console=console,
        )
        tuner = build_tuner(
            spec, paths, [callback, progress], max_concurrent, study_name=f"{spec.name}-{sweep_id}", verbose=verbose
        )
    t0 = time.perf_counter()
    try:
        with Interrupts() as interrupts:
            grid = tuner.fit()
    finally:
        if monitor is not None:
            monitor.finish()
    clock["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # finish_s: the results table and MLflow's parent run, after fit
    table = results_table(grid, spec)
    if interrupts.count:
        killed = mark_interrupted(client, experiment_id, sweep_id, parent_run_id, signal_label(interrupts.signum))
        done = int((table["status"] == FINISHED).sum()) if len(table) else 0
        console.print(
            f"[yellow]interrupted[/yellow]: {done} trial(s) finished, {len(killed)} unfinished (KILLED in "
            f"MLflow, parent too). Continue with: raptor-study resume <spec> --out {paths.root}",
            highlight=False,
            soft_wrap=True,
        )
        raise SweepInterrupted(spec.name, interrupts.signum)
    orphans = mark_orphans(client, experiment_id, sweep_id, keep=set())
    counts = table["status"].value_counts().to_dict() if len(table) else {}
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
    if not spec.search.storage and spec.search.sampler != "grid":
        console.print(f"Optuna study: optuna-dashboard {paths.optuna_journal(spec.name)}", soft_wrap=True)
    return table


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


def _grid_size(spec: SweepSpec) -> int:
    """Trials per sample: the product of the choice lists for a grid search, else 1."""
    size = 1
    if spec.search.sampler == "grid":
        for dist in spec.space.values():
            size *= len(dist.choice or [None])
    return size
