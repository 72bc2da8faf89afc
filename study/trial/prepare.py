"""A trial's first stage: teacher, its cached states, similarity matrices and the k-phase partition (`prepare`).

Everything here is cached and shared across the trials of one teacher (study/trial/cache.py): the teacher is
trained or loaded once, its states per split extracted once, and the subsets are seeded by the data split seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from study.config import TrialConfig, check_boundaries, check_k_fits
from study.registry import SIMILARITY, resolve
from study.runtime import setup
from study.science.partition import Partition, choose_partition
from study.science.sampling import stratified_subset, take_rows
from study.trial.activations import cached_states
from study.trial.data import SPLIT_NAMES, ImageSpec, dataset_labels, load_splits
from study.trial.sources import check_data_source, check_teacher_source
from study.trial.teacher import Teacher, load_teacher


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
        "accuracy": stratified_subset(labels["test"], cfg.dynamics.accuracy_samples, cfg.data.split_seed + 14),
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


def subset_labels(prepared: Prepared) -> dict[str, np.ndarray]:
    """Labels of every split and subset a trial uses (the probe uses the whole train and test splits)."""
    out = {split: np.asarray(prepared.labels[split]) for split in SPLIT_NAMES}
    out["similarity"] = out["train"][prepared.subsets["similarity"]]
    if prepared.cfg.dynamics.enabled:
        out["dynamics"] = out["test"][prepared.subsets["dynamics"]]
        out["accuracy"] = out["test"][prepared.subsets["accuracy"]]  # layer replacement and adjacent swaps
    return out
