"""What the synthetic sweeps plant, in memory (no MLflow): trials' metrics and result.json content shaped as the
study's trials write them, for tests and report demos without training anything (`study.sweep.synthetic` writes
them to MLflow).

Every teacher gets a banded layer-layer similarity matrix whose band widens with the SD rate, and every trial's
fidelity is planted as a linear function of its mean within-phase cosine similarity (slope `PLANTED_SLOPE`).
`simulate_clustered` plants a teacher-level slope with teacher random effects; `simulate_paper_measurements` plants
the paper's own measurements (docs/science.md §7): max-cut vs random partitions, training stages, the ablation arms,
accuracies through the teacher's head and layer replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.contract import (
    ABLATION_ROWS,
    ACC_AGREEMENT,
    ACC_FINETUNED,
    ACC_FINETUNED_RATIO,
    ACC_HEAD,
    ACC_HEAD_RATIO,
    ACC_HEAD_TEACHER,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_TEACHER,
    FINISHED,
    K_PARAM,
    PARTITION_METHOD_PARAM,
    PARTITION_SEED_PARAM,
    PHASE_KINDS,
    PHASE_METRICS,
    PRIMARY_PREDICTOR,
    R2_FINAL,
    R2_MEAN,
    R2_POOLED_FINAL,
    R2_POOLED_MEAN,
    REPLACE_BASELINE,
    REPLACE_IMAGES,
    REPLACE_NS,
    SD_PARAM,
    SWAP_BASELINE,
    TEACHER_KEY_PARAM,
    TEACHER_SEED_PARAM,
    TEACHER_SNAPSHOT_PARAM,
    TEACHER_TEST_ACC,
    VAL_R2,
    dynamics_metric,
    epoch_metric,
    group_metric,
    layer_metric,
    phase_metric,
    replace_metric,
    swap_metric,
)

PLANTED_SLOPE = 0.9
"""d r2.final / d phase.cosine.within_sim in every synthetic trial."""
PLANTED_INTERCEPT = 0.08
EPOCHS = 4


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


def similarity_matrices(depth: int, sd: float, teacher_seed: int) -> dict[str, np.ndarray]:
    """Cosine and CKA matrices: similarity decays with layer distance, more slowly at higher SD."""
    layers = np.arange(depth)
    length = 1.5 + 5.0 * sd + 0.3 * teacher_seed
    cosine = np.exp(-np.abs(layers[:, None] - layers[None, :]) / length)
    return {"cosine": cosine, "cka": cosine**0.6}


def finished_trial(
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
        **head_metrics(0.9, ratio),
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


def planted_dynamics(
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
    metrics = {SWAP_BASELINE: accuracy, **replacement_metrics(accuracy, smoothness, rng)}
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


REPLACE_IMAGES_PLANTED = 2000


def head_metrics(teacher_acc: float, ratio: float) -> dict[str, float]:
    """Accuracies through the teacher's head (docs/science.md §5): the Raptor at ``ratio`` of the teacher, the
    fine-tuned probe a little above it."""
    head = teacher_acc * ratio
    finetuned = min(teacher_acc, head + 0.01)
    return {ACC_HEAD_TEACHER: teacher_acc, ACC_HEAD: head, ACC_HEAD_RATIO: ratio, ACC_FINETUNED: finetuned,
            ACC_FINETUNED_RATIO: finetuned / teacher_acc}  # fmt: skip


def replacement_metrics(accuracy: float, smoothness: float, rng: np.random.Generator) -> dict[str, float]:
    """Layer replacement (``dyn.replace.*``): replacing n layers inside a phase costs little, across phases much
    more, both growing with n and shrinking in smoother teachers."""
    metrics = {REPLACE_BASELINE: accuracy, REPLACE_IMAGES: float(REPLACE_IMAGES_PLANTED)}
    for n in REPLACE_NS:
        metrics[replace_metric("intra", n)] = accuracy - 0.01 * n * (1.0 - smoothness) + rng.normal(0.0, 0.002)
        metrics[replace_metric("inter", n)] = accuracy - 0.15 * n * (1.0 - 0.5 * smoothness) + rng.normal(0.0, 0.01)
    return metrics


ARMS = {"tf_only": 0.05, "ar_anneal": 0.86, "depth_scaling": 0.89, "cls_weighting": 0.91, "stage2": 0.97}
"""The planted acc.head_ratio of each of the paper's ablation rows (`ABLATION_ROWS`), in the paper's order."""
SNAPSHOTS = (("0", 0.10, 0.99, 0.97), ("best", 0.88, 0.93, 0.90), ("40", 0.86, 0.90, 0.85))
"""Training stages: (teacher.snapshot, teacher accuracy, within-phase similarity, r2_pooled.final) as planted:
the untrained teacher is easiest to fit, the overfitted one loses similarity and fidelity."""


def simulate_paper_measurements(n_teachers: int, rng: np.random.Generator, *, ks: Sequence[int] = (2, 3),
                                n_random: int = 4, dp_gain: float = 0.02) -> pd.DataFrame:  # fmt: skip
    """Finished trials of the paper's own measurements, one row per trial (the `analysis.load.load_trials` columns
    the report reads), over ``n_teachers`` teachers at SD 0 and 0.6:

    - per teacher and k, one DP partition and ``n_random`` random contiguous ones (``partition.seed``), the DP one
      ``dp_gain`` better in r2_pooled.final / mean;
    - per teacher, trials at the `SNAPSHOTS` training stages and one per ablation row (`ARMS`, k = 3);
    - every trial with the head accuracies, layer replacement and the per-SD Raptor R^2 (0.88 at SD 0, 0.94 at 0.6).
    """
    rows = []
    for g in range(n_teachers):
        sd = (0.0, 0.6)[g % 2]
        base = {SD_PARAM: sd, TEACHER_SEED_PARAM: g, TEACHER_KEY_PARAM: f"teacher-{g:03d}", "status": FINISHED,
                "sweep": "paper", TEACHER_TEST_ACC: 0.88}  # fmt: skip
        level = 0.88 + 0.1 * sd + rng.normal(0.0, 0.005)
        dyn = replacement_metrics(0.88, sd, rng)

        for k in ks:
            rows.append(
                _trial(base, dyn, sd, {K_PARAM: k, PARTITION_METHOD_PARAM: "dp"}, level + rng.normal(0.0, 0.002))
            )
            for seed in range(n_random):
                fidelity = level - dp_gain + rng.normal(0.0, 0.004)
                rows.append(
                    _trial(
                        base,
                        dyn,
                        sd,
                        {K_PARAM: k, PARTITION_METHOD_PARAM: "random", PARTITION_SEED_PARAM: seed},
                        fidelity,
                    )
                )
        for stage, accuracy, within, fidelity in SNAPSHOTS:
            row = _trial(base, dyn, sd, {K_PARAM: 3, PARTITION_METHOD_PARAM: "dp", TEACHER_SNAPSHOT_PARAM: stage},
                        fidelity + rng.normal(0.0, 0.003))  # fmt: skip
            rows.append(row | {TEACHER_TEST_ACC: accuracy, PRIMARY_PREDICTOR: within + rng.normal(0.0, 0.003)})
        for row, ratio in ARMS.items():
            params = {K_PARAM: 3, PARTITION_METHOD_PARAM: "dp", **ABLATION_ROWS[row]}
            rows.append(_trial(base, dyn, sd, params, level, ratio + rng.normal(0.0, 0.005)))
    frame = pd.DataFrame(rows)
    return frame.assign(run_id=[f"run-{i:04d}" for i in range(len(frame))])


def _trial(base: dict, dyn: dict, sd: float, extra: dict[str, Any], fidelity: float, ratio: float = 0.95) -> dict:
    """One row of `simulate_paper_measurements`: the teacher's columns, its replacement metrics, head accuracies at
    ``ratio``, the four R^2 summaries around ``fidelity`` and ``extra`` (the trial's own params)."""
    return {
        **base,
        **dyn,
        **head_metrics(0.88, ratio),
        R2_POOLED_FINAL: fidelity,
        R2_POOLED_MEAN: fidelity + 0.03,
        R2_FINAL: fidelity - 0.1,
        R2_MEAN: fidelity - 0.07,
        PRIMARY_PREDICTOR: 0.95 + 0.04 * sd,
        **extra,
    }
