"""The probe read-out (docs/science.md §5): linear probes on each model's own features (teacher, Raptor, and a
random Raptor as the floor) and the transfer of the teacher's cls probe to the Raptor."""

from __future__ import annotations

import torch

from study.config import TrialConfig
from study.contract import (
    ACC_AGREEMENT,
    ACC_FLOOR,
    ACC_FLOOR_DEEP,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TEACHER,
    ACC_TRANSFER,
    ACC_TRANSFER_RATIO,
    ACC_TRANSFER_TEACHER,
)
from study.science.fidelity import (
    FLOOR_DEEP_LAYERSCALE,
    own_probe_accuracy,
    probe_recovery,
    rollout_features,
    task_fidelity,
)
from study.science.raptor import Raptor
from study.trial.evaluation import EvalContext, Readout, ReadoutResult
from study.trial.teacher import Teacher


def floor_raptor(cfg: TrialConfig, teacher: Teacher, phase_bounds, **overrides) -> Raptor:
    """A randomly initialised Raptor of the trial's shape (the probe floor, docs/science.md §5), seeded by `cfg.seed`
    without touching the global RNG state; `overrides` replace further knobs (`Raptor.from_config`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Raptor.from_config(teacher.model, phase_bounds, cfg.raptor, **({"init": "random"} | overrides))


class Probes(Readout):
    """Task fidelity (docs/science.md §5): the paper's probe on each model's OWN features (acc.teacher, acc.raptor,
    acc.ratio, acc.floor, acc.floor_deep, acc.recovered) and the transfer of the teacher's cls probe to the Raptor
    (acc.transfer*, acc.agreement). The two floors are random Raptors with the same weights but their LayerScale
    gammas: the Raptor's init (1e-5) and 1 (`FLOOR_DEEP_LAYERSCALE`)."""

    name = "probes"

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        prepared, cfg, device, amp = ctx.prepared, ctx.cfg, ctx.device, ctx.cfg.runtime.amp
        y_train, y_test = prepared.labels["train"], prepared.labels["test"]
        width = prepared.teacher.width
        bounds = prepared.partition.phase_bounds
        floors = {  # the plain floor (LayerScale init: nearly the identity) and the deep floor (gammas 1)
            name: floor_raptor(cfg, prepared.teacher, bounds, **overrides).to(device)
            for name, overrides in (("floor", {}), ("floor_deep", {"layerscale_init": FLOOR_DEEP_LAYERSCALE}))
        }
        own = {"raptor": (ctx.raptor_features("train"), ctx.raptor_features("test"))} | {
            name: tuple(rollout_features(floor, prepared.states[split], device, amp) for split in ("train", "test"))
            for name, floor in floors.items()
        }
        # the transfer probe (the study's acc.ratio before docs/science.md §5 took the paper's protocol): the
        # teacher's probe on its cls readout, applied to the Raptor's cls readout
        acc_teacher, cls_probe = ctx.teacher_probe()
        raptor_test = own["raptor"][1]
        acc = {"teacher": acc_teacher} | {
            name: own_probe_accuracy(train, y_train, test, y_test, seed=cfg.seed) for name, (train, test) in own.items()
        }
        recovery = probe_recovery(acc["teacher"], acc["raptor"], acc["floor"])
        teacher_test = ctx.teacher_features("test")
        transfer = task_fidelity(cls_probe, teacher_test[:, :width].numpy(), raptor_test[:, :width].numpy(), y_test)
        return ReadoutResult(
            {
                ACC_TEACHER: acc["teacher"],
                ACC_RAPTOR: acc["raptor"],
                ACC_RATIO: recovery["ratio"],
                ACC_FLOOR: acc["floor"],
                ACC_FLOOR_DEEP: acc["floor_deep"],
                ACC_RECOVERED: recovery["recovered"],
                ACC_TRANSFER_TEACHER: transfer["acc_teacher"],
                ACC_TRANSFER: transfer["acc_raptor"],
                ACC_TRANSFER_RATIO: transfer["acc_ratio"],
                ACC_AGREEMENT: transfer["agreement"],
            }
        )
