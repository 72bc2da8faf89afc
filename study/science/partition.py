"""Phases: the best split of layers 1..L into k contiguous groups (docs/science.md §2).

The partition maximises the dissimilarity across phase boundaries (a max-cut restricted
to contiguous cuts). The total over all pairs is fixed, so this equals minimising the
within-phase cost sum_m sum_{i<j in phase m} D[i, j], which an exact dynamic programme
over 2-D prefix sums solves in O(k L^2) (`contiguous_maxcut`, partition.method 'dp').

Also offered (docs/science.md §2): the reference's recursive bisection (`bisection`,
'bisection') and explicit boundaries (`fixed_partition`, 'fixed'). `bisection` is greedy
and never beats the DP's cut; trials log both cuts so a report can say how often it loses.
The paper's control (docs/science.md, "Max-cut vs random partitions"): a seeded draw uniform
over all C(L-1, k-1) contiguous partitions (`random_partition`, 'random').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from study.config import check_k_fits


def phase_labels(phase_bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Phase index (0..k-1) of teacher layers 1..L as an int array [L].

    `phase_bounds` are inclusive 1-based (first, last) layers that must cover 1..L
    contiguously, in order, e.g. ((1, 4), (5, 8)).
    """
    expected_first = 1
    for first, last in phase_bounds:
        if first != expected_first or last < first:
            raise ValueError(f"phase_bounds must tile layers 1..L contiguously, got {tuple(phase_bounds)}")
        expected_first = last + 1
    if expected_first == 1:
        raise ValueError("phase_bounds is empty")
    return np.repeat(np.arange(len(phase_bounds)), [last - first + 1 for first, last in phase_bounds])


@dataclass(frozen=True)
class Partition:
    """k contiguous phases of layers 1..L and the dissimilarity they cut / keep.

    phase_bounds: inclusive 1-based (first, last) teacher layers of each phase.
    cut_value: sum of D[i, j] over pairs i < j in different phases.
    within_cost: sum of D[i, j] over pairs i < j inside one phase.
    """

    phase_bounds: tuple[tuple[int, int], ...]
    cut_value: float
    within_cost: float

    def __post_init__(self) -> None:
        phase_labels(self.phase_bounds)

    @property
    def k(self) -> int:
        return len(self.phase_bounds)

    @property
    def num_layers(self) -> int:
        return self.phase_bounds[-1][1]

    @property
    def phase_of_layer(self) -> tuple[int, ...]:
        """Phase index (0..k-1) of teacher layers l = 1..L."""
        return tuple(int(m) for m in phase_labels(self.phase_bounds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase_bounds": [list(bounds) for bounds in self.phase_bounds],
            "cut_value": self.cut_value,
            "within_cost": self.within_cost,
            "k": self.k,
        }


def contiguous_maxcut(dissimilarity: np.ndarray, k: int) -> Partition:
    """Exact contiguous max-cut of layers 1..L into k phases.

    `dissimilarity` is a finite symmetric [L, L] matrix (index i <-> layer i+1); its
    diagonal is ignored. Dynamic programme over layer prefixes: with cost(a, b) the
    within-phase cost of layers a+1..b (0-based half-open [a, b)),
        f[m][b] = min_a f[m-1][a] + cost(a, b),
    and cost(a, b) is O(1) from 2-D prefix sums of the strict upper triangle.

    Ties: values within 1e-12 * (1 + total dissimilarity) of the minimum count as
    equal, and the smallest split point a wins. Backtracking from the last phase, the
    result is therefore the optimal partition whose last boundary is earliest, then
    whose second-to-last boundary is earliest, and so on.
    """
    d = np.asarray(dissimilarity, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dissimilarity must be a square matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("dissimilarity has non-finite entries")
    if not np.allclose(d, d.T, rtol=1e-6, atol=1e-9):
        raise ValueError("dissimilarity is not symmetric")
    num_layers = d.shape[0]
    check_k_fits(k, num_layers)

    upper = np.triu(d, k=1)
    prefix = np.zeros((num_layers + 1, num_layers + 1))
    prefix[1:, 1:] = upper.cumsum(0).cumsum(1)  # prefix[a, b] = upper[:a, :b].sum()
    diag = np.diagonal(prefix)
    cost = diag[None, :] - prefix - prefix.T + diag[:, None]  # cost[a, b], valid for a < b
    cost[np.tril_indices(num_layers + 1)] = np.inf
    tolerance = 1e-12 * (1.0 + np.abs(upper).sum())

    best = np.full(num_layers + 1, np.inf)  # best[b] = f[m][b] for the current m
    best[0] = 0.0
    split = np.zeros((k + 1, num_layers + 1), dtype=np.int64)
    for m in range(1, k + 1):
        total = best[:, None] + cost  # [a, b]
        minimum = total.min(axis=0)
        split[m] = np.argmax(total <= minimum + tolerance, axis=0)
        best = minimum

    ends = [num_layers]
    for m in range(k, 1, -1):
        ends.append(int(split[m, ends[-1]]))
    ends.reverse()
    bounds = tuple(zip([1] + [end + 1 for end in ends[:-1]], ends))

    labels = phase_labels(bounds)
    across = labels[:, None] != labels[None, :]
    return Partition(
        phase_bounds=bounds,
        cut_value=float(upper[across].sum()),
        within_cost=float(upper[~across].sum()),
    )


def _check_dissimilarity(dissimilarity: np.ndarray) -> np.ndarray:
    d = np.asarray(dissimilarity, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dissimilarity must be a square matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("dissimilarity has non-finite entries")
    if not np.allclose(d, d.T, rtol=1e-6, atol=1e-9):
        raise ValueError("dissimilarity is not symmetric")
    return d


def partition_of(dissimilarity: np.ndarray, phase_bounds: Sequence[tuple[int, int]]) -> Partition:
    """The `Partition` (cut and within-phase cost under `dissimilarity`) of given phase bounds."""
    upper = np.triu(_check_dissimilarity(dissimilarity), k=1)
    labels = phase_labels(phase_bounds)
    if len(labels) != upper.shape[0]:
        raise ValueError(f"phase_bounds {tuple(phase_bounds)} do not cover layers 1..{upper.shape[0]}")
    across = labels[:, None] != labels[None, :]
    bounds = tuple((int(a), int(b)) for a, b in phase_bounds)
    return Partition(bounds, cut_value=float(upper[across].sum()), within_cost=float(upper[~across].sum()))


def fixed_partition(dissimilarity: np.ndarray, boundaries: Sequence[int]) -> Partition:
    """Phases ending at the given layers: `boundaries` = last layer (1-based) of every phase but the last,
    e.g. [7] on 12 layers -> (1..7), (8..12) (the reference's DINOv2 ViT-B k=2 threshold)."""
    num_layers = np.asarray(dissimilarity).shape[0]
    ends = [int(b) for b in boundaries] + [num_layers]
    starts = [1] + [end + 1 for end in ends[:-1]]
    return partition_of(dissimilarity, tuple(zip(starts, ends)))


def bisection(dissimilarity: np.ndarray, k: int) -> Partition:
    """The reference's recursive two-way split, on contiguous segments (docs/science.md §2).

    Exact rule: start from one segment 1..L. While there are fewer than k segments, find for
    every segment of >= 2 layers its best contiguous two-way cut (the split point s giving
    the largest cross weight sum_{i in left, j in right} D[i, j]; ties: earliest s), and
    split the segment whose best cut adds the most to the total cut (ties: earliest
    segment). Greedy, so its cut value is at most the DP's; equal for k <= 2.
    """
    d = _check_dissimilarity(dissimilarity)
    num_layers = d.shape[0]
    check_k_fits(k, num_layers)
    segments = [(0, num_layers)]  # 0-based half-open [a, b)
    while len(segments) < k:
        best = None  # (gain, segment index, split point)
        for index, (a, b) in enumerate(segments):
            for split in range(a + 1, b):
                gain = float(d[a:split, split:b].sum())
                if best is None or gain > best[0] + 1e-12 * (1.0 + abs(gain)):
                    best = (gain, index, split)
        _, index, split = best
        a, b = segments[index]
        segments[index : index + 1] = [(a, split), (split, b)]
    return partition_of(d, tuple((a + 1, b) for a, b in segments))


def random_boundaries(num_layers: int, k: int, seed: int) -> list[int]:
    """A contiguous partition of layers 1..L into k phases drawn uniformly over all C(L-1, k-1) of them, as its
    boundaries (last layer of every phase but the last): k - 1 distinct split points of the L - 1 gaps between
    layers, drawn without replacement by `numpy.random.default_rng(seed)`, sorted."""
    check_k_fits(k, num_layers)
    gaps = np.random.default_rng(seed).choice(num_layers - 1, size=k - 1, replace=False)
    return sorted(int(g) + 1 for g in gaps)


def random_partition(dissimilarity: np.ndarray, k: int, seed: int) -> Partition:
    """The seeded uniform random contiguous partition (`random_boundaries`) with its cut under `dissimilarity`."""
    num_layers = _check_dissimilarity(dissimilarity).shape[0]
    return fixed_partition(dissimilarity, random_boundaries(num_layers, k, seed))


def choose_partition(
    dissimilarity: np.ndarray,
    k: int,
    method: str = "dp",
    boundaries: Sequence[int] | None = None,
    seed: int | None = None,
) -> tuple[Partition, dict[str, Any]]:
    """The partition used by a trial (`method` dp | bisection | fixed | random; `seed` for 'random') and the
    DP-vs-bisection comparison logged with every trial: {'cut_dp', 'cut_bisection', 'dp_differs' (1.0 if their
    bounds differ), 'bounds_dp', 'bounds_bisection'}."""
    dp, bis = contiguous_maxcut(dissimilarity, k), bisection(dissimilarity, k)
    if method == "dp":
        chosen = dp
    elif method == "bisection":
        chosen = bis
    elif method == "fixed":
        if boundaries is None:
            raise ValueError("partition.boundaries: required when partition.method is 'fixed'")
        chosen = fixed_partition(dissimilarity, boundaries)
    elif method == "random":
        if seed is None:
            raise ValueError("partition.seed: required when partition.method is 'random'")
        chosen = random_partition(dissimilarity, k, seed)
    else:
        raise ValueError(f"partition.method: must be 'dp', 'bisection', 'fixed' or 'random', got {method!r}")
    comparison = {
        "cut_dp": dp.cut_value,
        "cut_bisection": bis.cut_value,
        "dp_differs": float(dp.phase_bounds != bis.phase_bounds),
        "bounds_dp": [list(b) for b in dp.phase_bounds],
        "bounds_bisection": [list(b) for b in bis.phase_bounds],
    }
    return chosen, comparison
