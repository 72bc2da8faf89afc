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
def layer_swap_accuracy(
    blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    embed_states: Any,
    readout: Callable[[torch.Tensor], torch.Tensor],
    labels: Any,
    pairs: Sequence[tuple[int, int]],
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> dict[tuple[int, int], float]:
    """Accuracy of the teacher with blocks i and j (1-based) swapped, for each pair.

    `blocks` are the L teacher blocks (x -> x, [B, T, D]), `embed_states` x_0 [N, T, D],
    `readout(x_L)` gives logits [B, C], `labels` [N]. A pair (l, l) leaves the order
    unchanged and so gives the unswapped accuracy.
    """
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    results = {}
    for i, j in pairs:
        if not (1 <= i <= len(blocks) and 1 <= j <= len(blocks)):
            raise ValueError(f"layer pair {(i, j)} outside [1, {len(blocks)}]")
        order = list(blocks)
        order[i - 1], order[j - 1] = order[j - 1], order[i - 1]
        correct, start = 0, 0
        for x in iter_chunks(embed_states, chunk):
            x = x.to(device)
            for block in order:
                x = block(x)
            pred = readout(x).argmax(dim=-1).cpu().numpy()
            correct += int((pred == labels[start : start + len(pred)]).sum())
            start += len(pred)
        results[(i, j)] = correct / len(labels)
    return results


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
