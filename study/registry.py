"""The study's pluggable parts by name: datasets, similarity kinds and evaluation read-outs (docs/science.md,
"Evaluation read-outs").

Each table maps the name a config uses to its builder, written as ``'module:attribute'`` and imported on first use
(`resolve`), so that config validation (study/config.py) reads the names without importing torch. A table entry may
also be the builder itself (a test registers a toy similarity kind that way). Adding a part = its function or class
+ one line in its table here; config validation, the similarity matrices of a trial and the evaluation loop follow.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

DATASETS: dict[str, Any] = {
    "digits": "study.trial.data:DIGITS",
    "fashion_mnist": "study.trial.data:FASHION_MNIST",
    "cifar10": "study.trial.data:CIFAR10",
    "cifar100": "study.trial.data:CIFAR100",
    "imagefolder": "study.trial.data:IMAGEFOLDER",
}
"""``data.name`` -> a `study.trial.data.DatasetKind` (its loader and the native image spec of a scratch teacher)."""
DATASETS_WITHOUT_PATH = ("digits", "fashion_mnist")
"""Datasets that load without ``data.path`` (digits ships with scikit-learn; Fashion-MNIST has a default folder)."""

SIMILARITY: dict[str, Any] = {
    "cosine": "study.science.similarity:cosine_similarity",
    "cka": "study.science.similarity:linear_cka",
    "mse": "study.science.similarity:mse_similarity",
}
"""Similarity kind -> ``fn(states [N, L+1, T, D], num_registers, device=None) -> S [L, L]`` over layers 1..L (larger:
more alike; the partition maximises the cut of 1 - S, docs/science.md §2). Every kind is computed for every trial
(result.json ``similarity``); ``similarity.partition_on`` picks the one that drives the partition."""

READOUTS: dict[str, Any] = {
    "fidelity": "study.trial.readouts:Fidelity",
    "partition": "study.trial.readouts:PartitionStructure",
    "probes": "study.trial.probes:Probes",
    "class_shares": "study.trial.readouts:ClassShares",
    "dynamics": "study.trial.readouts:Dynamics",
    "swaps": "study.trial.readouts:AdjacentSwaps",
    "head": "study.trial.measures:HeadAccuracy",
    "replace": "study.trial.measures:LayerReplacement",
}
"""Evaluation read-out -> a `study.trial.evaluation.Readout` class; ``eval.readouts`` lists the ones a trial runs."""
DEFAULT_READOUTS = ("fidelity", "partition", "probes", "head", "class_shares", "dynamics", "swaps", "replace")
"""The read-outs of a trial unless ``eval.readouts`` says otherwise (``dynamics.enabled`` and ``dynamics.swaps`` /
``dynamics.replace`` still switch the last three off)."""


def resolve(table: Mapping[str, Any], name: str) -> Any:
    """The builder registered under `name`: a ``'module:attribute'`` entry is imported here, anything else returned."""
    entry = table[name]
    if not isinstance(entry, str):
        return entry
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)
