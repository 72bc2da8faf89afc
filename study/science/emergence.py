"""When does the block structure appear? Phase metrics of a model's layers at checkpoints across its training.

The paper measures the phase structure of trained ViTs only; it leaves open when in training the layers group into
phases (docs/science.md §7). A snapshot takes the layer-layer cosine similarity of one fixed set of images'
states (`similarity.cosine_dissimilarity`, the matrix a trial partitions on), the exact DP partition for each k
(`partition.contiguous_maxcut`) and that partition's `similarity.phase_metrics`. Taken at init and after every N
epochs of a teacher's training (study/trial/teacher.py), the snapshots form step curves; the report reads off
when a curve has covered a given fraction of its way from init to the end (analysis/emergence.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from study.science.partition import contiguous_maxcut
from study.science.similarity import cosine_dissimilarity, phase_metrics

EMERGENCE_KS = (2, 3, 4)
"""The k whose DP partitions a snapshot measures (the study's k range)."""

PHASE_KEYS = ("within_sim", "between_sim", "contrast", "cut_norm")
"""`phase_metrics` keys kept per k, as ``k{k}.{key}``."""


def phase_snapshot(states: Any, num_registers: int, ks: Sequence[int] = EMERGENCE_KS) -> dict[str, float]:
    """Phase structure of one model's states [N, L+1, T, D]: {'mean_sim', 'adjacent_sim', 'k{k}.{PHASE_KEYS}'}.

    Similarity is cosine (1 - `cosine_dissimilarity`) over layers 1..L; each k <= L gets its exact DP partition."""
    dissimilarity = cosine_dissimilarity(states, num_registers)
    similarity = 1.0 - dissimilarity
    depth = len(similarity)
    overall = phase_metrics(similarity, ((1, depth),))
    snapshot = {"mean_sim": overall["mean_sim"], "adjacent_sim": overall["adjacent_sim"]}
    for k in ks:
        if not 1 <= k <= depth:
            continue
        metrics = phase_metrics(similarity, contiguous_maxcut(dissimilarity, k).phase_bounds)
        snapshot.update({f"k{k}.{key}": metrics[key] for key in PHASE_KEYS})
    return snapshot
