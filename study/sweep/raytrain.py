"""`RayTrainWorkers`: the `DistillRunner` that runs a trial's distillation on Ray Train workers.

The trial's driver (a Ray Tune trial) has already prepared the trial; the
workers rebuild the teacher and load its cached states (cache hits), build the
same seeded Raptor, and run both stages data-parallel (DDP; gloo on CPU, NCCL
on GPU). Rank 0 checkpoints every epoch; Ray Train restarts failed workers from
the last checkpoint. Per-epoch reports reach Tune through `TuneReportCallback`,
so schedulers such as ASHA can stop a trial early.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from study.config import build_trial_config
from study.runtime import setup
from study.science.distill import run_distillation
from study.science.raptor import Raptor
from study.trial.pipeline import OnEpoch, Prepared, build_raptor, teacher_and_states

STATE_FILE = "state.pt"


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: both distillation stages on its shard, a checkpoint per epoch (rank 0)."""
    cfg = build_trial_config(config["trial"])
    setup(cfg.runtime)
    device = ray.train.torch.get_device()
    teacher, states, _ = teacher_and_states(cfg, device, splits=("train", "val"))
    raptor = build_raptor(cfg, teacher, config["phase_bounds"])
    checkpoint = ray.train.get_checkpoint()
    resume = None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    rank = ray.train.get_context().get_world_rank()

    def report(record: dict, state_fn) -> None:
        if rank != 0:
            ray.train.report(record)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state_fn(), Path(folder) / STATE_FILE)
            ray.train.report(record, checkpoint=Checkpoint.from_directory(folder))

    run_distillation(raptor, states["train"], states["val"], cfg.distill, cfg.runtime, device, teacher.num_registers,
                     cfg.seed, resume=resume, on_epoch=report)


class RayTrainWorkers:
    """Distil on `workers` Ray Train workers, each holding `worker_cpu` CPUs and `worker_gpu` GPUs.

    With `report_to_tune` (inside a Tune trial) every epoch's record also reaches Tune."""

    def __init__(self, name: str, storage_path: Path, workers: int = 1, worker_cpu: float = 1.0,
                 worker_gpu: float = 0.0, max_failures: int = 3, report_to_tune: bool = False):
        self.name, self.storage_path, self.report_to_tune = name, storage_path, report_to_tune
        self.workers, self.worker_cpu, self.worker_gpu, self.max_failures = workers, worker_cpu, worker_gpu, max_failures

    def distill(self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None) -> tuple[Raptor, list[dict]]:
        cfg = prepared.cfg
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"trial": cfg.to_dict(), "phase_bounds": prepared.partition.phase_bounds},
            scaling_config=ScalingConfig(num_workers=self.workers, use_gpu=self.worker_gpu > 0,
                                         resources_per_worker={"CPU": self.worker_cpu, "GPU": self.worker_gpu}),
            run_config=TrainRunConfig(name=self.name, storage_path=str(self.storage_path),
                                      failure_config=FailureConfig(max_failures=self.max_failures),
                                      checkpoint_config=CheckpointConfig(num_to_keep=1),
                                      callbacks=[TuneReportCallback()] if self.report_to_tune else []),
        )
        result = trainer.fit()
        raptor = build_raptor(cfg, prepared.teacher, prepared.partition.phase_bounds).to(prepared.device)
        history: list[dict] = []
        if result.checkpoint:
            with result.checkpoint.as_directory() as folder:
                state = torch.load(Path(folder) / STATE_FILE, map_location=prepared.device, weights_only=False)
            raptor.load_state_dict(state["raptor"])
            history = state["history"]
        if on_epoch:
            for record in history:
                on_epoch(record)
        return raptor, history

