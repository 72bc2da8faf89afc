"""A synthetic sweep written to MLflow exactly as the study's trials write theirs.

For tests and report demos without training anything: every teacher gets a
banded layer-layer similarity matrix whose band widens with the SD rate, and
every trial's fidelity is planted as a linear function of its mean within-phase
cosine similarity (slope `PLANTED_SLOPE`), with noise that shrinks with SD. It
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
    ACC_AGREEMENT,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_TEACHER,
    DATA_KEY,
    DYNAMICS_KEY,
    EMERGENCE_KEY,
    FAILED,
    FINISHED,
    K_PARAM,
    LAYER_METRIC_PREFIX,
    MLFLOW_END_STATUS,
    PHASE_KINDS,
    PHASE_METRICS,
    PRIMARY_PREDICTOR,
    PRUNED,
    R2_FINAL,
    R2_MEAN,
    R2_POOLED_FINAL,
    ROLE_SWEEP,
    ROLE_TAG,
    SD_PARAM,
    SWAP_BASELINE,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TEACHER_KEY_PARAM,
    TEACHER_TEST_ACC,
    VAL_R2,
    dynamics_metric,
    epoch_metric,
    group_metric,
    layer_metric,
    phase_metric,
    swap_metric,
    trial_run_name,
)
from study.sweep.record import log_trial
from study.sweep.space import SweepSpec

SYNTHETIC_SWEEP_ID = "synthetic"

PLANTED_SLOPE = 0.9
"""d r2.final / d phase.cosine.within_sim in every synthetic trial."""
PLANTED_INTERCEPT = 0.08
EPOCHS = 4


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
    ``n_without_dynamics`` finished trials have no dynamics, the others `_dynamics`.
    """
    rng = np.random.default_rng(seed)
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent_tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: experiment, SWEEP_ID_TAG: SYNTHETIC_SWEEP_ID}
    parent = client.create_run(experiment_id, tags=parent_tags, run_name=experiment)
    parent_id = parent.info.run_id
    matrices = {(sd, ts): _similarity(depth, sd, ts) for sd, ts in product(sd_rates, teacher_seeds)}
    grid = list(product(sd_rates, teacher_seeds, ks, lambda_cls))
    truth = []
    for index, (sd, ts, k, lam) in enumerate(grid):
        config = _config(f"trial-{index:03d}", sd, ts, k, lam, depth)
        metrics, result = _finished_trial(matrices[sd, ts], sd, k, lam, config, noise, rng)
        if index == 0:
            del metrics[ACC_RATIO]
        if index >= n_without_dynamics:
            bounds = result["partition"]["phase_bounds"]
            dynamics_rng = np.random.default_rng([seed, index])  # leaves the planted fidelity's stream as it was
            dyn_metrics, result[DYNAMICS_KEY] = _dynamics(depth, sd + 0.05 * ts, bounds, metrics[R2_FINAL],
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


EMERGENCE_EPOCHS = 8


def planted_onset(sd: float) -> int:
    """The epoch at which a synthetic teacher's phase contrast jumps to its final value: later at higher SD."""
    return 2 if sd < 0.3 else 4


def planted_emergence(sd: float) -> list[dict[str, float]]:
    """Phase snapshots at epochs 0..EMERGENCE_EPOCHS (as `study.science.emergence.phase_snapshot` keys): accuracy
    rises linearly; the k = 3 contrast is 0 until `planted_onset(sd)`, then 0.2; similarity falls as it appears."""
    records = []
    for epoch in range(EMERGENCE_EPOCHS + 1):
        structured = epoch >= planted_onset(sd)
        records.append(
            {
                "epoch": epoch,
                "val_acc": 0.1 + 0.8 * epoch / EMERGENCE_EPOCHS,
                "mean_sim": 0.99 - (0.2 if structured else 0.0),
                "k3.within_sim": 0.99 - (0.05 if structured else 0.0),
                "k3.contrast": 0.2 if structured else 0.0,
            }
        )
    return records


def phase_metrics(similarity: np.ndarray, bounds: Sequence[Sequence[int]]) -> dict[str, float]:
    """The six phase-structure metrics of one similarity matrix under a partition (1-based inclusive bounds)."""
    depth = len(similarity)
    phase = np.empty(depth, dtype=int)
    for index, (first, last) in enumerate(bounds):
        phase[first - 1 : last] = index
    upper = np.triu(np.ones((depth, depth), dtype=bool), k=1)
    same = phase[:, None] == phase[None, :]
    dissimilarity = 1.0 - similarity
    within = similarity[upper & same].mean()
    between = similarity[upper & ~same].mean()
    return {
        "within_sim": float(within),
        "between_sim": float(between),
        "contrast": float(within - between),
        "cut_norm": float(dissimilarity[upper & ~same].sum() / dissimilarity[upper].sum()),
        "adjacent_sim": float(np.diag(similarity, 1).mean()),
        "mean_sim": float(similarity[upper].mean()),
    }


def _similarity(depth: int, sd: float, teacher_seed: int) -> dict[str, np.ndarray]:
    """Cosine and CKA matrices: similarity decays with layer distance, more slowly at higher SD."""
    layers = np.arange(depth)
    length = 1.5 + 5.0 * sd + 0.3 * teacher_seed
    cosine = np.exp(-np.abs(layers[:, None] - layers[None, :]) / length)
    return {"cosine": cosine, "cka": cosine**0.6}


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


def _finished_trial(
    matrices: dict[str, np.ndarray],
    sd: float,
    k: int,
    lam: float,
    config: dict[str, Any],
    noise: float,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Final metrics (with per-layer and per-epoch lists) and the result.json of one finished trial."""
    depth = len(matrices["cosine"])
    bounds = [[int(c[0]) + 1, int(c[-1]) + 1] for c in np.array_split(np.arange(depth), k)]
    metrics: dict[str, Any] = {TEACHER_TEST_ACC: 0.9 - 0.05 * sd}
    for kind in PHASE_KINDS:
        for name, value in phase_metrics(matrices[kind], bounds).items():
            metrics[phase_metric(kind, name)] = value
    within = metrics[PHASE_METRICS[0]]
    r2_final = (
        PLANTED_INTERCEPT + PLANTED_SLOPE * within + 0.05 * (lam - 0.4) + rng.normal(0.0, noise * (1.0 - 0.6 * sd))
    )
    layer_fraction = np.arange(1, depth + 1) / depth
    r2_layer = 1.0 - (1.0 - r2_final) * layer_fraction**1.5
    ratio = 1.0 - 0.2 * (1.0 - r2_final) + rng.normal(0.0, 0.006)
    metrics |= {
        R2_FINAL: r2_final,
        R2_MEAN: float(r2_layer.mean()),
        group_metric(R2_FINAL, "cls"): r2_final - 0.02,
        group_metric(R2_FINAL, "patch"): r2_final + 0.01,
        group_metric(R2_MEAN, "cls"): float(r2_layer.mean()) - 0.02,
        group_metric(R2_MEAN, "patch"): float(r2_layer.mean()) + 0.01,
        ACC_TEACHER: 0.9,
        ACC_RAPTOR: 0.9 * ratio,
        ACC_RATIO: ratio,
        ACC_AGREEMENT: min(1.0, ratio + 0.02),
        layer_metric("all"): list(r2_layer),
        layer_metric("cls"): list(r2_layer - 0.02 * layer_fraction),
        layer_metric("patch"): list(r2_layer + 0.01 * layer_fraction),
        epoch_metric(1, "loss"): list(np.geomspace(1.0, 0.2, EPOCHS)),
        epoch_metric(2, "loss"): list(np.geomspace(0.3, 0.1, EPOCHS)),
        epoch_metric(2, VAL_R2): list(np.linspace(0.5, r2_final, EPOCHS)),
    }
    dissimilarity = 1.0 - matrices["cosine"]
    phases = phase_metrics(matrices["cosine"], bounds)
    result = {
        "similarity": {kind: matrices[kind].tolist() for kind in PHASE_KINDS},
        "partition": {
            "phase_bounds": bounds,
            "cut_value": float(phases["cut_norm"] * np.triu(dissimilarity, 1).sum()),
            "within_cost": float((1.0 - phases["cut_norm"]) * np.triu(dissimilarity, 1).sum()),
        },
        "r2_per_layer": {group: metrics[layer_metric(group)] for group in ("cls", "patch")},
        "config": config,
    }
    return metrics, result


def _dynamics(
    depth: int,
    smoothness: float,
    bounds: Sequence[Sequence[int]],
    r2_final: float,
    accuracy: float,
    rng: np.random.Generator,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``dyn.*`` metrics and result.json curves of one trial (L = ``depth``, perturbation at L // 2).

    Teacher curves depend on ``smoothness`` only (the SD rate, nudged per teacher): a smoother
    teacher converges earlier (γ) and turns more slowly; the Raptor's curves are the teacher's
    flattened by 1 - r2.final, with noise. Swaps cost more across a phase boundary than inside
    a phase, less in smoother teachers.
    """
    layer = np.arange(depth + 1) / depth  # x_0..x_L
    step = np.arange(1, depth + 1) / depth  # steps 1..L
    half = perturb = depth // 2
    teacher = {
        "gamma_cls": 1.0 - 0.9 * (1.0 - layer) ** (1.0 + 2.0 * smoothness),
        "gamma_patch": 1.0 - 0.7 * (1.0 - layer) ** (1.0 + smoothness),
        "speed_cls": (0.5 - 0.3 * smoothness) * (0.6 + 0.8 * step**2),
        "speed_patch": (0.4 - 0.2 * smoothness) * (1.2 - 0.6 * step),
        "coherence": 0.1 + 0.5 * layer**1.5,
        "stable_rank": 2.0 + 10.0 * (1.0 - step) ** 2 * (1.0 - 0.4 * smoothness),
        "recovery": np.exp(-(0.15 + 0.2 * smoothness) * np.arange(1, depth - perturb + 1)),
    }
    flatten = float(np.clip(1.0 - r2_final, 0.0, 1.0))
    raptor = {name: (1 - flatten) * v + flatten * v.mean() + rng.normal(0.0, 0.01 * flatten, len(v))
              for name, v in teacher.items()}  # fmt: skip
    raptor["gamma_cls"] = teacher["gamma_cls"] ** (1.0 + 2.0 * flatten)  # still 1 at x_L
    raptor["gamma_patch"] = teacher["gamma_patch"] ** (1.0 + 2.0 * flatten)
    phase = np.concatenate([np.full(last - first + 1, index) for index, (first, last) in enumerate(bounds)])
    swaps: dict[str, list[list[float]]] = {"intra": [], "inter": []}
    for left in range(1, depth):
        kind = "intra" if phase[left - 1] == phase[left] else "inter"
        cost = (0.01 + 0.02 * (1.0 - smoothness)) if kind == "intra" else (0.04 + 0.1 * (1.0 - smoothness))
        swaps[kind].append([left, left + 1, float(accuracy - cost * (1.0 + 0.2 * np.cos(left)))])
    metrics = {SWAP_BASELINE: accuracy}
    for kind, pairs in swaps.items():
        if pairs:
            metrics[swap_metric(kind)] = float(np.mean([acc for _, _, acc in pairs]))
    for model, curves in (("teacher", teacher), ("raptor", raptor)):
        summary = {
            "gamma_cls_mid": curves["gamma_cls"][half],
            "gamma_patch_mid": curves["gamma_patch"][half],
            "speed_cls_mean": curves["speed_cls"].mean(),
            "speed_patch_mean": curves["speed_patch"].mean(),
            "speed_cls_late_early": curves["speed_cls"][-half:].mean() / curves["speed_cls"][:half].mean(),
            "coherence_final": curves["coherence"][-1],
            "srank_first": curves["stable_rank"][0],
            "srank_last": curves["stable_rank"][-1],
            "recovery_last": curves["recovery"][-1],
        }
        metrics |= {dynamics_metric(model, name): value for name, value in summary.items()}
    result = {
        "num_samples": 256,
        "perturb_layer": perturb,
        "eps": 0.05,
        "teacher": {name: v.tolist() for name, v in teacher.items()},
        "raptor": {name: v.tolist() for name, v in raptor.items()},
        "swap": {"baseline_acc": accuracy, **swaps},
    }
    return {name: float(value) for name, value in metrics.items()}, result


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
    )


CLUSTER_INTERCEPT = 0.3
K_EFFECT = 0.01
"""Per extra phase: fidelity rises with k in the clustered simulation, as within-phase similarity does."""


def simulate_clustered(
    n_teachers: int,
    trials_per_teacher: int,
    *,
    teacher_slope: float,
    between_sd: float,
    within_sd: float,
    rng: np.random.Generator,
    sd_rates: Sequence[float] = (0.0, 0.2, 0.4, 0.6),
    ks: Sequence[int] = (2, 3, 4),
    lambda_range: tuple[float, float] = (0.2, 0.8),
    depth: int = 8,
) -> pd.DataFrame:
    """Trials of a sweep where the teacher is the unit (docs/science.md §7), in memory: one row per trial.

    Teacher g has an SD rate (cycled over ``sd_rates``), its own similarity decay length and a
    random effect u_g ~ N(0, between_sd). A trial draws k and stage-2 lambda_cls; its phase
    metrics come from the teacher's cosine matrix under an even k-phase partition, and
    ``r2_pooled.final = CLUSTER_INTERCEPT + teacher_slope * within_sim + K_EFFECT * k + 0.05 (lambda - 0.5)
    + u_g + N(0, within_sd)`` (``r2.final`` 0.02 below). So k drives both similarity and fidelity
    (a confounder), and the teacher-level slope is ``teacher_slope`` once k is adjusted for.
    """
    rows = []
    for g in range(n_teachers):
        sd = float(sd_rates[g % len(sd_rates)])
        length = 1.5 + 5.0 * sd + rng.uniform(0.0, 1.5)
        layers = np.arange(depth)
        cosine = np.exp(-np.abs(layers[:, None] - layers[None, :]) / length)
        matrices = {"cosine": cosine, "cka": cosine**0.6}
        effect = rng.normal(0.0, between_sd)
        for _ in range(trials_per_teacher):
            k = int(rng.choice(ks))
            lam = float(rng.uniform(*lambda_range))
            bounds = [[int(c[0]) + 1, int(c[-1]) + 1] for c in np.array_split(np.arange(depth), k)]
            metrics = {phase_metric(kind, name): value for kind in PHASE_KINDS
                       for name, value in phase_metrics(matrices[kind], bounds).items()}  # fmt: skip
            fidelity = (CLUSTER_INTERCEPT + teacher_slope * metrics[PRIMARY_PREDICTOR] + K_EFFECT * k
                        + 0.05 * (lam - 0.5) + effect + rng.normal(0.0, within_sd))  # fmt: skip
            rows.append({SD_PARAM: sd, "teacher.seed": g, K_PARAM: k, "distill.stage2.lambda_cls": lam,
                         TEACHER_KEY_PARAM: f"teacher-{g:03d}", "teacher.effect": effect, "status": FINISHED,
                         **metrics, R2_POOLED_FINAL: fidelity, R2_FINAL: fidelity - 0.02})  # fmt: skip
    return pd.DataFrame(rows)


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
        from study.sweep.tracking import create_parent_run  # imports Ray: only when a spec is to be logged

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
