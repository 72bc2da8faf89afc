"""The Ray Tune wiring of a sweep: the trial trainable (the one trial pipeline with its distillation on Ray Train
workers), joining or starting Ray, the resources a trial holds and how many fit at once, the Optuna searcher and
ASHA scheduler, and the `Tuner` itself."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import ray
from ray import tune

from study.config import ConfigError
from study.configio import deep_merge
from study.sweep.optuna_link import LinkedOptunaSearch, open_storage
from study.sweep.paths import SweepPaths
from study.sweep.space import SweepSpec
from study.sweep.tracking import is_oom_text, trial_name

log = logging.getLogger(__name__)


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

    def runner(run_id: str) -> RayTrainWorkers:
        return RayTrainWorkers(
            run_id,
            paths.train(spec.name),
            workers=res.workers,
            worker_cpu=res.worker_cpu,
            worker_gpu=res.worker_gpu,
            report_to_tune=True,
            local=res.local_train,
        )

    try:
        result = run_trial(cfg, out_dir, runner=runner(trial_id), keep_model=spec.record.log_model)
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
        result = run_trial(cfg, out_dir, runner=runner(f"{trial_id}-oom"), keep_model=spec.record.log_model)
    tune.report({**result["metrics"], "out_dir": str(out_dir)})


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
    """The Optuna study's storage: the spec's RDB URL, else a JournalStorage file in the sweep's Ray folder."""
    return open_storage(spec.search.storage, paths.optuna_journal(spec.name))


def build_tuner(
    spec: SweepSpec, paths: SweepPaths, callbacks: list, max_concurrent: int, study_name: str, verbose: bool = True
) -> tune.Tuner:
    from optuna.samplers import RandomSampler, TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    s = spec.search
    search_alg = None
    if s.sampler != "grid":
        sampler = TPESampler(seed=s.seed) if s.sampler == "tpe" else RandomSampler(seed=s.seed)
        searcher = LinkedOptunaSearch(sampler=sampler, storage=optuna_storage(spec, paths), study_name=study_name)
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
