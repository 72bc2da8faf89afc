"""Two-stage distillation of a Raptor from cached teacher states (SPEC section 4).

Stage 1 (per block): each phase starts from the teacher's state at its input;
the input to step l is lambda_tf * x_{l-1} + (1 - lambda_tf) * xhat_{l-1}
(teacher forcing mixed with the block's own rollout), lambda_tf annealed
linearly from `tf_start` to 0 over the first `anneal` fraction of stage-1
steps. Phases start from teacher states, so the stage-1 loss is a sum of
independent per-block terms and all blocks are trained in one pass.
Stage 2 (whole chain): pure autoregressive rollout from x_0 over all L layers.

The loop is data-parallel ready: inside an initialised torch.distributed
process group (Ray Train workers) each rank takes a shard of every epoch and
the objective is wrapped in DistributedDataParallel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import DistillConfig, RuntimeConfig, StageConfig
from .metrics import FidelityAccumulator
from .raptor import Raptor
from .runtime import adamw, autocast, progress_bar, warmup_cosine


def teacher_forcing_weight(step: int, total_steps: int, anneal: float, start: float = 0.5) -> float:
    """lambda_tf at a stage-1 step: `start` at step 0, linearly to 0 at anneal*total_steps, 0 after."""
    horizon = anneal * total_steps
    if horizon <= 0:
        return 0.0
    return start * max(0.0, 1.0 - step / horizon)


@dataclass(frozen=True)
class GroupWeights:
    """Loss weights of the token groups: cls (index 0), registers (1..R), patches (rest)."""

    cls: float
    reg: float
    patch: float
    num_registers: int

    @classmethod
    def of(cls, stage: StageConfig, num_registers: int) -> "GroupWeights":
        return cls(stage.lambda_cls, stage.lambda_reg, stage.lambda_patch, num_registers)

    def mse(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted per-group MSE of [B, T, D] tensors -> scalar."""
        sq = (pred.float() - target.float()).pow(2)
        r = self.num_registers
        loss = self.cls * sq[:, 0].mean() + self.patch * sq[:, 1 + r:].mean()
        if r:
            loss = loss + self.reg * sq[:, 1:1 + r].mean()
        return loss


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Add Gaussian noise of `sigma` times each token's RMS."""
    if sigma <= 0:
        return x
    rms = x.float().pow(2).mean(-1, keepdim=True).sqrt().to(x.dtype)
    return x + sigma * rms * torch.randn_like(x)


class Stage1Objective(nn.Module):
    """Per-phase rollouts with teacher-forcing mixture; forward(states [B, L+1, T, D], lambda_tf) -> loss."""

    def __init__(self, raptor: Raptor, weights: GroupWeights, noise_sigma: float):
        super().__init__()
        self.raptor, self.weights, self.noise_sigma = raptor, weights, noise_sigma

    def forward(self, states: torch.Tensor, lambda_tf: float) -> torch.Tensor:
        scales = self.raptor.cond()
        loss = states.new_zeros((), dtype=torch.float32)
        for first, last in self.raptor.phase_bounds:
            own = states[:, first - 1]
            for layer in range(first, last + 1):
                teacher_in = states[:, layer - 1]
                mixed = teacher_in if layer == first else lambda_tf * teacher_in + (1.0 - lambda_tf) * own
                own = self.raptor.step(_noisy(mixed, self.noise_sigma), layer, scales)
                loss = loss + self.weights.mse(own, states[:, layer])
        return loss / self.raptor.num_layers


class Stage2Objective(nn.Module):
    """Full autoregressive rollout from x_0; forward(states [B, L+1, T, D]) -> loss over all L layers."""

    def __init__(self, raptor: Raptor, weights: GroupWeights, noise_sigma: float):
        super().__init__()
        self.raptor, self.weights, self.noise_sigma = raptor, weights, noise_sigma

    def forward(self, states: torch.Tensor, lambda_tf: float = 0.0) -> torch.Tensor:
        scales = self.raptor.cond()
        x = _noisy(states[:, 0], self.noise_sigma)
        loss = states.new_zeros((), dtype=torch.float32)
        for layer in range(1, self.raptor.num_layers + 1):
            x = self.raptor.step(x, layer, scales)
            loss = loss + self.weights.mse(x, states[:, layer])
        return loss / self.raptor.num_layers


class StateBatches:
    """Batches of teacher states [B, L+1, T, D] from an array of [N, L+1, T, D].

    The whole array is moved to the device once when it fits under `device_budget`
    bytes (no host traffic in the step loop); otherwise batches stream from the
    (memory-mapped) array through pinned host memory with non-blocking copies.
    """

    def __init__(self, states: np.ndarray, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 device_budget: int | None = None):
        self.states, self.batch_size, self.device = states, batch_size, device
        self.rank, self.world_size = rank, world_size
        budget = device_budget if device_budget is not None else _default_budget(device)
        self.resident = torch.from_numpy(np.array(states)).to(device) if states.nbytes <= budget else None

    def __len__(self) -> int:
        per_rank = len(self.states) // self.world_size
        return max(1, per_rank // self.batch_size)

    def epoch(self, epoch: int, seed: int):
        order = torch.randperm(len(self.states), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        shard = order[self.rank::self.world_size]
        for i in range(len(self)):
            idx = shard[i * self.batch_size:(i + 1) * self.batch_size]
            if self.resident is not None:
                yield self.resident[idx.to(self.device)]
            else:
                host = torch.from_numpy(self.states[np.sort(idx.numpy())])
                if self.device.type == "cuda":
                    host = host.pin_memory()
                yield host.to(self.device, non_blocking=True)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 8 << 30  # host RAM: load up to 8 GiB, else stream from the memmap


@torch.no_grad()
def evaluate_fidelity(raptor: Raptor, states: np.ndarray, num_registers: int, device: torch.device, amp: bool,
                      batch_size: int = 256) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Rollout from x_0 on held-out states -> (R^2 per group [L], Raptor readout features [N, D])."""
    raptor.eval()
    acc = FidelityAccumulator(raptor.num_layers, num_registers)
    feats = []
    for start in range(0, len(states), batch_size):
        batch = torch.from_numpy(np.array(states[start:start + batch_size])).to(device).float()
        with autocast(device, amp):
            pred = raptor.rollout(batch[:, 0])
        acc.update(pred.float(), batch[:, 1:])
        feats.append(raptor.features(pred[:, -1].float()).cpu())
    return acc.compute(), torch.cat(feats)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def run_distillation(raptor: Raptor, train_states: np.ndarray, val_states: np.ndarray, cfg: DistillConfig,
                     runtime: RuntimeConfig, device: torch.device, num_registers: int, seed: int,
                     resume: dict | None = None, on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None) -> list[dict]:
    """Train `raptor` with stage 1 then stage 2; returns the per-epoch history.

    Each history record: {'stage', 'epoch', 'loss', 'lambda_tf', 'val_r2'} (val_r2: final-layer
    R^2 of all tokens on the val split). After every epoch `on_epoch(record, state_fn)` is
    called; `state_fn()` returns a resumable state dict (pass it back as `resume`).
    """
    rank = dist.get_rank() if _is_distributed() else 0
    world = dist.get_world_size() if _is_distributed() else 1
    raptor.to(device)
    batches = StateBatches(train_states, cfg.batch_size, device, rank, world)
    history: list[dict] = list(resume["history"]) if resume else []
    done = {(r["stage"], r["epoch"]) for r in history}
    stages = [(1, cfg.stage1, Stage1Objective), (2, cfg.stage2, Stage2Objective)]
    with progress_bar(runtime.progress and rank == 0) as bar:
        for stage_id, stage, objective_cls in stages:
            if not stage.enabled or stage.epochs == 0:
                continue
            objective: nn.Module = objective_cls(raptor, GroupWeights.of(stage, num_registers), cfg.noise_sigma)
            if world > 1:
                objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
            params = [p for p in raptor.parameters() if p.requires_grad]
            optimizer = adamw(params, stage.lr, stage.weight_decay, device, runtime.fused_adamw)
            total = stage.epochs * len(batches)
            scheduler = warmup_cosine(optimizer, total, int(stage.warmup_fraction * total))
            step_fn = torch.compile(objective) if runtime.compile else objective
            first_epoch = 0
            if resume and resume.get("stage") == stage_id:
                raptor.load_state_dict(resume["raptor"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                first_epoch = resume["epoch"] + 1
                resume = None  # consumed (cleared here, not after stage 1: a stage-2 resume must survive it)
            task = bar.add_task(f"stage {stage_id}", total=stage.epochs, completed=first_epoch, info="")
            for epoch in range(first_epoch, stage.epochs):
                if (stage_id, epoch) in done:
                    continue
                raptor.train()
                loss_sum = torch.zeros((), device=device)
                lam = 0.0
                for i, batch in enumerate(batches.epoch(epoch, seed + stage_id)):
                    step = epoch * len(batches) + i
                    lam = teacher_forcing_weight(step, total, cfg.anneal, cfg.tf_start) if stage_id == 1 else 0.0
                    with autocast(device, runtime.amp):
                        loss = step_fn(batch.float() if batch.dtype == torch.float16 else batch, lam)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach()
                if world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                r2, _ = evaluate_fidelity(raptor, val_states, num_registers, device, runtime.amp)
                record = {"stage": stage_id, "epoch": epoch, "loss": float(loss_sum) / len(batches),
                          "lambda_tf": lam, "val_r2": float(r2["all"][-1])}
                history.append(record)
                bar.update(task, advance=1, info=f"loss {record['loss']:.3e} val_r2 {record['val_r2']:.3f}")
                if on_epoch:
                    on_epoch(record, lambda: {"stage": stage_id, "epoch": epoch, "history": list(history),
                                              "raptor": raptor.state_dict(), "optimizer": optimizer.state_dict(),
                                              "scheduler": scheduler.state_dict()})
    return history
