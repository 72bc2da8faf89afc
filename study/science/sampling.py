"""Subsets of a split: seeded random draws, stratified by class where labels exist (docs/science.md §5 "Subsets").

Every subset the study takes (capped train/val/test splits, the similarity sample, the
dynamics and layer-swap sample) comes from `stratified_subset`, so no subset depends on
the order of the dataset on disk (a class-sorted folder capped by `[:n]` keeps only its
first classes).

Allocation rule: with class counts n_c (total N) and a subset of size n, class c gets
floor(n * n_c / N) samples, and the remaining n - sum floor(...) samples go one each to
the classes with the largest fractional parts (ties broken by a seeded random order).
So every class holds its proportional share n * n_c / N to within one sample. Inside
each class the samples are a seeded uniformly random draw without replacement. Returned
indices are sorted (contiguous reads from memory-mapped states).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def stratified_subset(labels: Any, n: int | None, seed: int, *, num_items: int | None = None) -> np.ndarray:
    """Sorted indices of a seeded random draw of `n` items, stratified by `labels` [N] when given.

    `labels` None: a plain seeded draw of `n` of `num_items` items. `n` None or >= N: all items."""
    if labels is None:
        if num_items is None:
            raise ValueError("stratified_subset: give labels or num_items")
        total = int(num_items)
    else:
        labels = np.asarray(labels)
        total = len(labels)
    if n is None or n >= total:
        return np.arange(total)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, size=n, replace=False))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n * counts / total
    take = np.floor(quota).astype(np.int64)
    remainder = n - int(take.sum())
    if remainder:
        tiebreak = rng.permutation(len(classes))  # seeded order among equal fractional parts
        order = np.lexsort((tiebreak, -(quota - take)))
        take[order[:remainder]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == c), size=int(take[c]), replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def class_counts(labels: Any) -> dict[str, int]:
    """{class label (as text, for JSON): count} of a label array, in label order."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    return {str(int(c)): int(k) for c, k in zip(classes, counts)}


def class_share_range(labels: Any, classes: Any) -> tuple[float, float]:
    """(min, max) over `classes` of the share of each class in `labels` (a class absent from `labels` has share 0)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan"), float("nan")
    shares = [float(np.mean(labels == c)) for c in np.asarray(classes)]
    return min(shares), max(shares)


class IndexedRows:
    """Rows `indices` of an array-like [N, ...] (e.g. a memmap), read lazily slice by slice.

    Supports what the chunked science code uses: `len`, `shape`, `ndim`, `dtype` and `[a:b]`
    slices (read as one fancy-indexed copy of just those rows) or an int row."""

    def __init__(self, array: Any, indices: Any):
        self.array, self.indices = array, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self.array.shape[1:])

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest)] if not isinstance(rows, (int, np.integer)) else self[rows][rest]
        if isinstance(key, slice):
            return np.asarray(self.array[self.indices[key]])
        if isinstance(key, (int, np.integer)):
            return np.asarray(self.array[int(self.indices[key])])
        raise TypeError(f"IndexedRows supports slices and ints, got {type(key).__name__}")

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array[self.indices])
        return out.astype(dtype) if dtype is not None else out


def take_rows(array: Any, indices: np.ndarray) -> Any:
    """`array` itself when `indices` selects every row in order, else a lazy `IndexedRows` view."""
    if len(indices) == len(array) and np.array_equal(indices, np.arange(len(array))):
        return array
    return IndexedRows(array, indices)
