"""A synthetic sweep written to MLflow exactly as the study's trials write theirs, through the sweep's one trial
writer (`study.sweep.record.log_trial`).

For tests and report demos without training anything: what is planted comes from `study.sweep.simulate` (fidelity
linear in within-phase similarity with slope `PLANTED_SLOPE`, noise that shrinks with SD). It
also writes failed and pruned trials and one finished trial without
``acc.ratio``, so exclusion and missing-value handling show up in the analysis.
Finished trials carry dynamics (``dyn.*`` metrics and result.json ``dynamics``,
shaped as `study.dynamics_report` writes them), except the first
``n_without_dynamics``: older runs, or ``dynamics.enabled: false``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from study.config import build_trial_config
from study.contract import (
    ACC_RATIO,
    DATA_KEY,
    DYNAMICS_KEY,
    EMERGENCE_KEY,
    FAILED,
    FINISHED,
    K_PARAM,
    LAYER_METRIC_PREFIX,
    MLFLOW_END_STATUS,
    PHASE_METRICS,
    PRUNED,
    R2_FINAL,
    R2_POOLED_FINAL,
    ROLE_SWEEP,
    ROLE_TAG,
    SD_PARAM,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TEACHER_KEY_PARAM,
    TEACHER_TEST_ACC,
    VAL_R2,
    epoch_metric,
    trial_run_name,
)
from study.sweep.record import TrialRecord, log_trial
from study.sweep.simulate import (
    EPOCHS,
    finished_trial,
    planted_dynamics,
    planted_emergence,
    similarity_matrices,
    simulate_clustered,
)
from study.sweep.space import SweepSpec

SYNTHETIC_SWEEP_ID = "synthetic"


@dataclass(frozen=True)
class SyntheticSweep:
    """Where the sweep went and what was planted: one ``truth`` row per trial run (all statuses)."""

    experiment: str
    parent_run_id: str
    truth: pd.DataFrame


def write_synthetic_sweep(
    tracking_uri: str | None,
    experiment: str,
    *,
    sd_rates: Sequence[float] = (0.0, 0.2, 0.4, 0.6),
    ks: Sequence[int] = (2, 3, 4),
    teacher_seeds: Sequence[int] = (0, 1),
    lambda_cls: Sequence[float] = (0.3, 0.45),
    depth: int = 8,
    n_failed: int = 2,
    n_pruned: int = 2,
    noise: float = 0.03,
    artifact_location: str | None = None,
    n_without_dynamics: int = 4,
    seed: int = 0,
) -> SyntheticSweep:
    """Create ``experiment`` with a sweep parent run and one child run per trial.

    Finished trials cover every (SD rate, teacher seed, k, stage-2 lambda_cls);
    then ``n_failed`` failed trials (MLflow FAILED) and ``n_pruned`` pruned ones
    (alternately MLflow KILLED and FINISHED, both tagged pruned) with partial
    training curves only. The first finished trial has no ``acc.ratio``. The first
    ``n_without_dynamics`` finished trials have no dynamics, the others `planted_dynamics`.
    """
    rng = np.random.default_rng(seed)
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent_tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: experiment, SWEEP_ID_TAG: SYNTHETIC_SWEEP_ID}
    parent = client.create_run(experiment_id, tags=parent_tags, run_name=experiment)
    parent_id = parent.info.run_id
    matrices = {(sd, ts): similarity_matrices(depth, sd, ts) for sd, ts in product(sd_rates, teacher_seeds)}
    grid = list(product(sd_rates, teacher_seeds, ks, lambda_cls))
    truth = []
    for index, (sd, ts, k, lam) in enumerate(grid):
        config = _config(f"trial-{index:03d}", sd, ts, k, lam, depth)
        metrics, result = finished_trial(matrices[sd, ts], sd, k, lam, config, noise, rng)
        if index == 0:
            del metrics[ACC_RATIO]
        if index >= n_without_dynamics:
            bounds = result["partition"]["phase_bounds"]
            dynamics_rng = np.random.default_rng([seed, index])  # leaves the planted fidelity's stream as it was
            dyn_metrics, result[DYNAMICS_KEY] = planted_dynamics(depth, sd + 0.05 * ts, bounds, metrics[R2_FINAL],
                                                          metrics[TEACHER_TEST_ACC], dynamics_rng)  # fmt: skip
            metrics |= dyn_metrics
            result[EMERGENCE_KEY] = planted_emergence(sd)
        run_id = _log_trial(client, experiment_id, parent_id, experiment, index, config, FINISHED, metrics, result)
        truth.append({"run_id": run_id, "status": FINISHED, **_flat(config), **metrics})
    for index in range(n_failed + n_pruned):
        sd, ts, k, lam = grid[index % len(grid)]
        config = _config(f"trial-{len(grid) + index:03d}", sd, ts, k, lam, depth)
        failed = index < n_failed
        status, mlflow_status = (FAILED, "FAILED") if failed else (PRUNED, "KILLED" if index % 2 else "FINISHED")
        curves = {} if failed else {epoch_metric(2, VAL_R2): list(np.linspace(0.1, 0.3, EPOCHS // 2))}
        run_id = _log_trial(
            client, experiment_id, parent_id, experiment, len(grid) + index, config, status, curves, None
        )
        if mlflow_status != MLFLOW_END_STATUS[status]:  # a pruned trial whose run ended FINISHED (older stores)
            client.update_run(run_id, status=mlflow_status)
        truth.append({"run_id": run_id, "status": status, **_flat(config)})
    client.set_terminated(parent_id, "FINISHED")
    return SyntheticSweep(experiment, parent_id, pd.DataFrame(truth))


def _config(name: str, sd: float, teacher_seed: int, k: int, lam: float, depth: int) -> dict[str, Any]:
    """A nested trial config with the study's sections and value types (None, bools, text, numbers)."""
    teacher = {
        "source": "scratch",
        "timm_name": None,
        "depth": depth,
        "width": 64,
        "heads": 4,
        "sd_rate": sd,
        "seed": teacher_seed,
    }
    data = {"name": "digits", "path": None, "split_seed": 0}
    return {
        "name": name,
        "seed": 0,
        "data": data,
        "teacher": teacher,
        "raptor": {"k": k, "init": "teacher", "layerscale_init": 1e-5},
        "distill": {
            "anneal": 0.25,
            "stage1": {"enabled": True, "lambda_cls": 0.34, "lambda_patch": 0.33, "lr": 3e-4},
            "stage2": {"enabled": True, "lambda_cls": lam, "lambda_patch": round(0.9 - lam, 6), "lr": 3e-4},
        },
        "runtime": {"device": "cpu", "num_threads": None},
    }


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as the study logs them, plus ``teacher.key``: a hash of what determines the teacher."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    return {**flat, TEACHER_KEY_PARAM: build_trial_config(config).teacher_key()}


def _log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    sweep: str,
    index: int,
    config: dict[str, Any],
    status: str,
    metrics: dict[str, Any],
    result: dict[str, Any] | None,
) -> str:
    """One child run through the study's own trial writer (`study.sweep.record.log_trial`).

    List-valued ``metrics`` are split the way a real trial carries them: per-layer R^2 into
    ``result["r2_per_layer"]``, training curves into history records (step = epoch)."""
    params = build_trial_config(config).flat()
    scalars = {key: value for key, value in metrics.items() if not isinstance(value, list)}
    curves = {key: value for key, value in metrics.items() if isinstance(value, list)}
    history: dict[tuple[int, int], dict[str, Any]] = {}
    per_layer: dict[str, list[float]] = {}
    for key, values in curves.items():
        if key.startswith(LAYER_METRIC_PREFIX):
            group = key.removeprefix(LAYER_METRIC_PREFIX).lstrip(".") or "all"
            per_layer[group] = [float(v) for v in values]
            continue
        stage, field = key.split(".", 1)
        for epoch, value in enumerate(values):
            record = history.setdefault((int(stage.removeprefix("stage")), epoch), {})
            record[field] = float(value)
    records = [{"stage": stage, "epoch": epoch, **values} for (stage, epoch), values in sorted(history.items())]
    teacher_key = build_trial_config(config).teacher_key()
    if result is not None:
        result = {
            **result,
            "metrics": scalars,
            "r2_per_layer": per_layer,
            "history": records,
            "teacher": {
                "key": teacher_key,
                "depth": config["teacher"]["depth"],
                **({EMERGENCE_KEY: result.pop(EMERGENCE_KEY)} if EMERGENCE_KEY in result else {}),
            },
            DATA_KEY: {
                "name": config["data"]["name"],
                "splits": {"train": 1000, "val": 125, "test": 250},
                "digest": teacher_key[:8],
                "source": config["data"],
            },
        }
    trial_id = f"synthetic_{index:05d}"
    return log_trial(
        client,
        experiment_id,
        TrialRecord(
            sweep=sweep,
            sweep_id=SYNTHETIC_SWEEP_ID,
            trial_id=trial_id,
            parent_run_id=parent_id,
            run_name=trial_run_name(params, trial_id),
            teacher_key=teacher_key,
            params=params,
            history=records,
            result=result,
            status=status,
        ),
    )


def write_clustered_sweep(
    tracking_uri: str | None,
    experiment: str,
    *,
    n_teachers: int = 6,
    trials_per_teacher: int = 8,
    teacher_slope: float = 0.0,
    between_sd: float = 0.02,
    within_sd: float = 0.001,
    depth: int = 8,
    artifact_location: str | None = None,
    spec: SweepSpec | None = None,
    seed: int = 0,
) -> SyntheticSweep:
    """`simulate_clustered` written to MLflow as the study's trials write theirs: a sweep parent run, one child
    run per trial with the full config as params (``teacher.key`` a hash of the teacher's config), final metrics
    and result.json, through the study's trial writer. With ``spec`` the parent run comes from the sweep driver's
    own `create_parent_run` (tags and sweep_spec.json as a real launch writes them). ``truth`` holds the simulated
    rows (with each
    teacher's planted ``teacher.effect``)."""
    rng = np.random.default_rng(seed)
    frame = simulate_clustered(n_teachers, trials_per_teacher, teacher_slope=teacher_slope, between_sd=between_sd,
                               within_sd=within_sd, rng=rng, depth=depth)  # fmt: skip
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    if spec is not None:
        from study.sweep.runs import create_parent_run

        parent_id = create_parent_run(
            client,
            experiment_id,
            spec,
            sweep_id=SYNTHETIC_SWEEP_ID,
            spec_hash="synthetic",
            spec_text=json.dumps(spec.model_dump(mode="json")),
            provenance={},
        )
    else:
        tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: experiment, SWEEP_ID_TAG: SYNTHETIC_SWEEP_ID}
        parent_id = client.create_run(experiment_id, tags=tags, run_name=experiment).info.run_id
    truth = []
    metric_names = [*PHASE_METRICS, R2_POOLED_FINAL, R2_FINAL]
    for index, row in enumerate(frame.itertuples(index=False, name=None)):
        values = dict(zip(frame.columns, row, strict=True))
        config = _config(f"trial-{index:03d}", values[SD_PARAM], int(values["teacher.seed"]),
                         int(values[K_PARAM]), round(values["distill.stage2.lambda_cls"], 6), depth)  # fmt: skip
        metrics = {name: float(values[name]) for name in metric_names}
        bounds = [[int(c[0]) + 1, int(c[-1]) + 1] for c in np.array_split(np.arange(depth), int(values[K_PARAM]))]
        result = {"partition": {"phase_bounds": bounds}, "config": config}
        run_id = _log_trial(client, experiment_id, parent_id, experiment, index, config, FINISHED, metrics, result)
        truth.append({"run_id": run_id, **_flat(config), **metrics, "teacher.effect": values["teacher.effect"]})
    client.set_terminated(parent_id, "FINISHED")
    return SyntheticSweep(experiment, parent_id, pd.DataFrame(truth))
