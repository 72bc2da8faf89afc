"""Dynamical read-outs of a ViT's token trajectory x_0..x_L (docs/science.md §6).

`states` follows the conventions of `study.similarity`: array-like [N, L+1, T, D],
tokens cls (0), registers (1..R), patches (rest), processed `chunk` samples at a time.
Directions are u_l = x_l / |x_l| per token; angles are in radians.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from study.science.fidelity import token_groups
from study.science.partition import phase_labels
from study.science.similarity import iter_chunks

RunLayers = Callable[[torch.Tensor, int, int], Sequence[torch.Tensor]]
HOST_EIGH_MAX = 128  # update_stable_rank: Grams up to this size are decomposed on the CPU


@torch.no_grad()
def directional_convergence(states: Any, num_registers: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """gamma_l = cos(u_l, u_L), mean over samples (and patch tokens), for l = 0..L.

    Returns {'cls': [L+1], 'patch': [L+1]}; gamma_L = 1 by construction.
    """
    sums = {"cls": 0.0, "patch": 0.0}
    for x in iter_chunks(states, chunk):
        u = F.normalize(x, dim=-1)
        cos = (u * u[:, -1:]).sum(dim=-1)  # [B, L+1, T]
        sums["cls"] = sums["cls"] + cos[:, :, 0].double().sum(dim=0)
        sums["patch"] = sums["patch"] + cos[:, :, 1 + num_registers :].double().mean(dim=2).sum(dim=0)
    return {name: (total / len(states)).cpu().numpy() for name, total in sums.items()}


@torch.no_grad()
def angular_speed(states: Any, num_registers: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """Angle between u_l and u_{l+1}, mean over samples and tokens of each group.

    Returns {'cls', 'patch', and 'reg' if R > 0}: arrays [L], entry l-1 for the step
    x_{l-1} -> x_l. The angle is computed as 2 atan2(|u - v|, |u + v|), which equals
    arccos(cos(u, v)) but stays accurate near 0 and pi (no clamping needed).
    """
    groups = token_groups(num_registers)
    sums = dict.fromkeys(groups, 0.0)
    for x in iter_chunks(states, chunk):
        u, v = F.normalize(x[:, :-1], dim=-1), F.normalize(x[:, 1:], dim=-1)
        angle = 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))  # [B, L, T]
        for name, tokens in groups.items():
            sums[name] = sums[name] + angle[:, :, tokens].double().mean(dim=2).sum(dim=0)
    return {name: (total / len(states)).cpu().numpy() for name, total in sums.items()}


@torch.no_grad()
def patch_coherence(states: Any, num_registers: int, chunk: int = 256) -> np.ndarray:
    """Mean cosine of each patch direction u_p to the mean patch direction, per layer.

    Since mean_p cos(u_p, m) with m = mean_p u_p equals |m|, this is computed as the
    norm of the mean unit patch vector. Mean over samples; returns [L+1] in [0, 1].
    """
    total = 0.0
    for x in iter_chunks(states, chunk):
        mean_direction = F.normalize(x[:, :, 1 + num_registers :], dim=-1).mean(dim=2)  # [B, L+1, D]
        total = total + mean_direction.norm(dim=-1).double().sum(dim=0)
    return (total / len(states)).cpu().numpy()


@torch.no_grad()
def update_stable_rank(states: Any, chunk: int = 256) -> np.ndarray:
    """Stable rank ||U||_F^2 / ||U||_2^2 of the update U_l = x_{l+1} - x_l over all tokens.

    U_l is [T, D] per sample; ||U||_2^2 is the top eigenvalue of the smaller Gram matrix
    (same as the squared top singular value, cheaper than an SVD). A zero update has
    stable rank 0. Mean over samples; returns [L], entry l-1 for x_{l-1} -> x_l.

    Grams of at most HOST_EIGH_MAX rows are decomposed on the CPU wherever the states are: a
    GPU solves a batch of such matrices one by one with a host sync each (H200, 1,536 Grams of
    50 x 50: 0.45 s, 4.7 s with 8 trials on the GPU, vs 0.14 s on the CPU; 257 x 257: 3.4 s on
    the GPU, 5.9 s on the CPU; results/throughput/README.md).
    """
    total = 0.0
    for x in iter_chunks(states, chunk):
        update = x[:, 1:] - x[:, :-1]  # [B, L, T, D]
        tokens, channels = update.shape[-2:]
        gram = (update @ update.mT if tokens <= channels else update.mT @ update).double()
        top = torch.linalg.eigvalsh(gram.cpu() if gram.shape[-1] <= HOST_EIGH_MAX else gram)[..., -1]
        top = top.to(gram.device)
        frobenius = torch.diagonal(gram, dim1=-2, dim2=-1).sum(dim=-1)
        rank = torch.where(top > 0, frobenius / top, 0.0)
        total = total + rank.sum(dim=0)
    return (total / len(states)).cpu().numpy()


def _token_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (radians) between the directions of matching tokens of a and b [..., D] -> [...]:
    2 atan2(|u - v|, |u + v|) on unit vectors, = arccos(cos) but accurate near 0 and pi."""
    u, v = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


@torch.no_grad()
def perturbation_angles(
    run_layers: RunLayers,
    states: Any,
    layer: int,
    eps: float,
    seed: int,
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Angular distance between perturbed and clean trajectories after perturbing x_layer (docs/science.md §6).

    `run_layers(x, start, stop)` maps a state x_start [B, T, D] to the list of states
    x_{start+1}, ..., x_stop. Each token of x_layer (0 <= layer < L) gets Gaussian noise
    of norm eps * |token|; both the clean and the perturbed state are rolled with
    `run_layers` (so only the perturbation differs). Returns [L - layer + 1], entry 0 for
    x_layer itself (the injected angle) and entry m - layer for layer m = layer+1..L: the
    mean over samples and tokens of the angle between the normalised perturbed and clean
    token states. Clean and perturbed states of a chunk go through `run_layers` as one batch
    (clean first); a map that treats samples independently gives the same states as two calls.
    Angles ignore the stream's norm, so a map that only rescales the stream leaves them
    unchanged (a Euclidean distance would grow with the norm). Noise draws come
    from a CPU generator seeded with `seed`.
    """
    num_layers = states.shape[1] - 1
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer must be in [0, {num_layers - 1}], got {layer}")
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for x in iter_chunks(states[:, layer], chunk):
        x = x.to(device)
        noise = torch.randn(x.shape, generator=generator).to(device)
        noise = noise * (eps * x.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))
        both = torch.cat([x, x + noise])  # clean and perturbed rolled as one batch: half the kernel launches
        both = torch.stack([both, *run_layers(both, layer, num_layers)], dim=1)  # [2B, L-layer+1, T, D]
        clean, perturbed = both.split(len(x))
        total = total + _token_angle(perturbed, clean).double().mean(dim=2).sum(dim=0)
    return (total / len(states)).cpu().numpy()


def perturbation_recovery(
    run_layers: RunLayers,
    states: Any,
    layer: int,
    eps: float,
    seed: int,
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Angular recovery after perturbing x_layer: [L - layer], entry for layer m = layer+1..L is
    angle_m / angle_layer (`perturbation_angles`). < 1: the trajectory bends back toward the clean
    one; 1: neither (e.g. a map that only rescales the stream); > 1: the perturbation grows."""
    angles = perturbation_angles(run_layers, states, layer, eps, seed, chunk, device)
    return angles[1:] / angles[0] if angles[0] > 0 else np.full(len(angles) - 1, np.nan)


@torch.no_grad()
def sequence_accuracy(
    blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    embed_states: Any,
    readout: Callable[[torch.Tensor], torch.Tensor],
    labels: Any,
    sequences: Sequence[Sequence[int]],
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Accuracy of the teacher run with another block at some depths, for each sequence.

    `blocks` are the L teacher blocks (x -> x, [B, T, D]), `embed_states` x_0 [N, T, D], `readout(x_L)` gives
    logits [B, C], `labels` [N]. A sequence lists, for layers 1..L, the (1-based) layer whose block runs there:
    (1, ..., L) is the teacher itself. Each chunk's unchanged trajectory is computed once and a sequence starts
    from it at its first changed layer, so sequences sharing a prefix do not recompute it; equal sequences are
    scored once."""
    num_layers = len(blocks)
    sequences = [tuple(int(s) for s in seq) for seq in sequences]
    for seq in sequences:
        if len(seq) != num_layers or not all(1 <= s <= num_layers for s in seq):
            raise ValueError(f"block sequence {seq} is not L = {num_layers} layers in [1, {num_layers}]")
    unique = list(dict.fromkeys(sequences))
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    correct, start = np.zeros(len(unique), dtype=np.int64), 0
    for x in iter_chunks(embed_states, chunk):
        clean = [x.to(device)]
        for block in blocks:
            clean.append(block(clean[-1]))
        truth = labels[start : start + len(x)]
        for i, seq in enumerate(unique):
            first = next((layer for layer in range(num_layers) if seq[layer] != layer + 1), num_layers)
            state = clean[first]
            for layer in range(first, num_layers):
                state = blocks[seq[layer] - 1](state)
            correct[i] += int((readout(state).argmax(dim=-1).cpu().numpy() == truth).sum())
        start += len(x)
    accuracy = dict(zip(unique, (correct / len(labels)).tolist()))
    return [accuracy[seq] for seq in sequences]


def layer_swap_accuracy(
    blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    embed_states: Any,
    readout: Callable[[torch.Tensor], torch.Tensor],
    labels: Any,
    pairs: Sequence[tuple[int, int]],
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> dict[tuple[int, int], float]:
    """Accuracy of the teacher with blocks i and j (1-based) swapped, for each pair (`sequence_accuracy`).

    A pair (l, l) leaves the order unchanged and so gives the unswapped accuracy."""
    sequences = []
    for i, j in pairs:
        if not (1 <= i <= len(blocks) and 1 <= j <= len(blocks)):
            raise ValueError(f"layer pair {(i, j)} outside [1, {len(blocks)}]")
        order = list(range(1, len(blocks) + 1))
        order[i - 1], order[j - 1] = order[j - 1], order[i - 1]
        sequences.append(order)
    accuracy = sequence_accuracy(blocks, embed_states, readout, labels, sequences, chunk, device)
    return dict(zip(((i, j) for i, j in pairs), accuracy))


REPLACE_KINDS = ("intra", "inter")


def replacement_sets(
    phase_bounds: Sequence[tuple[int, int]], n: int, kind: str, draws: int, seed: int
) -> list[dict[int, int]]:
    """`draws` seeded layer-replacement sets (docs/science.md §6, layer replacement): each maps n distinct
    teacher layers (1-based) to the layer whose block replaces theirs, from the same phase ('intra') or from
    another phase ('inter'), never the layer itself.

    The n layers are drawn uniformly without replacement from the layers that have a candidate (intra: the
    layers of phases with at least two layers; inter: every layer when k >= 2), then each one's source
    uniformly from its candidates; sets are drawn independently, so two draws may coincide. Returns [] when no
    set exists (fewer than n layers have a candidate: intra with only one-layer phases, inter with k = 1)."""
    if kind not in REPLACE_KINDS:
        raise ValueError(f"replacement kind must be one of {REPLACE_KINDS}, got {kind!r}")
    labels = phase_labels(phase_bounds)
    layers = np.arange(1, len(labels) + 1)
    candidates = {
        int(layer): [int(o) for o in layers if o != layer and (labels[o - 1] == labels[layer - 1]) == (kind == "intra")]
        for layer in layers
    }
    eligible = [layer for layer, sources in candidates.items() if sources]
    if len(eligible) < n:
        return []
    rng = np.random.default_rng([seed, n, REPLACE_KINDS.index(kind)])
    sets = []
    for _ in range(draws):
        targets = sorted(int(t) for t in rng.choice(eligible, size=n, replace=False))
        sets.append({t: int(rng.choice(candidates[t])) for t in targets})
    return sets


def replaced_sequence(num_layers: int, replacement: dict[int, int]) -> list[int]:
    """The block sequence (`sequence_accuracy`) of a replacement set: layer l runs block replacement.get(l, l)."""
    return [replacement.get(layer, layer) for layer in range(1, num_layers + 1)]


def layer_replacement(
    blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    embed_states: Any,
    readout: Callable[[torch.Tensor], torch.Tensor],
    labels: Any,
    phase_bounds: Sequence[tuple[int, int]],
    ns: Sequence[int] = (1, 2, 3),
    draws: int = 20,
    seed: int = 0,
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The paper's swap test (docs/science.md §6, layer replacement): the teacher's accuracy through `readout`
    with n layers replaced by blocks of their phase (intra) or of another phase (inter), `draws` seeded sets
    (`replacement_sets`) per kind and n, all scored on the same images (`sequence_accuracy`).

    Returns a JSON-ready record: 'baseline' (unreplaced accuracy), 'num_images', and per kind and n
    (``out['intra']['n2']``) 'draws' ([{'replace': [[layer, source], ...], 'acc': a}]), 'mean' (None when no
    set exists) and 'skipped' (draws that cannot exist: `draws` when no set exists, else 0)."""
    num_layers = len(blocks)
    plan = {
        (kind, n): replacement_sets(phase_bounds, n, kind, draws, seed)
        for kind in REPLACE_KINDS
        for n in ns
        if 1 <= n <= num_layers
    }
    sequences = [list(range(1, num_layers + 1))]
    sequences += [replaced_sequence(num_layers, r) for sets in plan.values() for r in sets]
    accuracy = iter(sequence_accuracy(blocks, embed_states, readout, labels, sequences, chunk, device))
    out: dict[str, Any] = {"baseline": next(accuracy), "num_images": len(labels)}
    for kind in REPLACE_KINDS:
        out[kind] = {}
        for n in ns:
            sets = plan.get((kind, n), [])
            values = [next(accuracy) for _ in sets]
            out[kind][f"n{n}"] = {
                "draws": [{"replace": sorted([t, s] for t, s in r.items()), "acc": a} for r, a in zip(sets, values)],
                "mean": float(np.mean(values)) if values else None,
                "skipped": 0 if sets else draws,
            }
    return out


def cls_speed_summary(speed_cls: Sequence[float]) -> dict[str, float]:
    """Late reorientation of the cls token from its angular speed per step [L] (entry l-1: x_{l-1} -> x_l),
    on steps 2..L only: the first step leaves the cls token's constant embedding, the same for every image, and
    would bias both numbers (docs/science.md §6).

    Keys: 'late_early' (mean speed of the last (L-1)//2 of those steps over the first (L-1)//2; L >= 3 and a
    positive early mean) and 'peak_layer' (the layer l in 2..L whose step x_{l-1} -> x_l is the fastest;
    L >= 2). Keys that are undefined are left out."""
    steps = np.asarray(speed_cls, dtype=np.float64)[1:]
    out: dict[str, float] = {}
    if len(steps):
        out["peak_layer"] = float(np.argmax(steps) + 2)
    half = len(steps) // 2
    if half:
        early, late = steps[:half].mean(), steps[-half:].mean()
        if early > 0:
            out["late_early"] = float(late / early)
    return out


def swap_pairs(phase_bounds: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Adjacent layer pairs (l, l+1), l = 1..L-1, split into (intra, inter) phase.

    A pair is intra-phase when both layers lie in the same phase, inter-phase when it
    straddles a phase boundary (so there are exactly k-1 inter pairs).
    """
    labels = phase_labels(phase_bounds)
    intra, inter = [], []
    for layer in range(1, len(labels)):
        (intra if labels[layer - 1] == labels[layer] else inter).append((layer, layer + 1))
    return intra, inter
