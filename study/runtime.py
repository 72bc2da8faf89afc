"""Device, threads, precision and progress: the how-fast knobs of `RuntimeConfig`."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from study.config import DistillConfig, RuntimeConfig


def resolve_device(cfg: RuntimeConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device: 'cuda' requested but no CUDA device is visible")
    return torch.device(cfg.device)


def compile_cache_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    """Inductor and Triton cache folders under the run cache: every process of a sweep (trial drivers, Train
    workers, later sweeps on the same cache) reuses compiled kernels and FX graphs instead of compiling again."""
    root = os.path.join(os.path.abspath(cache_dir), "compile")
    return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(root, "inductor"), "TRITON_CACHE_DIR": os.path.join(root, "triton")}


def setup(cfg: RuntimeConfig) -> torch.device:
    """Apply thread count, matmul precision and the shared compile cache (unless the environment names one);
    return the device to use."""
    for key, value in compile_cache_env(cfg.cache_dir).items():
        os.environ.setdefault(key, value)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
        # and the BLAS / OpenMP pools numpy, scipy and scikit-learn use (the linear probe): unlimited, they
        # oversubscribe a shared machine (Ray caps its workers at OMP_NUM_THREADS=1; a plain process has no cap)
        from threadpoolctl import threadpool_limits

        threadpool_limits(cfg.num_threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return resolve_device(cfg)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# 'auto' compiles only training steps of at least this many model FLOPs: compiling costs
# ~5-25 s per graph, and a smaller step (digits) finishes its whole run in less than that.
COMPILE_MIN_STEP_FLOPS = 1e12


def use_compile(cfg: RuntimeConfig, device: torch.device, step_flops: float | None = None) -> bool:
    """Resolve `runtime.compile`: True/False as given; 'auto' -> on for CUDA when one training
    step is at least COMPILE_MIN_STEP_FLOPS (`step_flops`, e.g. 6 x tokens x block params)."""
    if cfg.compile == "auto":
        return device.type == "cuda" and (step_flops is None or step_flops >= COMPILE_MIN_STEP_FLOPS)
    return bool(cfg.compile)


def step_flops(batch: int, tokens: int, params: int) -> float:
    """Model FLOPs of one training step, 6 x tokens x parameters (forward 2, backward 4)."""
    return 6.0 * batch * tokens * params


def set_fused_attn(model: torch.nn.Module, enabled: bool) -> int:
    """Set `fused_attn` on every timm Attention module of `model`; returns how many were set.

    True: F.scaled_dot_product_attention (flash / memory-efficient kernels); False: the
    explicit softmax(QK^T)V of the reference implementation (the baseline path)."""
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = bool(enabled)
            count += 1
    return count


def use_graphs(cfg: RuntimeConfig, device: torch.device) -> bool:
    """Whether training steps are replayed as CUDA graphs: on CUDA with fused AdamW, when enabled."""
    return bool(cfg.cuda_graphs and cfg.fused_adamw and device.type == "cuda")


class CudaGraphStep:
    """One whole training step (zero_grad, forward, backward, optimizer.step) replayed as a CUDA graph.

    On GPU the eager step is bound by the host: hundreds of kernel launches per step, each
    costing more CPU time than the GPU spends on it for ViT-S-sized blocks. Replaying a
    captured graph issues them all at once.

    `step(*args) -> loss` runs the whole step on static shapes. The first `warmup` calls
    run eagerly (they compile, and create the optimizer state); the next call captures
    `step` on static input buffers; every later call copies its tensor args into those
    buffers (float args into 0-d device tensors, so `step` must accept either), sets the
    learning rates from `optimizer.param_groups` (LR schedulers keep working, no host
    sync) and replays. Calls with other tensor shapes (a last partial batch) run
    `fallback` (default `step`) eagerly. If capture fails, every step runs eagerly and a
    warning says why. Needs a capturable optimizer step (fused AdamW) and one process.
    """

    def __init__(
        self,
        step: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        warmup: int = 3,
        fallback: Callable[..., torch.Tensor] | None = None,
    ):
        self.step, self.optimizer, self.device, self.warmup = step, optimizer, device, warmup
        self.fallback = fallback or step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls, self.broken = 0, False
        self.static: list[torch.Tensor] = []
        self.lrs: list[torch.Tensor] = []
        self.loss: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _matches(self, args) -> bool:
        return all(
            not isinstance(a, torch.Tensor) or (a.shape == s.shape and a.dtype == s.dtype)
            for a, s in zip(args, self.static)
        )

    def _capture(self, args) -> None:
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g.get("capturable", False)) for g in groups]
        try:
            self.static = [
                torch.empty_like(a, device=self.device).copy_(a)
                if isinstance(a, torch.Tensor)
                else torch.full((), float(a), device=self.device)
                for a in args
            ]
            self.lrs = [torch.full((), float(g["lr"]), device=self.device) for g in groups]
            for g, lr in zip(groups, self.lrs):
                g["lr"], g["capturable"] = lr, True
            self.optimizer.zero_grad(set_to_none=True)  # backward in the capture allocates the grads
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a prefetching thread (streamed states) may pin memory meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.loss = self.step(*self.static)
            self.graph = graph
        except Exception as err:  # noqa: BLE001 - any capture failure: train eagerly instead
            self.broken, self.graph, self.static = True, None, []
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"CUDA graph capture failed, training eagerly: {err!r}", RuntimeWarning, stacklevel=3)
        finally:
            for g, (lr, capturable) in zip(groups, saved):
                g["lr"], g["capturable"] = lr, capturable

    def __call__(self, *args) -> torch.Tensor:
        if self.graph is None:
            if self.broken or self.calls < self.warmup:
                self.calls += 1
                return self.step(*args)
            self._capture(args)
            if self.graph is None:
                return self.step(*args)
        if not self._matches(args):
            return self.fallback(*args)
        for buf, a in zip(self.static, args):
            if isinstance(a, torch.Tensor):
                buf.copy_(a, non_blocking=True)
            else:
                buf.fill_(a)
        for lr, g in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(g["lr"])
        self.graph.replay()
        return self.loss.clone()


def adamw(params, lr: float, weight_decay: float, device: torch.device, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=bool(fused and device.type == "cuda"))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base LR over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def progress_bar(enabled: bool) -> Progress:
    """A rich progress display (disabled -> renders nothing)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


class CheckpointPolicy:
    """When a distillation epoch writes its resumable state (`runtime.checkpoint_epochs` / `checkpoint_seconds`).

    Saving a state every epoch costs more than short epochs (a Ray Train checkpoint is persisted and
    registered), so a state is due after `checkpoint_epochs` epochs or `checkpoint_seconds` seconds since the
    last one, whichever comes first, and always at the last epoch of a stage (the state the trial ends with)."""

    def __init__(self, runtime: RuntimeConfig, distill: DistillConfig):
        self.every_epochs, self.every_s = runtime.checkpoint_epochs, runtime.checkpoint_seconds
        self.stage_epochs = {1: distill.stage1.epochs, 2: distill.stage2.epochs}
        self.since, self.last = 0, time.monotonic()

    def due(self, record: dict) -> bool:
        self.since += 1
        now = time.monotonic()
        due = (
            record["epoch"] >= self.stage_epochs[record["stage"]] - 1
            or (self.every_epochs is not None and self.since >= self.every_epochs)
            or (self.every_s is not None and now - self.last >= self.every_s)
        )
        if due:
            self.since, self.last = 0, now
        return due
