"""`RayTrainWorkers`: the `DistillRunner` that runs a trial's distillation through Ray Train.

Two modes, one Ray Train code path (`TorchTrainer(...).fit()`):
- workers: the trial's driver (a Ray Tune trial) has already prepared the trial; `workers` Ray
  Train worker actors rebuild the teacher and load its cached states (cache hits), build the
  same seeded Raptor, and run both stages data-parallel (DDP; gloo on CPU, NCCL on GPU). Rank 0
  checkpoints as `runtime.checkpoint_*` say; Ray Train restarts failed workers from the last
  checkpoint. Per-epoch reports reach Tune through `TuneReportCallback`, so schedulers such as
  ASHA can stop a trial early.
- local (one worker): Ray Train's local mode (`ScalingConfig(num_workers=0)`) runs the same loop
  in the trial's own process on the prepared teacher and states: no controller and worker
  actors to start, no states to load again, nothing to ship back. Its resumable state goes to
  the trial folder (a retried trial resumes from it) and reports reach Tune directly. It is the
  default for single-worker trials (`resources.train_mode: auto`), measured in
  results/throughput/README.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from study.config import build_trial_config
from study.runtime import CheckpointPolicy, setup
from study.science.distill import run_distillation
from study.science.raptor import Raptor
from study.trial.distillation import OnEpoch, build_raptor, distill_job, distill_resumable
from study.trial.prepare import Prepared, teacher_and_states

STATE_FILE = "state.pt"


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: both distillation stages on its shard, a checkpoint per epoch (rank 0)."""
    timings = {"worker_entry_unix": time.time(), "report_s": 0.0, "checkpoint_s": 0.0}
    cfg = build_trial_config(config["trial"])
    setup(cfg.runtime)
    device = ray.train.torch.get_device()
    teacher, states, _ = teacher_and_states(cfg, device, splits=("train", "val"))
    timings["worker_setup_s"] = time.time() - timings["worker_entry_unix"]
    raptor = build_raptor(cfg, teacher, config["phase_bounds"])
    checkpoint = ray.train.get_checkpoint()
    resume = None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    rank = ray.train.get_context().get_world_rank()

    policy = CheckpointPolicy(cfg.runtime, cfg.distill)

    def report(record: dict, state_fn) -> None:
        t0 = time.perf_counter()
        if rank != 0 or not policy.due(record):
            ray.train.report(record)
            timings["report_s"] += time.perf_counter() - t0
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state_fn(), Path(folder) / STATE_FILE)
            ray.train.report(record, checkpoint=Checkpoint.from_directory(folder))
        timings["checkpoint_s"] += time.perf_counter() - t0

    run_distillation(distill_job(cfg, raptor, states, teacher.num_registers, device, resume, on_epoch=report))
    timings["worker_exit_unix"] = time.time()
    if rank == 0 and config.get("timings_file"):  # what the driver cannot see: the worker's own stages
        Path(config["timings_file"]).write_text(json.dumps(timings))


class RayTrainWorkers:
    """Distil on `workers` Ray Train workers, each holding `worker_cpu` CPUs and `worker_gpu` GPUs.

    With `report_to_tune` (inside a Tune trial) every epoch's record also reaches Tune."""

    LOCAL_STATE = "train_state"  # local mode: folder in the trial's out_dir holding the resumable state

    def __init__(
        self,
        name: str,
        storage_path: Path,
        workers: int = 1,
        worker_cpu: float = 1.0,
        worker_gpu: float = 0.0,
        max_failures: int = 3,
        report_to_tune: bool = False,
        local: bool = False,
    ):
        if local and workers != 1:
            raise ValueError(f"RayTrainWorkers: local mode runs one worker, got workers={workers}")
        self.name, self.storage_path, self.report_to_tune, self.local = name, storage_path, report_to_tune, local
        self.workers, self.worker_cpu, self.worker_gpu = workers, worker_cpu, worker_gpu
        self.max_failures = max_failures

    def distill(self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None = None) -> tuple[Raptor, list[dict]]:
        if self.local:
            return self._distill_local(prepared, out_dir, on_epoch)
        cfg = prepared.cfg
        timings_file = out_dir / "train_timings.json"
        fit_unix = time.time()
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={
                "trial": cfg.to_dict(),
                "phase_bounds": prepared.partition.phase_bounds,
                "timings_file": str(timings_file),
            },
            scaling_config=ScalingConfig(
                num_workers=self.workers,
                use_gpu=self.worker_gpu > 0,
                resources_per_worker={"CPU": self.worker_cpu, "GPU": self.worker_gpu},
            ),
            run_config=TrainRunConfig(
                name=self.name,
                storage_path=str(self.storage_path),
                failure_config=FailureConfig(max_failures=self.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                callbacks=[TuneReportCallback()] if self.report_to_tune else [],
            ),
        )
        result = trainer.fit()
        _merge_worker_timings(prepared.timings, timings_file, fit_unix)
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

    def _distill_local(self, prepared: Prepared, out_dir: Path, on_epoch: OnEpoch | None) -> tuple[Raptor, list[dict]]:
        """Ray Train local mode: the training function runs here, on the prepared teacher and states."""
        timings = prepared.timings
        state_dir = out_dir / self.LOCAL_STATE
        state_path = state_dir / STATE_FILE
        out: dict[str, Any] = {}

        def train_fn() -> None:
            def after(record: dict, saved: bool) -> None:
                t0 = time.perf_counter()
                if self.report_to_tune:  # inside a Tune trial Ray routes reports through Tune's API (the state
                    from ray import tune  # file is what a retried trial resumes from)

                    tune.report(record)
                else:
                    checkpoint = Checkpoint.from_directory(str(state_dir)) if saved else None
                    ray.train.report(record, checkpoint=checkpoint)
                key = "checkpoint_s" if saved else "report_s"  # a saved epoch's write is already in checkpoint_s
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
                if on_epoch:
                    on_epoch(record)

            out["raptor"], out["history"] = distill_resumable(prepared, state_path, after)

        TorchTrainer(
            train_fn,
            scaling_config=ScalingConfig(num_workers=0),
            run_config=TrainRunConfig(name=self.name, storage_path=str(self.storage_path)),
        ).fit()
        return out["raptor"], out["history"]

    def cleanup(self, out_dir: Path) -> None:
        """The trial is complete: its resumable local-mode state is no longer needed."""
        shutil.rmtree(out_dir / self.LOCAL_STATE, ignore_errors=True)


def _merge_worker_timings(timings: dict[str, float], path: Path, fit_unix: float) -> None:
    """Add the rank-0 worker's stage times to the trial's: Train group start (fit() to the worker's first
    line), worker setup (teacher + states), per-epoch reports and checkpoints, and group teardown (its last
    line to fit() returning)."""
    if not path.is_file():
        return
    worker = json.loads(path.read_text())
    path.unlink()
    timings["train_start_s"] = worker["worker_entry_unix"] - fit_unix
    timings["train_end_s"] = time.time() - worker["worker_exit_unix"]
    for key in ("worker_setup_s", "report_s", "checkpoint_s"):
        timings[key] = timings.get(key, 0.0) + worker[key]
