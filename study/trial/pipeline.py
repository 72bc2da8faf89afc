"""The one trial pipeline: data -> teacher -> states -> similarity/partition -> distil -> metrics -> record.

`run_trial` runs every stage in order, whether it is called by `raptor-study
trial` or by a sweep's Tune trial. The only thing a caller chooses is *where the
distillation steps execute*: a `DistillRunner` strategy. `InProcess` (this
module) trains the Raptor in the calling process; `study.sweep.raytrain.RayTrainWorkers`
trains it on Ray Train workers (DDP). Everything before and after the
distillation is shared, so a metric added to `evaluate` appears in both paths.

Stages: `prepare` (teacher, states, similarity, partition; cached and shared
across trials), `DistillRunner.distill`, `evaluate` (fidelity on the test
split, the search objective on the validation split), `write_outputs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import yaml

import study.trial.cache as cache
from study.config import TrialConfig, check_boundaries, check_k_fits
from study.contract import (
    ACC_AGREEMENT,
    ACC_FLOOR,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TEACHER,
    ACC_TRANSFER,
    ACC_TRANSFER_RATIO,
    ACC_TRANSFER_TEACHER,
    CLASS_SHARE_SUBSETS,
    CUT_VALUE,
    DATA_KEY,
    EMERGENCE_KEY,
    PHASE_KINDS,
    R2_KINDS,
    RAPTOR_EXAMPLE_KEY,
    RAPTOR_FILE,
    RAPTOR_MODULE_KEY,
    TEACHER_TEST_ACC,
    VAL_R2,
    class_share_metric,
    partition_metric,
    phase_metric,
    r2_metric,
)
from study.registry import SIMILARITY, resolve
from study.runtime import CheckpointPolicy, seed_everything, setup
from study.science.distill import evaluate_fidelity, rollout_features, run_distillation
from study.science.fidelity import fit_linear_probe, own_probe_accuracy, probe_features, probe_recovery, task_fidelity
from study.science.partition import Partition, choose_partition
from study.science.raptor import Raptor
from study.science.sampling import class_counts, class_share_range, stratified_subset, take_rows
from study.science.similarity import phase_metrics
from study.trial import figures
from study.trial.activations import cached_states
from study.trial.data import SPLIT_NAMES, ImageSpec, dataset_labels, load_splits
from study.trial.dynamics import swap_readout, trial_dynamics
from study.trial.sources import check_data_source, check_teacher_source
from study.trial.teacher import Teacher, load_teacher

log = logging.getLogger(__name__)

MODEL_EXAMPLE_ROWS = 4
"""Test rows kept as the logged model's input example (`write_outputs` with ``keep_model``)."""


@dataclass
class Prepared:
    """A trial's shared inputs: teacher, its cached states, similarity matrices and partition."""

    cfg: TrialConfig
    device: torch.device
    teacher: Teacher
    states: dict[str, np.ndarray]  # split -> [N, L+1, T, D]
    labels: dict[str, np.ndarray]  # split -> [N]
    similarity: dict[str, np.ndarray]  # kind -> S [L, L] (1 - dissimilarity for cosine / mse)
    partition: Partition
    partition_info: dict = field(default_factory=dict)  # DP vs bisection cuts (`choose_partition`)
    subsets: dict[str, np.ndarray] = field(default_factory=dict)  # subset name -> indices into its split
    timings: dict[str, float] = field(default_factory=dict)
    dynamics: dict | None = None  # curves of the last `evaluate` (cfg.dynamics.enabled), written by `write_outputs`
    r2_pooled: dict[str, list[float]] | None = None  # pooled R^2 per layer of the last `evaluate`


def similarity_matrices(
    states: np.ndarray, num_registers: int, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """Similarity S [L, L] over layers 1..L of every kind of study/registry.py SIMILARITY. On a GPU `device` the sums
    are batched matmuls there (the states stream to it chunk by chunk)."""
    device = device if device is not None and device.type == "cuda" else None
    return {kind: resolve(SIMILARITY, kind)(states, num_registers, device=device) for kind in SIMILARITY}


def teacher_and_states(
    cfg: TrialConfig, device: torch.device, splits: tuple[str, ...] = SPLIT_NAMES
) -> tuple[Teacher, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The trial's teacher and its cached states/labels per split (trained/extracted once, then cache hits).

    The dataset itself is only loaded when something has to be computed."""
    loaded: dict[ImageSpec, object] = {}

    def splits_for(spec: ImageSpec):
        if spec not in loaded:
            loaded[spec] = load_splits(cfg.data, spec)
        return loaded[spec]

    teacher = load_teacher(cfg, device, splits_for)
    check_k_fits(cfg.raptor.k, teacher.depth)
    states, labels = {}, {}

    def raptor_subset(split: str) -> torch.utils.data.Dataset:
        """The split, or its `data.raptor_samples` stratified subset (the images whose states the Raptor sees)."""
        dataset, cap = splits_for(teacher.spec)[split], cfg.data.raptor_samples
        if cap is None or cap >= len(dataset):
            return dataset
        seed = cfg.data.split_seed * 1_000 + 100 + SPLIT_NAMES.index(split)
        chosen = stratified_subset(dataset_labels(dataset), cap, seed, num_items=len(dataset))
        return torch.utils.data.Subset(dataset, chosen.tolist())

    for split in splits:
        lazy = _LazySplit(lambda s=split: raptor_subset(s))
        states[split], labels[split] = cached_states(cfg, teacher.model, teacher.key, lazy, split, device)
    return teacher, states, labels


def prepare(cfg: TrialConfig, device: torch.device | None = None) -> Prepared:
    """Teacher, states of every split, similarity and the k-phase partition (all cached)."""
    check_data_source(cfg.data)
    check_teacher_source(cfg)
    device = device or setup(cfg.runtime)
    t0 = time.perf_counter()
    teacher, states, labels = teacher_and_states(cfg, device)
    timings = {"teacher_and_states_s": time.perf_counter() - t0}
    check_boundaries(cfg.partition.boundaries_for(cfg.raptor.k), cfg.raptor.k, teacher.depth)
    t0 = time.perf_counter()
    # subsets are seeded by the data split seed, so every trial of one teacher shares them (docs/science.md §5, §7)
    subsets = {
        "similarity": stratified_subset(labels["train"], cfg.similarity.num_samples, cfg.data.split_seed + 11),
        "dynamics": stratified_subset(labels["test"], cfg.dynamics.num_samples, cfg.data.split_seed + 12),
    }
    similarity = similarity_matrices(take_rows(states["train"], subsets["similarity"]), teacher.num_registers, device)
    partition, info = choose_partition(
        1.0 - similarity[cfg.similarity.partition_on],
        cfg.raptor.k,
        cfg.partition.method,
        cfg.partition.boundaries_for(cfg.raptor.k),
        seed=cfg.partition.seed,
    )
    timings["similarity_s"] = time.perf_counter() - t0
    return Prepared(cfg, device, teacher, states, labels, similarity, partition, info, subsets, timings)


class _LazySplit(torch.utils.data.Dataset):
    """A dataset that loads its underlying split on first access."""

    def __init__(self, load: Callable[[], torch.utils.data.Dataset]):
        self._load, self._data = load, None

    @property
    def data(self) -> torch.utils.data.Dataset:
        if self._data is None:
            self._data = self._load()
        return self._data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def build_raptor(cfg: TrialConfig, teacher: Teacher, phase_bounds) -> Raptor:
    """The trial's Raptor at init (seeded by `cfg.seed`)."""
    seed_everything(cfg.seed)
    return Raptor(
        teacher.model,
        phase_bounds,
        init=cfg.raptor.init,
        layerscale_init=cfg.raptor.layerscale_init,
        cond_hidden=cfg.raptor.cond_hidden,
    )


OnEpoch = Callable[[dict], None]


class DistillRunner(Protocol):
    """Where a trial's two distillation stages execute. Returns the trained Raptor and per-epoch records."""

    def distill(
        self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None
    ) -> tuple[Raptor, list[dict]]: ...


def distill_resumable(
    prepared: Prepared, state_path: Path, after: Callable[[dict, bool], None] | None = None
) -> tuple[Raptor, list[dict]]:
    """Distil the trial's seeded Raptor here, resuming from `state_path` when it exists.

    After every epoch the resumable state goes to `state_path` when the checkpoint policy (`runtime.checkpoint_*`)
    says so (time added to `timings['checkpoint_s']`), then `after(record, saved)` runs. Both in-process runners
    (`InProcess`, and Ray Train's local mode in `study.sweep.raytrain`) distil through this."""
    cfg = prepared.cfg
    raptor = build_raptor(cfg, prepared.teacher, prepared.partition.phase_bounds)
    resume = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.is_file() else None
    policy = CheckpointPolicy(cfg.runtime, cfg.distill)

    def on_epoch(record: dict, state_fn) -> None:
        saved = policy.due(record)
        if saved:
            t0 = time.perf_counter()
            state = state_fn()
            cache.atomic_write(state_path, lambda tmp: torch.save(state, tmp))
            prepared.timings["checkpoint_s"] = prepared.timings.get("checkpoint_s", 0.0) + time.perf_counter() - t0
        if after:
            after(record, saved)

    history = run_distillation(
        raptor,
        prepared.states["train"],
        prepared.states["val"],
        cfg.distill,
        cfg.runtime,
        prepared.device,
        prepared.teacher.num_registers,
        cfg.seed,
        resume=resume,
        on_epoch=on_epoch,
    )
    return raptor, history


class InProcess:
    """Distil in this process; resumable from `out_dir/distill_state.pt`, written as `runtime.checkpoint_*` say."""

    STATE_FILE = "distill_state.pt"

    def distill(self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None) -> tuple[Raptor, list[dict]]:
        after = (lambda record, saved: on_epoch(record)) if on_epoch else None
        return distill_resumable(prepared, out_dir / self.STATE_FILE, after)

    def cleanup(self, out_dir: Path) -> None:
        (out_dir / self.STATE_FILE).unlink(missing_ok=True)


@torch.no_grad()
def teacher_probe_features(prepared: Prepared, split: str, batch_size: int = 512) -> torch.Tensor:
    """The teacher's probe features (final-norm cls ++ final-norm mean patch of x_L, docs/science.md §5): [N, 2D]."""
    states = prepared.states[split]
    norm, registers = prepared.teacher.model.norm, prepared.teacher.num_registers
    out = [
        probe_features(
            norm, torch.from_numpy(np.array(states[i : i + batch_size, -1])).float().to(prepared.device), registers
        ).cpu()
        for i in range(0, len(states), batch_size)
    ]
    return torch.cat(out)


def teacher_features(prepared: Prepared, split: str, batch_size: int = 512) -> torch.Tensor:
    """The teacher's readout features (final norm on cls of x_L) for a split: [N, D]."""
    return teacher_probe_features(prepared, split, batch_size)[:, : prepared.teacher.width]


def floor_raptor(cfg: TrialConfig, teacher: Teacher, phase_bounds) -> Raptor:
    """A randomly initialised Raptor of the trial's shape (the probe floor, docs/science.md §5), seeded by `cfg.seed`
    without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Raptor(
            teacher.model,
            phase_bounds,
            init="random",
            layerscale_init=cfg.raptor.layerscale_init,
            cond_hidden=cfg.raptor.cond_hidden,
        )


_TEACHER_PROBES: dict[str, tuple[float, object]] = {}
"""Per process: the teacher's own-probe accuracy and cls probe by a digest of their inputs (`teacher_probes`)."""


def teacher_probes(
    teacher_train: torch.Tensor, teacher_test: torch.Tensor, y_train: np.ndarray, y_test: np.ndarray, width: int
) -> tuple[float, object]:
    """The teacher's own-probe test accuracy and its cls probe (the transfer probe), fit once per process for the
    same teacher features: every trial of a teacher refits the same probe on the same inputs otherwise. The key is a
    digest of the features and labels; the seed is not part of it because the probe's lbfgs solver does not use
    `random_state` (scikit-learn uses it for the sag, saga and liblinear solvers only)."""
    digest = hashlib.sha1()
    for array in (teacher_train, teacher_test, y_train, y_test):
        digest.update(np.ascontiguousarray(array).tobytes())
    key = digest.hexdigest()
    if key not in _TEACHER_PROBES:
        if len(_TEACHER_PROBES) >= 8:
            _TEACHER_PROBES.pop(next(iter(_TEACHER_PROBES)))
        acc = own_probe_accuracy(teacher_train, y_train, teacher_test, y_test)
        cls_probe = fit_linear_probe(teacher_train[:, :width].numpy(), y_train)
        _TEACHER_PROBES[key] = (acc, cls_probe)
    return _TEACHER_PROBES[key]


def probe_metrics(prepared: Prepared, raptor: Raptor, raptor_test: torch.Tensor) -> tuple[dict[str, float], object]:
    """Task fidelity (docs/science.md §5): the paper's probe on each model's OWN features (acc.teacher, acc.raptor,
    acc.ratio, acc.floor, acc.recovered) and the transfer of the teacher's cls probe to the Raptor (acc.transfer*,
    acc.agreement). Returns (metrics, the teacher's cls probe)."""
    cfg, device, amp = prepared.cfg, prepared.device, prepared.cfg.runtime.amp
    y_train, y_test = prepared.labels["train"], prepared.labels["test"]
    width = prepared.teacher.width
    teacher_train, teacher_test = teacher_probe_features(prepared, "train"), teacher_probe_features(prepared, "test")
    raptor_train = rollout_features(raptor, prepared.states["train"], device, amp)
    floor = floor_raptor(cfg, prepared.teacher, prepared.partition.phase_bounds).to(device)
    floor_train = rollout_features(floor, prepared.states["train"], device, amp)
    floor_test = rollout_features(floor, prepared.states["test"], device, amp)
    # the transfer probe (the study's acc.ratio before docs/science.md §5 took the paper's protocol): the teacher's
    # probe on its cls readout, applied to the Raptor's cls readout
    acc_teacher, cls_probe = teacher_probes(teacher_train, teacher_test, y_train, y_test, width)
    acc = {"teacher": acc_teacher} | {
        name: own_probe_accuracy(train, y_train, test, y_test, seed=cfg.seed)
        for name, (train, test) in {"raptor": (raptor_train, raptor_test), "floor": (floor_train, floor_test)}.items()
    }
    recovery = probe_recovery(acc["teacher"], acc["raptor"], acc["floor"])
    transfer = task_fidelity(cls_probe, teacher_test[:, :width].numpy(), raptor_test[:, :width].numpy(), y_test)
    metrics = {
        ACC_TEACHER: acc["teacher"],
        ACC_RAPTOR: acc["raptor"],
        ACC_RATIO: recovery["ratio"],
        ACC_FLOOR: acc["floor"],
        ACC_RECOVERED: recovery["recovered"],
        ACC_TRANSFER_TEACHER: transfer["acc_teacher"],
        ACC_TRANSFER: transfer["acc_raptor"],
        ACC_TRANSFER_RATIO: transfer["acc_ratio"],
        ACC_AGREEMENT: transfer["agreement"],
    }
    return metrics, cls_probe


def subset_labels(prepared: Prepared) -> dict[str, np.ndarray]:
    """Labels of every split and subset a trial uses (the probe uses the whole train and test splits)."""
    out = {split: np.asarray(prepared.labels[split]) for split in SPLIT_NAMES}
    out["similarity"] = out["train"][prepared.subsets["similarity"]]
    if prepared.cfg.dynamics.enabled:
        out["dynamics"] = out["test"][prepared.subsets["dynamics"]]  # also the layer-swap subset
    return out


def class_share_metrics(prepared: Prepared) -> dict[str, float]:
    """Min / max class share of every split and subset (a class absent from a subset has share 0)."""
    labels = subset_labels(prepared)
    classes = np.unique(np.concatenate([labels[split] for split in SPLIT_NAMES]))
    metrics = {}
    for subset in CLASS_SHARE_SUBSETS:
        if subset in labels:
            low, high = class_share_range(labels[subset], classes)
            metrics[class_share_metric(subset, "min")], metrics[class_share_metric(subset, "max")] = low, high
    return metrics


def evaluate(prepared: Prepared, raptor: Raptor) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Fidelity on the test split -> (flat metrics, R^2 per layer by token group)."""
    cfg = prepared.cfg
    r2, r2_pooled, raptor_feats = evaluate_fidelity(
        raptor, prepared.states["test"], prepared.teacher.num_registers, prepared.device, cfg.runtime.amp
    )
    task, probe = probe_metrics(prepared, raptor, raptor_feats)
    metrics: dict[str, float] = {}
    if prepared.teacher.test_acc is not None:
        metrics[TEACHER_TEST_ACC] = prepared.teacher.test_acc
    for kind in PHASE_KINDS:  # kinds whose phase metrics are logged (mse drives partitions only)
        for name, value in phase_metrics(prepared.similarity[kind], prepared.partition.phase_bounds).items():
            metrics[phase_metric(kind, name)] = value
    metrics[CUT_VALUE] = prepared.partition.cut_value
    for name in ("cut_dp", "cut_bisection", "dp_differs"):
        metrics[partition_metric(name)] = float(prepared.partition_info[name])
    for kind, values in zip(R2_KINDS, (r2, r2_pooled)):  # strict and pooled R^2 (docs/science.md §5)
        for group in values:
            metrics[r2_metric(kind, "final", group)] = float(values[group][-1])
            metrics[r2_metric(kind, "mean", group)] = float(np.mean(values[group]))
    metrics.update(task)
    metrics.update(class_share_metrics(prepared))
    val_r2 = evaluate_fidelity(
        raptor, prepared.states["val"], prepared.teacher.num_registers, prepared.device, cfg.runtime.amp
    ).r2
    metrics[VAL_R2] = float(val_r2["all"][-1])  # the search objective, on the validation split
    prepared.dynamics = None
    if cfg.dynamics.enabled:
        t0 = time.perf_counter()
        teacher = prepared.teacher
        subset = prepared.subsets["dynamics"]
        dyn_metrics, prepared.dynamics = trial_dynamics(
            teacher.model,
            raptor,
            take_rows(prepared.states["test"], subset),
            np.asarray(prepared.labels["test"])[subset],
            swap_readout(teacher.model, probe),
            prepared.partition.phase_bounds,
            teacher.num_registers,
            cfg.dynamics,
            seed=cfg.seed,
            device=prepared.device,
        )
        metrics.update(dyn_metrics)
        prepared.timings["dynamics_s"] = time.perf_counter() - t0
    prepared.r2_pooled = {group: [float(v) for v in values] for group, values in r2_pooled.items()}
    return metrics, {group: [float(v) for v in values] for group, values in r2.items()}


def dataset_record(prepared: Prepared) -> dict:
    """The trial's dataset for MLflow's dataset inputs: name, split sizes, and a digest of the data config and
    every split's labels, per split and overall (equal digests: the same splits, as far as labels can tell)."""
    data = prepared.cfg.data.model_dump(mode="json")
    config = json.dumps(data, sort_keys=True).encode()
    digests = {
        split: hashlib.sha256(config + split.encode() + np.ascontiguousarray(labels).tobytes()).hexdigest()[:16]
        for split, labels in sorted(prepared.labels.items())
    }
    return {
        "name": data["name"],
        "splits": {split: int(len(labels)) for split, labels in prepared.labels.items()},
        "digest": hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16],
        "digests": digests,
        "source": data,
    }


def write_outputs(
    prepared: Prepared,
    raptor: Raptor,
    metrics: dict[str, float],
    r2_per_layer: dict[str, list[float]],
    history: list[dict],
    out_dir: Path,
    keep_model: bool = False,
) -> dict:
    """Write Parquet tables, figures, config, the Raptor weights and (last) result.json into `out_dir`.

    `keep_model` (a sweep's ``record.log_model``) also pickles the Raptor module and a few x_0 rows of the test
    split into the weights file, from which the sweep's MLflow writer logs it as a model (`RAPTOR_FILE`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, teacher = prepared.cfg, prepared.teacher
    result = {
        "config": cfg.to_dict(),
        "teacher": {
            "key": teacher.key,
            "depth": teacher.depth,
            "width": teacher.width,
            "num_registers": teacher.num_registers,
            "test_acc": teacher.test_acc,
            "snapshot_epoch": teacher.snapshot_epoch,  # epochs behind a kept checkpoint (teacher.snapshot), else None
            **({EMERGENCE_KEY: teacher.emergence} if teacher.emergence else {}),
        },
        "similarity": {kind: matrix.tolist() for kind, matrix in prepared.similarity.items()},
        "partition": {**prepared.partition.to_dict(), "method": cfg.partition.method, **prepared.partition_info},
        DATA_KEY: {
            "class_counts": {name: class_counts(labels) for name, labels in subset_labels(prepared).items()},
            **dataset_record(prepared),
        },
        "r2_per_layer": r2_per_layer,
        "r2_pooled_per_layer": prepared.r2_pooled,
        "metrics": metrics,
        "history": history,
        "timings": dict(prepared.timings),
    }
    for stage in sorted({record["stage"] for record in history}):
        result["timings"][f"stage{stage}_s"] = sum(r.get("seconds", 0.0) for r in history if r["stage"] == stage)
    if prepared.dynamics is not None:
        result["dynamics"] = prepared.dynamics
    t0 = time.perf_counter()
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    pooled = prepared.r2_pooled or {}
    rows = [
        {"layer": layer, "group": group, "r2": value, "r2_pooled": pooled.get(group, [np.nan] * len(values))[layer - 1]}
        for group, values in r2_per_layer.items()
        for layer, value in enumerate(values, start=1)
    ]
    pd.DataFrame(rows).to_parquet(out_dir / "r2_per_layer.parquet", index=False)
    pd.DataFrame(history).to_parquet(out_dir / "history.parquet", index=False)
    figures.save(
        figures.similarity_heatmap(
            prepared.similarity["cosine"],
            prepared.partition.phase_bounds,
            title=f"cosine similarity, k={prepared.partition.k}",
        ),
        out_dir / "similarity.png",
    )
    figures.save(figures.r2_curves(r2_per_layer), out_dir / "r2_per_layer.png")
    if prepared.dynamics is not None:
        figures.save(figures.dynamics_figure(prepared.dynamics), out_dir / "dynamics.png", dpi=110)
        if "swap" in prepared.dynamics:
            figures.save(figures.layer_swaps_figure(prepared.dynamics["swap"]), out_dir / "layer_swaps.png")
    saved = {"state_dict": raptor.state_dict(), "phase_bounds": raptor.phase_bounds, "config": cfg.to_dict()}
    if keep_model:  # the module shares its tensors with the state dict: torch.save stores them once
        rows = np.asarray(prepared.states["test"][:MODEL_EXAMPLE_ROWS, 0], dtype=np.float32)
        saved |= {RAPTOR_MODULE_KEY: raptor, RAPTOR_EXAMPLE_KEY: torch.from_numpy(np.ascontiguousarray(rows))}
    torch.save(saved, out_dir / RAPTOR_FILE)
    result["timings"]["write_s"] = time.perf_counter() - t0
    result["timings"]["written_unix"] = time.time()  # wall clock: a sweep lines trials up against Tune's events
    # written last and atomically: its presence marks the trial folder complete
    cache.atomic_write(out_dir / "result.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result


def run_trial(
    cfg: TrialConfig,
    out_dir: Path,
    runner: DistillRunner | None = None,
    on_epoch: OnEpoch | None = None,
    keep_model: bool = False,
) -> dict:
    """Run every stage of one trial and write its folder; `runner` picks where distillation runs;
    `keep_model` keeps what an MLflow model is logged from (`write_outputs`)."""
    runner = runner or InProcess()
    t_start, started_unix = time.perf_counter(), time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(cfg)
    prepared.timings["started_unix"] = started_unix
    t0 = time.perf_counter()
    raptor, history = runner.distill(prepared, out_dir, on_epoch)
    prepared.timings["distill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, r2_per_layer = evaluate(prepared, raptor.to(prepared.device))
    prepared.timings["evaluate_s"] = time.perf_counter() - t0
    prepared.timings["total_s"] = time.perf_counter() - t_start
    result = write_outputs(prepared, raptor, metrics, r2_per_layer, history, out_dir, keep_model=keep_model)
    if hasattr(runner, "cleanup"):
        runner.cleanup(out_dir)
    return result
