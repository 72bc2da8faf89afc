"""Layer-layer similarity of a teacher's token states, and phase metrics (docs/science.md §2).

Conventions shared by the study's analysis modules:
- `states` is array-like [N, L+1, T, D] (torch.Tensor, numpy array or np.memmap):
  index 0 is x_0 (embedded tokens), index l the output of block l.
- Tokens: index 0 is cls, 1..R the registers (R = `num_registers`, may be 0), the
  rest are patches.
- Inputs are processed `chunk` samples at a time as float32 torch tensors, so a
  memmap of many GB never has to fit in memory. Torch inputs stay on their device;
  numpy inputs go to `device` when one is given (a GPU: the matrices are batched
  matmuls there), else stay on the CPU.
- Layer-layer matrices are numpy float64 [L, L] over layers 1..L: matrix index i is
  teacher layer i+1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from study.science.partition import phase_labels


def iter_chunks(states: Any, chunk: int = 256, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Yield consecutive slices of `states` along axis 0 as float32 torch tensors.

    Numpy arrays / memmaps are copied slice by slice to CPU tensors, or to `device` when
    given; torch tensors keep their device.
    """
    for start in range(0, len(states), chunk):
        part = states[start : start + chunk]
        if isinstance(part, torch.Tensor):
            yield part.float()
        else:
            x = torch.from_numpy(np.array(part, dtype=np.float32))
            yield x if device is None else x.to(device, non_blocking=True)


def layer_summaries(
    states: Any, num_registers: int, chunk: int = 256, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summaries of every layer: the cls token and the mean patch token.

    Returns (cls, mean_patch), each a float32 tensor [N, L+1, D] on `device` (None: the CPU).
    """
    cls, mean_patch = [], []
    keep = device if device is not None else "cpu"
    for x in iter_chunks(states, chunk, device):
        cls.append(x[:, :, 0].to(keep))
        mean_patch.append(x[:, :, 1 + num_registers :].mean(dim=2).to(keep))
    return torch.cat(cls), torch.cat(mean_patch)


def cosine_dissimilarity(
    states: Any, num_registers: int, chunk: int = 256, device: torch.device | str | None = None
) -> np.ndarray:
    """D[i, j] = mean over {cls, mean-patch} of (1 - cos(x_i, x_j)), averaged over samples.

    Returns float64 [L, L] over layers 1..L, symmetric with a zero diagonal, values in
    [0, 2]. The matching similarity is S = 1 - D.
    """
    dissimilarity = 0.0
    for summary in layer_summaries(states, num_registers, chunk, device):
        u = F.normalize(summary[:, 1:].double(), dim=-1)  # [N, L, D]
        cos = torch.einsum("nid,njd->ij", u, u) / len(u)
        dissimilarity = dissimilarity + 0.5 * (1.0 - cos)
    return _symmetric_zero_diagonal(dissimilarity.cpu().numpy())


def mse_dissimilarity(
    states: Any, num_registers: int, chunk: int = 256, device: torch.device | str | None = None
) -> np.ndarray:
    """Scale-free squared-distance dissimilarity between layers.

    For each summary a in {cls, mean-patch} (vectors a_i of layer i, per sample):
        D_a[i, j] = E||a_i - a_j||^2 / (E||a_i||^2 + E||a_j||^2),
    expectations over samples, i.e. the mean squared difference over twice the mean
    squared norm of the two layers. D = mean of D_cls and D_patch. It is invariant to a
    global rescaling of the states, lies in [0, 2], is 1 for orthogonal states and
    equals the cosine dissimilarity 1 - cos when the two layers have equal norms.
    A pair of all-zero layers gets 0. Returns float64 [L, L] over layers 1..L.
    """
    dissimilarity = 0.0
    for summary in layer_summaries(states, num_registers, chunk, device):
        a = summary[:, 1:].double()  # [N, L, D]
        gram = torch.einsum("nid,njd->ij", a, a) / len(a)  # E<a_i, a_j>
        sq = torch.diagonal(gram)
        norms = sq[:, None] + sq[None, :]
        distance = norms - 2.0 * gram
        dissimilarity = dissimilarity + 0.5 * torch.where(norms > 0, distance / norms, 0.0)
    return _symmetric_zero_diagonal(dissimilarity.clamp_min(0.0).cpu().numpy())


def cosine_similarity(states: Any, num_registers: int, device: torch.device | str | None = None) -> np.ndarray:
    """S = 1 - `cosine_dissimilarity` [L, L] (the similarity kind 'cosine')."""
    return 1.0 - cosine_dissimilarity(states, num_registers, device=device)


def mse_similarity(states: Any, num_registers: int, device: torch.device | str | None = None) -> np.ndarray:
    """S = 1 - `mse_dissimilarity` [L, L] (the similarity kind 'mse')."""
    return 1.0 - mse_dissimilarity(states, num_registers, device=device)


def linear_cka(
    states: Any,
    num_registers: int,
    max_tokens: int = 8192,
    seed: int = 0,
    chunk: int = 256,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Linear CKA between layers 1..L over patch tokens.

    Rows are (sample, patch) pairs; when there are more than `max_tokens` of them a
    fixed subset of `max_tokens` rows is drawn with `np.random.default_rng(seed)` (the
    same rows for every layer). With X, Y the column-centred [M, D] matrices of two
    layers, CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). A layer whose centred
    features are all zero gets similarity 0 to every other layer.
    Returns float64 [L, L], symmetric, in [0, 1], ones on the diagonal.
    """
    num_samples, num_patches = len(states), states.shape[2] - 1 - num_registers
    total = num_samples * num_patches
    rows = np.arange(total)
    if total > max_tokens:
        rows = np.sort(np.random.default_rng(seed).choice(total, size=max_tokens, replace=False))
    sample, patch = np.divmod(rows, num_patches)

    feats, start = [], 0
    for x in iter_chunks(states, chunk, device):
        lo, hi = np.searchsorted(sample, [start, start + len(x)])
        samples = torch.from_numpy(sample[lo:hi] - start).to(x.device)
        tokens = torch.from_numpy(patch[lo:hi] + 1 + num_registers).to(x.device)
        feats.append(x[samples, 1:, tokens])  # [m, L, D]
        start += len(x)
    x = torch.cat(feats).transpose(0, 1)  # [L, M, D]
    x = x - x.mean(dim=1, keepdim=True)

    num_layers = x.shape[0]
    hsic = torch.zeros((num_layers, num_layers), dtype=torch.float64, device=x.device)
    xt = x.mT  # [L, D, M]
    for i in range(num_layers):  # row i at once: ||X_j^T X_i||_F for all j >= i as one batched matmul
        hsic[i, i:] = torch.linalg.matrix_norm(xt[i:] @ x[i]).double() ** 2
    hsic = torch.triu(hsic) + torch.triu(hsic, diagonal=1).T
    hsic = hsic.cpu().numpy()
    scale = np.sqrt(np.diag(hsic))
    denominator = scale[:, None] * scale[None, :]
    cka = np.divide(hsic, denominator, out=np.zeros_like(hsic), where=denominator > 0)
    np.fill_diagonal(cka, 1.0)
    return np.clip(cka, 0.0, 1.0)


def phase_metrics(similarity: np.ndarray, phase_bounds: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Summaries of how well a similarity matrix S [L, L] follows a phase partition.

    Keys (pairs are i < j; D = 1 - S):
    - within_sim: mean S over pairs inside one phase (NaN if every phase has one layer),
    - between_sim: mean S over pairs in different phases (NaN if k == 1),
    - contrast: within_sim - between_sim (NaN if either is NaN),
    - cut_norm: sum of D over pairs in different phases / sum of D over all pairs
      (0 if the latter is 0),
    - adjacent_sim: mean S[i, i+1],
    - mean_sim: mean off-diagonal S.
    adjacent_sim and mean_sim are NaN when L == 1.
    `phase_bounds` are inclusive 1-based (first, last) layers covering 1..L, e.g.
    ((1, 4), (5, 8)).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    labels = phase_labels(phase_bounds)
    if similarity.shape != (len(labels), len(labels)):
        raise ValueError(f"similarity has shape {similarity.shape}, phases cover {len(labels)} layers")
    i, j = np.triu_indices(len(labels), k=1)
    pairs = similarity[i, j]
    same = labels[i] == labels[j]
    cut_total = (1.0 - pairs).sum()
    within = _mean(pairs[same])
    between = _mean(pairs[~same])
    return {
        "within_sim": within,
        "between_sim": between,
        "contrast": within - between,
        "cut_norm": float((1.0 - pairs[~same]).sum() / cut_total) if cut_total != 0 else 0.0,
        "adjacent_sim": _mean(np.diagonal(similarity, offset=1)),
        "mean_sim": _mean(pairs),
    }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _symmetric_zero_diagonal(matrix: np.ndarray) -> np.ndarray:
    matrix = 0.5 * (matrix + matrix.T)
    np.fill_diagonal(matrix, 0.0)
    return matrix
