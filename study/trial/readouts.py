"""The standard read-outs of a trial's evaluation (study/trial/evaluation.py; registered in study/registry.py
READOUTS): fidelity, partition structure, class shares, dynamics and adjacent layer swaps. The probes live in
study/trial/probes.py. Each is thin glue over study/science; metric names come from study/contract.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.config import TrialConfig
from study.contract import (
    CLASS_SHARE_SUBSETS,
    CUT_VALUE,
    DYNAMICS_KEY,
    LAYER_RESULT_KEYS,
    PHASE_KINDS,
    R2_KINDS,
    VAL_R2,
    class_share_metric,
    partition_metric,
    phase_metric,
    r2_metric,
)
from study.science.sampling import class_share_range
from study.science.similarity import phase_metrics
from study.trial import figures
from study.trial.data import SPLIT_NAMES
from study.trial.dynamics import adjacent_swaps, trial_dynamics
from study.trial.evaluation import EvalContext, Readout, ReadoutResult
from study.trial.measures import accuracy_inputs, shared_head
from study.trial.prepare import subset_labels

R2_RESULT_KEYS = dict(zip(R2_KINDS, LAYER_RESULT_KEYS, strict=True))
"""R^2 kind (strict, pooled: study/contract.py R2_KINDS) -> its per-layer result.json entry (LAYER_RESULT_KEYS)."""
SWAP_KEY = "swap"
"""Entry of result.json's ``dynamics`` record holding the adjacent layer swaps."""


class Fidelity(Readout):
    """Strict and pooled R^2 per layer of the Raptor's rollout on the test split (docs/science.md §5), final and
    mean per token group, and ``val_r2`` (the search objective) on the validation split; r2_per_layer.parquet and
    r2_per_layer.png in the trial folder."""

    name = "fidelity"

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        test = ctx.fidelity("test")
        metrics, record = {}, {}
        for kind, values in zip(R2_KINDS, (test.r2, test.r2_pooled), strict=True):
            for group in values:
                metrics[r2_metric(kind, "final", group)] = float(values[group][-1])
                metrics[r2_metric(kind, "mean", group)] = float(np.mean(values[group]))
            record[R2_RESULT_KEYS[kind]] = {group: [float(v) for v in layer] for group, layer in values.items()}
        metrics[VAL_R2] = float(ctx.fidelity("val").r2["all"][-1])
        return ReadoutResult(metrics, record)

    def write(self, result: dict[str, Any], out_dir: Path) -> None:
        strict, pooled = result[R2_RESULT_KEYS["r2"]], result.get(R2_RESULT_KEYS["r2_pooled"]) or {}
        rows = [
            {"layer": layer, "group": group, "r2": value, "r2_pooled": pooled.get(group, [np.nan] * layer)[layer - 1]}
            for group, values in strict.items()
            for layer, value in enumerate(values, start=1)
        ]
        pd.DataFrame(rows).to_parquet(out_dir / "r2_per_layer.parquet", index=False)
        figures.save(figures.r2_curves(strict), out_dir / "r2_per_layer.png")


class PartitionStructure(Readout):
    """How the teacher's similarity follows the partition: phase metrics per logged kind (study/contract.py
    PHASE_KINDS), the cut value, and the DP-vs-bisection comparison (docs/science.md §2)."""

    name = "partition"

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        prepared = ctx.prepared
        metrics: dict[str, float] = {}
        for kind in PHASE_KINDS:  # kinds whose phase metrics are logged (mse drives partitions only)
            for name, value in phase_metrics(prepared.similarity[kind], prepared.partition.phase_bounds).items():
                metrics[phase_metric(kind, name)] = value
        metrics[CUT_VALUE] = prepared.partition.cut_value
        for name in ("cut_dp", "cut_bisection", "dp_differs"):
            metrics[partition_metric(name)] = float(prepared.partition_info[name])
        return ReadoutResult(metrics)


class ClassShares(Readout):
    """Min / max class share of every split and subset (a class absent from a subset has share 0)."""

    name = "class_shares"

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        labels = subset_labels(ctx.prepared)
        classes = np.unique(np.concatenate([labels[split] for split in SPLIT_NAMES]))
        metrics = {}
        for subset in CLASS_SHARE_SUBSETS:
            if subset in labels:
                low, high = class_share_range(labels[subset], classes)
                metrics[class_share_metric(subset, "min")], metrics[class_share_metric(subset, "max")] = low, high
        return ReadoutResult(metrics)


class Dynamics(Readout):
    """Trajectory read-outs of teacher and Raptor on the dynamics subset of the test split (docs/science.md §6):
    metrics ``dyn.teacher.*`` / ``dyn.raptor.*``, curves in result.json ``dynamics``, dynamics.png. Runs when
    ``dynamics.enabled``."""

    name = "dynamics"

    def enabled(self, cfg: TrialConfig) -> bool:
        return cfg.dynamics.enabled

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        states, _ = ctx.dynamics_subset()
        teacher, cfg = ctx.prepared.teacher, ctx.cfg
        metrics, curves = trial_dynamics(
            teacher.model, ctx.raptor, states, teacher.num_registers, cfg.dynamics, seed=cfg.seed, device=ctx.device
        )
        return ReadoutResult(metrics, {DYNAMICS_KEY: curves})

    def write(self, result: dict[str, Any], out_dir: Path) -> None:
        figures.save(figures.dynamics_figure(result[DYNAMICS_KEY]), out_dir / "dynamics.png", dpi=110)


class AdjacentSwaps(Readout):
    """The teacher's accuracy with adjacent layers swapped, inside a phase vs across a boundary (docs/science.md §6),
    through the teacher's head (headless: its probe) on the accuracy subset, as the layer replacement
    (study/trial/measures.py): metrics ``dyn.swap.*``, result.json ``dynamics.swap``, layer_swaps.png. Runs when
    ``dynamics.enabled`` and ``dynamics.swaps``."""

    name = "swaps"

    def enabled(self, cfg: TrialConfig) -> bool:
        return cfg.dynamics.enabled and cfg.dynamics.swaps

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        x0, labels = accuracy_inputs(ctx)
        metrics, swaps = adjacent_swaps(
            ctx.prepared.teacher.model,
            x0,
            labels,
            shared_head(ctx),
            ctx.prepared.partition.phase_bounds,
            device=ctx.device,
        )
        return ReadoutResult(metrics, {DYNAMICS_KEY: {SWAP_KEY: swaps}} if swaps else {})

    def write(self, result: dict[str, Any], out_dir: Path) -> None:
        if SWAP_KEY in result.get(DYNAMICS_KEY, {}):
            figures.save(figures.layer_swaps_figure(result[DYNAMICS_KEY][SWAP_KEY]), out_dir / "layer_swaps.png")
