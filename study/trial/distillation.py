"""Where a trial's distillation runs: the `DistillRunner` strategy, its in-process runner, and the one builder of a
trial's `DistillJob` that every runner hands to `study.science.distill.run_distillation`.

`InProcess` trains the Raptor in the calling process; `study.sweep.raytrain.RayTrainWorkers` trains it on Ray Train
workers (DDP). Both build the same seeded Raptor (`build_raptor`) and the same job (`distill_job`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

import study.trial.cache as cache
from study.config import TrialConfig
from study.runtime import CheckpointPolicy, seed_everything
from study.science.distill import DistillJob, OnEpochState, run_distillation
from study.science.raptor import Raptor
from study.trial.prepare import Prepared
from study.trial.teacher import Teacher

OnEpoch = Callable[[dict], None]


def build_raptor(cfg: TrialConfig, teacher: Teacher, phase_bounds: Sequence[Sequence[int]]) -> Raptor:
    """The trial's Raptor at init (`Raptor.from_config`), seeded by `cfg.seed` (the global RNGs are reseeded)."""
    seed_everything(cfg.seed)
    return Raptor.from_config(teacher.model, phase_bounds, cfg.raptor)


def distill_job(
    cfg: TrialConfig,
    raptor: Raptor,
    states: dict[str, np.ndarray],
    num_registers: int,
    device: torch.device,
    resume: dict | None = None,
    on_epoch: OnEpochState | None = None,
) -> DistillJob:
    """The trial's distillation job: `raptor` on the train / val states, the trial's distill and runtime config and
    seed."""
    train, val = states["train"], states["val"]
    return DistillJob(raptor, train, val, cfg.distill, cfg.runtime, device, num_registers, cfg.seed, resume, on_epoch)


class DistillRunner(Protocol):
    """Where a trial's two distillation stages execute. Returns the trained Raptor and per-epoch records."""

    def distill(
        self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None
    ) -> tuple[Raptor, list[dict]]: ...


def distill_resumable(
    prepared: Prepared, state_path: Path, after: Callable[[dict, bool], None] | None = None
) -> tuple[Raptor, list[dict]]:
    """Distil the trial's seeded Raptor here, resuming from `state_path` when it exists.

    After every epoch the resumable state goes to `state_path` when the checkpoint policy (`runtime.checkpoint_*`)
    says so (time added to `timings['checkpoint_s']`), then `after(record, saved)` runs. Both in-process runners
    (`InProcess`, and Ray Train's local mode in `study.sweep.raytrain`) distil through this."""
    cfg = prepared.cfg
    raptor = build_raptor(cfg, prepared.teacher, prepared.partition.phase_bounds)
    resume = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.is_file() else None
    policy = CheckpointPolicy(cfg.runtime, cfg.distill)

    def on_epoch(record: dict, state_fn) -> None:
        saved = policy.due(record)
        if saved:
            t0 = time.perf_counter()
            state = state_fn()
            cache.atomic_write(state_path, lambda tmp: torch.save(state, tmp))
            prepared.timings["checkpoint_s"] = prepared.timings.get("checkpoint_s", 0.0) + time.perf_counter() - t0
        if after:
            after(record, saved)

    job = distill_job(cfg, raptor, prepared.states, prepared.teacher.num_registers, prepared.device, resume, on_epoch)
    return raptor, run_distillation(job)


class InProcess:
    """Distil in this process; resumable from `out_dir/distill_state.pt`, written as `runtime.checkpoint_*` say."""

    STATE_FILE = "distill_state.pt"

    def distill(self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None) -> tuple[Raptor, list[dict]]:
        after = (lambda record, saved: on_epoch(record)) if on_epoch else None
        return distill_resumable(prepared, out_dir / self.STATE_FILE, after)

    def cleanup(self, out_dir: Path) -> None:
        (out_dir / self.STATE_FILE).unlink(missing_ok=True)
