"""Two-stage distillation of a Raptor from cached teacher states (docs/science.md §4).

Stage 1 (per block): each phase starts from the teacher's state at its input. Two
teacher-forcing (TF) formulations, `distill.tf_mode`:
- 'input_mix': the input to step l is lambda * x_{l-1} + (1 - lambda) * xhat_{l-1}
  (teacher state mixed with the block's own rollout), lambda annealed linearly from
  `tf_start` to 0 over the first `anneal` fraction of stage-1 steps;
- 'loss_mix' (the reference code's): loss = lambda * L_tf + (1 - lambda) * L_ar, with L_tf
  the one-step losses from teacher inputs x_{l-1} and L_ar the losses of the phase's own
  autoregressive rollout; lambda annealed linearly 1 -> 0 over `anneal` of stage-1 steps.
Phases start from teacher states, so the stage-1 loss is a sum of independent per-block
terms and all blocks are trained in one pass.
Stage 2 (whole chain): pure autoregressive rollout from x_0 over all L layers.
Ablation arms (`distill.arm`): 'full' (annealed stage 1, then stage 2), 'ar_anneal'
(annealed stage 1 only), 'tf_only' (lambda fixed at 1, no stage 2), 'ar_only' (lambda
fixed at 0, no stage 2); with `raptor.depth_scaling` and `distill.cls_weighting` they
make the paper's ablation rows (docs/science.md §4).
Every step clips the global gradient norm at `distill.grad_clip` (0: off; 1.0 in the
reference); each stage's token-group weights are renormalised to sum to 1.

The loop is data-parallel ready: inside an initialised torch.distributed
process group (Ray Train workers) each rank takes a shard of every epoch and
the objective is wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from study.config import ConfigError, DistillConfig, RuntimeConfig, StageConfig
from study.runtime import (
    CudaGraphStep,
    adamw,
    autocast,
    progress_bar,
    set_fused_attn,
    step_flops,
    use_compile,
    use_graphs,
    warmup_cosine,
)
from study.science.batches import StateBatches, default_budget
from study.science.fidelity import evaluate_fidelity
from study.science.raptor import Raptor, conditioned_block


def teacher_forcing_weight(step: int, total_steps: int, anneal: float, start: float = 0.5) -> float:
    """lambda_tf at a stage-1 step: `start` at step 0, linearly to 0 at anneal*total_steps, 0 after."""
    horizon = anneal * total_steps
    if horizon <= 0:
        return 0.0
    return start * max(0.0, 1.0 - step / horizon)


def stage1_lambda(step: int, total_steps: int, cfg: DistillConfig) -> float:
    """lambda of stage-1 step `step` for the configured arm and TF mode (module docstring)."""
    if cfg.arm == "tf_only":
        return 1.0
    if cfg.arm == "ar_only":
        return 0.0
    start = 1.0 if cfg.tf_mode == "loss_mix" else cfg.tf_start
    return teacher_forcing_weight(step, total_steps, cfg.anneal, start)


@dataclass(frozen=True)
class GroupWeights:
    """Loss weights of the token groups: cls (index 0), registers (1..R), patches (rest)."""

    cls: float
    reg: float
    patch: float
    num_registers: int

    @classmethod
    def of(cls, stage: StageConfig, num_registers: int, name: str = "stage") -> GroupWeights:
        """The stage's weights renormalised to sum to 1 over the groups present (registers only if R > 0)."""
        reg = stage.lambda_reg if num_registers else 0.0
        total = stage.lambda_cls + reg + stage.lambda_patch
        if total <= 0:
            raise ConfigError(f"distill.{name}: lambda_cls + lambda_patch must be > 0 for a teacher without registers")
        return cls(stage.lambda_cls / total, reg / total, stage.lambda_patch / total, num_registers)

    @classmethod
    def uniform(cls, num_tokens: int, num_registers: int) -> GroupWeights:
        """Every token weighs the same (`distill.cls_weighting: false`): each group's share is its share of the
        T tokens, so `mse` is the plain mean over tokens."""
        return cls(
            1 / num_tokens, num_registers / num_tokens, (num_tokens - 1 - num_registers) / num_tokens, num_registers
        )

    @classmethod
    def for_stage(cls, cfg: DistillConfig, stage_id: int, num_tokens: int, num_registers: int) -> GroupWeights:
        """The loss weights of stage `stage_id` (1 or 2): the stage's lambdas, or uniform without cls weighting."""
        if not cfg.cls_weighting:
            return cls.uniform(num_tokens, num_registers)
        return cls.of(getattr(cfg, f"stage{stage_id}"), num_registers, f"stage{stage_id}")

    def mse(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted per-group MSE of [B, T, D] tensors -> scalar:
        cls * mean(sq[:, 0]) + reg * mean(sq[:, 1:1+R]) (if R) + patch * mean(sq[:, 1+R:]).

        Computed as one per-token-weighted sum (no slicing), so its backward is a single
        elementwise kernel rather than one zero-filled slice gradient per group."""
        batch, tokens, width = pred.shape
        r = self.num_registers
        t = torch.arange(tokens, device=pred.device)
        weight = torch.where(
            t == 0, self.cls, torch.where(t <= r, self.reg / max(1, r), self.patch / max(1, tokens - 1 - r))
        )
        sq = (pred.float() - target.float()).pow(2)
        return (sq.sum(dim=(0, 2)) * weight).sum() / (batch * width)


def layer_loss(
    block: nn.Module, x: torch.Tensor, scales: torch.Tensor, target: torch.Tensor, weights: GroupWeights
) -> tuple[torch.Tensor, torch.Tensor]:
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


def reset_compiled_layer_loss() -> None:
    """Forget the compiled `layer_loss`, so that the next `compiled_layer_loss()` compiles afresh
    (e.g. after torch._dynamo.reset() or a change of inductor or SDPA settings, as the GPU bench does)."""
    _COMPILED.clear()


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
    """Per-phase rollouts with teacher forcing; forward(states [B, L+1, T, D], lambda_tf) -> loss.

    `mode` 'input_mix' mixes inputs, 'loss_mix' mixes the TF and AR losses (module docstring); lambda may be a
    float or a 0-d tensor (a replayed CUDA graph). `compile=True` runs each step + loss through the compiled
    region (see `compiled_layer_loss`)."""

    def __init__(
        self, raptor: Raptor, weights: GroupWeights, noise_sigma: float, compile: bool = False, mode: str = "input_mix"
    ):
        super().__init__(raptor, weights, noise_sigma, compile)
        if mode not in ("input_mix", "loss_mix"):
            raise ValueError(f"distill.tf_mode: must be 'input_mix' or 'loss_mix', got {mode!r}")
        self.mode = mode

    def forward(self, states: torch.Tensor, lambda_tf) -> torch.Tensor:
        if self.mode == "loss_mix":
            return self._loss_mix(states, lambda_tf)
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

    def _loss_mix(self, states: torch.Tensor, lam) -> torch.Tensor:
        """lam * L_tf + (1 - lam) * L_ar; a term whose weight is a float 0 is not computed. A phase's first step
        has the teacher's input in both, so it is computed once and counts fully."""
        scales = self.raptor.cond()
        need_tf = not (isinstance(lam, float) and lam == 0.0)
        need_ar = not (isinstance(lam, float) and lam == 1.0)
        zero = states.new_zeros((), dtype=torch.float32)
        shared, tf, ar = zero, zero, zero
        for first, last in self.raptor.phase_bounds:
            own, term = self._layer(_noisy(states[:, first - 1], self.noise_sigma), first, scales, states[:, first])
            shared = shared + term
            for layer in range(first + 1, last + 1):
                if need_tf:
                    teacher_in = _noisy(states[:, layer - 1], self.noise_sigma)
                    _, term = self._layer(teacher_in, layer, scales, states[:, layer])
                    tf = tf + term
                if need_ar:
                    own, term = self._layer(_noisy(own, self.noise_sigma), layer, scales, states[:, layer])
                    ar = ar + term
        loss = shared + (lam * tf if need_tf else 0.0) + ((1.0 - lam) * ar if need_ar else 0.0)
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


def train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    lambda_tf: float,
    device: torch.device,
    amp: bool,
    grad_clip: float = 0.0,
) -> torch.Tensor:
    """One optimisation step on a batch of states, the global gradient norm clipped at `grad_clip` (0: off);
    returns the detached loss (no host sync)."""
    with autocast(device, amp):
        loss = objective(batch.float() if batch.dtype == torch.float16 else batch, lambda_tf)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()


def make_train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    runtime: RuntimeConfig,
    stage_id: int,
    distributed: bool = False,
    grad_clip: float = 0.0,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """(batch, lambda_tf) -> detached loss: `train_step`, replayed as a CUDA graph when `runtime.cuda_graphs`
    applies (GPU, fused AdamW, one process). Stage 2 ignores lambda_tf, so its graph takes the batch alone."""

    def step(batch: torch.Tensor, lambda_tf) -> torch.Tensor:
        return train_step(objective, optimizer, batch, lambda_tf, device, runtime.amp, grad_clip)

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


OnEpochState = Callable[[dict, Callable[[], dict]], None]
"""`on_epoch(record, state_fn)` after every epoch; `state_fn()` returns the resumable state (pass it back as resume)."""


@dataclass
class DistillJob:
    """Everything one distillation needs; both runners (in process, Ray Train workers) hand one to `run_distillation`.

    Args:
        raptor: the Raptor to train (trained in place).
        train_states: teacher states of the training images [N, L+1, T, D] (an array or the cache memmap).
        val_states: teacher states of the validation images, scored (`val_r2`) after every epoch.
        distill: the two stages, teacher forcing and loss weights.
        runtime: device-level options (autocast, compile, CUDA graphs, fused AdamW, progress).
        device: where the steps run.
        num_registers: register tokens of the teacher (a token group of the loss and of R^2).
        seed: seeds the epochs' sample order.
        resume: a state returned by `on_epoch`'s `state_fn`, to continue from (None: from the start).
        on_epoch: called after every epoch (`OnEpochState`).
    """

    raptor: Raptor
    train_states: np.ndarray
    val_states: np.ndarray
    distill: DistillConfig
    runtime: RuntimeConfig
    device: torch.device
    num_registers: int
    seed: int
    resume: dict | None = None
    on_epoch: OnEpochState | None = None


def run_distillation(job: DistillJob) -> list[dict]:
    """Train `job.raptor` with stage 1 then stage 2; returns the per-epoch history.

    Each history record: {'stage', 'epoch', 'loss', 'lambda_tf', 'val_r2', 'seconds'} (val_r2: final-layer R^2 of all
    tokens on the val split; seconds: the epoch's wall time, validation included). After every epoch
    `job.on_epoch(record, state_fn)` is called; `state_fn()` returns a resumable state dict (pass it back as
    `job.resume`).
    """
    raptor, train_states, val_states, cfg, runtime = (
        job.raptor,
        job.train_states,
        job.val_states,
        job.distill,
        job.runtime,
    )
    device, num_registers, seed, resume, on_epoch = job.device, job.num_registers, job.seed, job.resume, job.on_epoch
    rank = dist.get_rank() if _is_distributed() else 0
    world = dist.get_world_size() if _is_distributed() else 1
    raptor.to(device)
    set_fused_attn(raptor, runtime.fused_attn)
    batches = StateBatches(train_states, cfg.batch_size, device, rank, world)
    if device.type == "cuda" and val_states.nbytes <= default_budget(device):
        # validated every epoch: moved to the GPU once instead of copied from host memory each time
        val_states = torch.from_numpy(np.array(val_states)).to(device)
    block_params = sum(p.numel() for p in raptor.blocks[0].parameters())
    compiled = use_compile(
        runtime, device, step_flops(cfg.batch_size, train_states.shape[2], block_params * raptor.num_layers)
    )
    history: list[dict] = list(resume["history"]) if resume else []
    done = {(r["stage"], r["epoch"]) for r in history}
    stages = [(1, cfg.stage1, Stage1Objective), (2, cfg.stage2, Stage2Objective)]
    with progress_bar(runtime.progress and rank == 0) as bar:
        for stage_id, stage, objective_cls in stages:
            if not stage.enabled or stage.epochs == 0 or (stage_id == 2 and not cfg.stage2_runs):
                continue
            weights = GroupWeights.for_stage(cfg, stage_id, train_states.shape[2], num_registers)
            extra = {"mode": cfg.tf_mode} if stage_id == 1 else {}
            objective: nn.Module = objective_cls(raptor, weights, cfg.noise_sigma, compile=compiled, **extra)
            if world > 1:
                objective = nn.parallel.DistributedDataParallel(
                    objective, device_ids=[device.index] if device.type == "cuda" else None
                )
            params = [p for p in raptor.parameters() if p.requires_grad]
            optimizer = adamw(params, stage.lr, stage.weight_decay, device, runtime.fused_adamw)
            total = stage.epochs * len(batches)
            scheduler = warmup_cosine(optimizer, total, int(stage.warmup_fraction * total))
            step_fn = make_train_step(
                objective, optimizer, device, runtime, stage_id, distributed=world > 1, grad_clip=cfg.grad_clip
            )
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
                    lam = stage1_lambda(step, total, cfg) if stage_id == 1 else 0.0
                    loss_sum += step_fn(batch, lam)
                    scheduler.step()
                if world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                r2 = evaluate_fidelity(raptor, val_states, num_registers, device, runtime.amp).r2
                record = {
                    "stage": stage_id,
                    "epoch": epoch,
                    "loss": float(loss_sum) / len(batches),
                    "lambda_tf": lam,
                    "val_r2": float(r2["all"][-1]),
                    "seconds": time.perf_counter() - epoch_start,
                }
                history.append(record)
                bar.update(task, advance=1, info=f"loss {record['loss']:.3e} val_r2 {record['val_r2']:.3f}")
                if on_epoch:
                    on_epoch(
                        record,
                        lambda: {
                            "stage": stage_id,
                            "epoch": epoch,
                            "history": list(history),
                            "raptor": raptor.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                        },
                    )
    return history
