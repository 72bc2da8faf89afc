"""Per-trial dynamics of teacher and Raptor (docs/science.md §6): summary metrics + full curves.

`trial_dynamics` runs the pure read-outs of `study.science.dynamics` on a subsample of the
test split: teacher states come from the activation cache, Raptor states from
`raptor.rollout(x_0)` on the same x_0 (float32, no autocast). `adjacent_swaps` measures
layer swaps on the teacher only, through the teacher's head (`swap_readout`: its own head or,
for a headless teacher, its linear probe) on the accuracy subset that the layer replacement
also uses (study/trial/measures.py). The evaluation runs them as the read-outs 'dynamics' and
'swaps' (study/trial/readouts.py).

Summary metric names (flat, logged to MLflow with the trial's other metrics), with
m in {teacher, raptor} and L the depth:
    dyn.m.gamma_cls_mid, dyn.m.gamma_patch_mid   gamma_l = cos(u_l, u_L) at l = L // 2
    dyn.m.speed_cls_mean, dyn.m.speed_patch_mean (dyn.m.speed_reg_mean with registers)
                                                 mean angle per step, radians
    dyn.m.speed_cls_late_early                   cls speed on steps 2..L (x_0 -> x_1 left out), mean of
                                                 the last (L-1)//2 steps over the first (L-1)//2
                                                 (> 1: late reorientation; L >= 3)
    dyn.m.speed_cls_peak_layer                   the layer l in 2..L whose step x_{l-1} -> x_l turns the
                                                 cls token fastest (L >= 2)
    dyn.m.coherence_final                        patch coherence at x_L
    dyn.m.srank_first, dyn.m.srank_last          stable rank of U_1 = x_1 - x_0 and U_L
    dyn.m.recovery_last                          angle(x'_L, x_L) / angle(x'_l, x_l) after perturbing x_l
                                                 (angular, docs/science.md §6; < 1: it bends back)
    dyn.swap.baseline_acc                        teacher accuracy, unswapped (the accuracy subset)
    dyn.swap.intra_acc_mean, dyn.swap.inter_acc_mean
                                                 mean accuracy over adjacent swaps inside a
                                                 phase / across a phase boundary
Metrics that are undefined for a trial (no inter pairs when k = 1, ...) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from study.config import DynamicsConfig
from study.contract import SWAP_BASELINE, dynamics_metric, swap_metric
from study.science.dynamics import (
    angular_speed,
    cls_speed_summary,
    directional_convergence,
    layer_swap_accuracy,
    patch_coherence,
    perturbation_recovery,
    swap_pairs,
    update_stable_rank,
)
from study.science.head import TeacherHead
from study.science.raptor import Raptor

Logits = Callable[[torch.Tensor], torch.Tensor]
"""x_L [B, T, D] -> class logits [B, C] (`swap_readout`)."""


def rollout_chunk(device: torch.device | str) -> int:
    """Samples per forward pass in the perturbation roll-outs and layer swaps: 64 on CPU; 512 on a GPU,
    where fewer, larger passes mean fewer kernel launches and host syncs (a small saving: these passes
    take 0.01-0.1 s of a study trial on an H200, results/throughput/dynamics_time_h200.log). Beyond rounding
    the chunk changes one thing: the perturbation noise is drawn chunk by chunk, which gives the same
    draw as one call when a sample holds a multiple of 16 values (T x D; 50 x 192 and 257 x 384 do)."""
    return 512 if torch.device(device).type == "cuda" else 64


def swap_readout(model: VisionTransformer, probe: Any = None) -> Logits:
    """x_L [B, T, D] -> logits through the teacher's head (`study.science.head.TeacherHead`): its own head if it has
    classes, else `probe`, a linear probe fitted on its pooled features (`head_input`; for a cls-token teacher the
    final-norm cls token, e.g. `study.science.fidelity.fit_linear_probe`)."""
    return TeacherHead(model, probe).to(next(model.parameters()).device)


def teacher_layers(model: VisionTransformer) -> Callable[[torch.Tensor, int, int], Iterator[torch.Tensor]]:
    """`run_layers` of the teacher (study.science.dynamics.RunLayers): x_start -> x_{start+1}, ..., x_stop."""

    def run(x: torch.Tensor, start: int, stop: int) -> Iterator[torch.Tensor]:
        for block in model.blocks[start:stop]:
            x = block(x)
            yield x

    return run


def _raptor_layers(raptor: Raptor) -> Callable[[torch.Tensor, int, int], Iterator[torch.Tensor]]:
    def run(x: torch.Tensor, start: int, stop: int) -> Iterator[torch.Tensor]:
        scales = raptor.cond()
        for layer in range(start + 1, stop + 1):
            x = raptor.step(x, layer, scales)
            yield x

    return run


@torch.no_grad()
def raptor_states(raptor: Raptor, x0: np.ndarray, device: torch.device | str, chunk: int = 128) -> np.ndarray:
    """The Raptor's trajectory from the teacher's x_0 [N, T, D]: [N, L+1, T, D] float32 (x_0 included)."""
    out = []
    for start in range(0, len(x0), chunk):
        x = torch.from_numpy(np.array(x0[start : start + chunk], dtype=np.float32)).to(device)
        out.append(torch.cat([x[:, None], raptor.rollout(x).float()], dim=1).cpu().numpy())
    return np.concatenate(out)


def _curves(
    states: np.ndarray,
    run_layers,
    num_registers: int,
    perturb_layer: int,
    eps: float,
    seed: int,
    device: torch.device | str,
) -> dict[str, list[float]]:
    states = torch.from_numpy(states).to(device)  # once: every read-out below runs where the models are
    gamma = directional_convergence(states, num_registers)
    speed = angular_speed(states, num_registers)
    curves = {
        "gamma_cls": gamma["cls"],
        "gamma_patch": gamma["patch"],
        **{f"speed_{group}": values for group, values in speed.items()},
        "coherence": patch_coherence(states, num_registers),
        "stable_rank": update_stable_rank(states),
        "recovery": perturbation_recovery(
            run_layers, states, perturb_layer, eps, seed, chunk=rollout_chunk(device), device=device
        ),
    }
    return {name: [float(v) for v in values] for name, values in curves.items()}


def _summary(model: str, curves: dict[str, list[float]]) -> dict[str, float]:
    """Summary metrics of one model's curves, named ``dyn.{model}.*`` (`study.contract.dynamics_metric`)."""
    num_layers = len(curves["speed_cls"])
    mid = num_layers // 2
    out = {"gamma_cls_mid": curves["gamma_cls"][mid], "gamma_patch_mid": curves["gamma_patch"][mid]}
    for group in ("cls", "patch", "reg"):
        if f"speed_{group}" in curves:
            out[f"speed_{group}_mean"] = float(np.mean(curves[f"speed_{group}"]))
    out.update({f"speed_cls_{key}": value for key, value in cls_speed_summary(curves["speed_cls"]).items()})
    out["coherence_final"] = curves["coherence"][-1]
    out["srank_first"], out["srank_last"] = curves["stable_rank"][0], curves["stable_rank"][-1]
    out["recovery_last"] = curves["recovery"][-1]
    return {dynamics_metric(model, name): float(value) for name, value in out.items()}


@torch.no_grad()
def trial_dynamics(
    teacher_model: VisionTransformer,
    raptor: Raptor,
    test_states: Any,
    num_registers: int,
    cfg: DynamicsConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict]:
    """Dynamics of teacher and Raptor on the first `cfg.num_samples` test samples.

    `test_states` [N, L+1, T, D] (teacher, e.g. the cache memmap). Returns (summary metrics named `dyn.*`, curves for
    result.json: {'teacher': {...}, 'raptor': {...}, 'num_samples', 'perturb_layer', 'eps'}; per-model curves
    gamma_cls/gamma_patch/coherence [L+1], speed_*/stable_rank [L], recovery [L - perturb_layer] for layers
    perturb_layer+1..L).
    """
    n = min(cfg.num_samples, len(test_states))
    teacher = np.array(test_states[:n], dtype=np.float32)
    num_layers = teacher.shape[1] - 1
    layer = min(num_layers // 2 if cfg.perturb_layer is None else cfg.perturb_layer, num_layers - 1)
    was_training = raptor.training
    raptor.eval()
    try:
        student = raptor_states(raptor, teacher[:, 0], device)
        curves: dict[str, Any] = {"num_samples": n, "perturb_layer": layer, "eps": cfg.eps}
        curves["teacher"] = _curves(teacher, teacher_layers(teacher_model), num_registers, layer, cfg.eps, seed, device)
        curves["raptor"] = _curves(student, _raptor_layers(raptor), num_registers, layer, cfg.eps, seed, device)
    finally:
        raptor.train(was_training)
    return {**_summary("teacher", curves["teacher"]), **_summary("raptor", curves["raptor"])}, curves


@torch.no_grad()
def adjacent_swaps(
    teacher_model: VisionTransformer,
    x0: Any,
    labels: Any,
    readout: Logits,
    phase_bounds: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict]:
    """Teacher accuracy with adjacent layers swapped (docs/science.md §6), on the test images of `x0`.

    `x0` [N, T, D] the teacher's embedded tokens (the accuracy subset), `labels` [N], `readout(x_L)` -> logits
    (`swap_readout`). Returns (metrics ``dyn.swap.*``, the record {'baseline_acc', 'num_images', 'intra':
    [[i, j, acc], ...], 'inter': [...]}); ({}, {}) when the teacher has a single layer."""
    if len(teacher_model.blocks) < 2:
        return {}, {}
    intra, inter = swap_pairs(phase_bounds)
    acc = layer_swap_accuracy(
        list(teacher_model.blocks),
        x0,
        readout,
        np.asarray(labels),
        [(1, 1), *intra, *inter],
        chunk=rollout_chunk(device),
        device=device,
    )
    record = {
        "baseline_acc": acc[(1, 1)],
        "num_images": len(labels),
        "intra": [[i, j, acc[(i, j)]] for i, j in intra],
        "inter": [[i, j, acc[(i, j)]] for i, j in inter],
    }
    metrics = {SWAP_BASELINE: float(acc[(1, 1)])}
    for kind, pairs in (("intra", intra), ("inter", inter)):
        if pairs:
            metrics[swap_metric(kind)] = float(np.mean([acc[p] for p in pairs]))
    return metrics, record
