"""Two-stage distillation of a Raptor from cached teacher states (docs/science.md §4).

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

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from study.config import DistillConfig, RuntimeConfig, StageConfig
from study.science.fidelity import FidelityAccumulator
from study.science.raptor import Raptor, conditioned_block
from study.runtime import (CudaGraphStep, adamw, autocast, progress_bar, set_fused_attn, step_flops, use_compile, use_graphs,
                      warmup_cosine)


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
        """Weighted per-group MSE of [B, T, D] tensors -> scalar:
        cls * mean(sq[:, 0]) + reg * mean(sq[:, 1:1+R]) (if R) + patch * mean(sq[:, 1+R:]).

        Computed as one per-token-weighted sum (no slicing), so its backward is a single
        elementwise kernel rather than one zero-filled slice gradient per group."""
        batch, tokens, width = pred.shape
        r = self.num_registers
        t = torch.arange(tokens, device=pred.device)
        weight = torch.where(t == 0, self.cls, torch.where(t <= r, self.reg / max(1, r), self.patch / max(1, tokens - 1 - r)))
        sq = (pred.float() - target.float()).pow(2)
        return (sq.sum(dim=(0, 2)) * weight).sum() / (batch * width)


def layer_loss(block: nn.Module, x: torch.Tensor, scales: torch.Tensor, target: torch.Tensor,
               weights: GroupWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """One Raptor step and its loss: (xhat_l = block(x_{l-1}) [B, T, D], weighted MSE to x_l)."""
    pred = conditioned_block(block, x, scales)
    return pred, weights.mse(pred, target)


_COMPILED: dict[str, Callable] = {}


def compiled_layer_loss() -> Callable:
    """`layer_loss` under torch.compile (regional compilation, static shapes).

    Every layer and every block runs the same code on the same shapes, so it compiles once
    per (stage weights, batch shape, dtype) and is reused by all L steps and all k blocks;
    fusing the step's elementwise work with its loss is where compile pays."""
    if "layer_loss" not in _COMPILED:
        # a long-lived process (a sweep worker) meets several shapes / precisions; keep compiling
        # past dynamo's default of 8 graphs per function rather than silently falling back to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED["layer_loss"] = torch.compile(layer_loss, dynamic=False)
    return _COMPILED["layer_loss"]


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Add Gaussian noise of `sigma` times each token's RMS."""
    if sigma <= 0:
        return x
    rms = x.float().pow(2).mean(-1, keepdim=True).sqrt().to(x.dtype)
    return x + sigma * rms * torch.randn_like(x)


class _Objective(nn.Module):
    def __init__(self, raptor: Raptor, weights: GroupWeights, noise_sigma: float, compile: bool = False):
        super().__init__()
        self.raptor, self.weights, self.noise_sigma, self.compile = raptor, weights, noise_sigma, compile

    def _layer(self, x: torch.Tensor, layer: int, scales: torch.Tensor, target: torch.Tensor):
        """(xhat_layer, loss_layer); the compiled region only when training (grad on)."""
        block = self.raptor.blocks[self.raptor.block_of_layer[layer - 1]]
        if self.compile and torch.is_grad_enabled():
            # contiguous: a phase's first input is a strided view of the states, later ones are not;
            # one layout means one compiled graph (static shapes guard on strides)
            return compiled_layer_loss()(block, x.contiguous(), scales[layer - 1], target, self.weights)
        return layer_loss(block, x, scales[layer - 1], target, self.weights)


class Stage1Objective(_Objective):
    """Per-phase rollouts with teacher-forcing mixture; forward(states [B, L+1, T, D], lambda_tf) -> loss.

    `compile=True` runs each step + loss through the compiled region (see `compiled_layer_loss`)."""

    def forward(self, states: torch.Tensor, lambda_tf: float) -> torch.Tensor:
        scales = self.raptor.cond()
        loss = states.new_zeros((), dtype=torch.float32)
        for first, last in self.raptor.phase_bounds:
            own = states[:, first - 1]
            for layer in range(first, last + 1):
                teacher_in = states[:, layer - 1]
                mixed = teacher_in if layer == first else lambda_tf * teacher_in + (1.0 - lambda_tf) * own
                own, term = self._layer(_noisy(mixed, self.noise_sigma), layer, scales, states[:, layer])
                loss = loss + term
        return loss / self.raptor.num_layers


class Stage2Objective(_Objective):
    """Full autoregressive rollout from x_0; forward(states [B, L+1, T, D]) -> loss over all L layers.

    `compile=True` runs each step + loss through the compiled region (see `compiled_layer_loss`)."""

    def forward(self, states: torch.Tensor, lambda_tf: float = 0.0) -> torch.Tensor:
        scales = self.raptor.cond()
        x = _noisy(states[:, 0], self.noise_sigma)
        loss = states.new_zeros((), dtype=torch.float32)
        for layer in range(1, self.raptor.num_layers + 1):
            x, term = self._layer(x, layer, scales, states[:, layer])
            loss = loss + term
        return loss / self.raptor.num_layers


class StateBatches:
    """Batches of teacher states [B, L+1, T, D] from an array of [N, L+1, T, D].

    The whole array is moved to the device once when it fits under `device_budget`
    bytes (no host traffic in the step loop: the epoch's order goes to the device once
    and batches are gathered there); otherwise batches stream from the (memory-mapped)
    array through pinned host memory with non-blocking copies, the next batch read by a
    background thread while the current one trains.
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

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        host = torch.from_numpy(self.states[np.sort(idx.numpy())])
        return host.pin_memory() if self.device.type == "cuda" else host

    def epoch(self, epoch: int, seed: int):
        order = torch.randperm(len(self.states), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        shard = order[self.rank::self.world_size]
        chunks = [shard[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]
        if self.resident is not None:
            on_device = self._to_device(shard)  # one copy per epoch; no host sync per step
            for i in range(len(self)):
                yield torch.index_select(self.resident, 0, on_device[i * self.batch_size:(i + 1) * self.batch_size])
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read, chunks[0])
            for i in range(len(chunks)):
                host = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._read, chunks[i + 1])
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
        part = states[start:start + batch_size]  # a device-resident tensor (validation) or an array / memmap
        batch = (part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))).to(device).float()
        with autocast(device, amp):
            pred = raptor.rollout(batch[:, 0])
        acc.update(pred.float(), batch[:, 1:])
        feats.append(raptor.features(pred[:, -1].float()).cpu())
    return acc.compute(), torch.cat(feats)


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, lambda_tf: float,
               device: torch.device, amp: bool) -> torch.Tensor:
    """One optimisation step on a batch of states; returns the detached loss (no host sync)."""
    with autocast(device, amp):
        loss = objective(batch.float() if batch.dtype == torch.float16 else batch, lambda_tf)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                    runtime: RuntimeConfig, stage_id: int, distributed: bool = False) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """(batch, lambda_tf) -> detached loss: `train_step`, replayed as a CUDA graph when `runtime.cuda_graphs`
    applies (GPU, fused AdamW, one process). Stage 2 ignores lambda_tf, so its graph takes the batch alone."""
    def step(batch: torch.Tensor, lambda_tf) -> torch.Tensor:
        return train_step(objective, optimizer, batch, lambda_tf, device, runtime.amp)

    if distributed or not use_graphs(runtime, device):
        return step
    if stage_id == 1:
        return CudaGraphStep(step, optimizer, device)
    graphed = CudaGraphStep(lambda batch: step(batch, 0.0), optimizer, device)

    def stage2_step(batch: torch.Tensor, lambda_tf=0.0) -> torch.Tensor:
        return graphed(batch)

    stage2_step.graphed = graphed  # for inspection (captured or not)
    return stage2_step


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def run_distillation(raptor: Raptor, train_states: np.ndarray, val_states: np.ndarray, cfg: DistillConfig,
                     runtime: RuntimeConfig, device: torch.device, num_registers: int, seed: int,
                     resume: dict | None = None, on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None) -> list[dict]:
    """Train `raptor` with stage 1 then stage 2; returns the per-epoch history.

    Each history record: {'stage', 'epoch', 'loss', 'lambda_tf', 'val_r2', 'seconds'} (val_r2:
    final-layer R^2 of all tokens on the val split; seconds: the epoch's wall time, validation included). After every epoch `on_epoch(record, state_fn)` is
    called; `state_fn()` returns a resumable state dict (pass it back as `resume`).
    """
    rank = dist.get_rank() if _is_distributed() else 0
    world = dist.get_world_size() if _is_distributed() else 1
    raptor.to(device)
    set_fused_attn(raptor, runtime.fused_attn)
    batches = StateBatches(train_states, cfg.batch_size, device, rank, world)
    if device.type == "cuda" and val_states.nbytes <= _default_budget(device):
        # validated every epoch: moved to the GPU once instead of copied from host memory each time
        val_states = torch.from_numpy(np.array(val_states)).to(device)
    block_params = sum(p.numel() for p in raptor.blocks[0].parameters())
    compiled = use_compile(runtime, device, step_flops(cfg.batch_size, train_states.shape[2], block_params * raptor.num_layers))
    history: list[dict] = list(resume["history"]) if resume else []
    done = {(r["stage"], r["epoch"]) for r in history}
    stages = [(1, cfg.stage1, Stage1Objective), (2, cfg.stage2, Stage2Objective)]
    with progress_bar(runtime.progress and rank == 0) as bar:
        for stage_id, stage, objective_cls in stages:
            if not stage.enabled or stage.epochs == 0:
                continue
            objective: nn.Module = objective_cls(raptor, GroupWeights.of(stage, num_registers), cfg.noise_sigma, compile=compiled)
            if world > 1:
                objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
            params = [p for p in raptor.parameters() if p.requires_grad]
            optimizer = adamw(params, stage.lr, stage.weight_decay, device, runtime.fused_adamw)
            total = stage.epochs * len(batches)
            scheduler = warmup_cosine(optimizer, total, int(stage.warmup_fraction * total))
            step_fn = make_train_step(objective, optimizer, device, runtime, stage_id, distributed=world > 1)
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
                epoch_start = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                lam = 0.0
                for i, batch in enumerate(batches.epoch(epoch, seed + stage_id)):
                    step = epoch * len(batches) + i
                    lam = teacher_forcing_weight(step, total, cfg.anneal, cfg.tf_start) if stage_id == 1 else 0.0
                    loss_sum += step_fn(batch, lam)
                    scheduler.step()
                if world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                r2, _ = evaluate_fidelity(raptor, val_states, num_registers, device, runtime.amp)
                record = {"stage": stage_id, "epoch": epoch, "loss": float(loss_sum) / len(batches),
                          "lambda_tf": lam, "val_r2": float(r2["all"][-1]), "seconds": time.perf_counter() - epoch_start}
                history.append(record)
                bar.update(task, advance=1, info=f"loss {record['loss']:.3e} val_r2 {record['val_r2']:.3f}")
                if on_epoch:
                    on_epoch(record, lambda: {"stage": stage_id, "epoch": epoch, "history": list(history),
                                              "raptor": raptor.state_dict(), "optimizer": optimizer.state_dict(),
                                              "scheduler": scheduler.state_dict()})
    return history
