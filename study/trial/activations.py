"""Teacher token states x_0..x_L, computed once per (teacher, split) and cached.

Cached as `.npy` files (memory-mappable, so splits larger than RAM stream from
disk) of shape [N, L+1, T, D] plus labels [N]. x_0 is the embedded tokens
after the position embedding (and timm's norm_pre); x_l is block l's output.
Bytes per sample: (L+1) * T * D * itemsize (4 for float32, 2 for float16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

import study.trial.cache as cache
from study.config import TrialConfig
from study.runtime import autocast, progress_bar
from study.science.states import teacher_states


def bytes_per_sample(num_layers: int, num_tokens: int, width: int, dtype: str) -> int:
    """Size of one sample's x_0..x_L in the cache, in bytes."""
    return (num_layers + 1) * num_tokens * width * np.dtype(dtype).itemsize


def write_states(
    model: VisionTransformer,
    dataset: Dataset,
    device: torch.device,
    dtype: str,
    amp: bool,
    batch_size: int,
    tmp: Path,
    progress: bool,
    label: str,
    labels_out: list,
) -> None:
    """Write x_0..x_L of every image of `dataset` to a new `.npy` memmap at `tmp` ([N, L+1, T, D], `dtype`).

    Batches of `batch_size` go through the teacher on `device` (bf16 autocast when `amp`); each batch's
    labels are appended to `labels_out`. `label` names the progress bar. Used by `cached_states`, and
    timed on its own by the GPU bench (bench/gpu/steps.py)."""
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    images0, _ = dataset[0]
    with torch.no_grad(), autocast(device, amp):
        probe = teacher_states(model, images0.unsqueeze(0).to(device))
    shape = (n, *probe.shape[1:])
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
    offset = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"activations[{label}]", total=n, info="")
        for images, labels in loader:
            labels_out.append(labels)
            with autocast(device, amp):
                states = teacher_states(model, images.to(device, non_blocking=True))
            # cast to the cache dtype on the device: half the device-to-host bytes for float16, no host-side cast
            out[offset : offset + len(images)] = states.to(getattr(torch, dtype)).cpu().numpy()
            offset += len(images)
            bar.update(task, advance=len(images))
    out.flush()
    del out


def _write_labels(dataset: Dataset, tmp: Path, seen: list) -> None:
    """Labels [N] int64; from the states pass when it just ran, else one pass over the data."""
    batches = seen or [labels for _, labels in DataLoader(dataset, batch_size=1024)]
    with open(tmp, "wb") as fh:
        np.save(fh, torch.cat(batches).numpy().astype(np.int64))


def cached_states(
    cfg: TrialConfig,
    model: VisionTransformer,
    teacher_key: str,
    dataset: Dataset,
    split: str,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(states [N, L+1, T, D] memmap, labels [N]) for one split, extracting them once.

    With `data.raptor_samples`, `dataset` is that stratified subset of the split and the files say so; with
    `teacher.snapshot`, `model` holds that kept checkpoint of the teacher and the files say so too."""
    folder = Path(cfg.runtime.cache_dir) / "activations" / teacher_key
    dtype = cfg.runtime.activation_dtype
    tag = "" if cfg.data.raptor_samples is None else f".n{cfg.data.raptor_samples}"
    if cfg.teacher.snapshot is not None:
        tag += f".snap-{cfg.teacher.snapshot}"
    states_path = folder / f"{split}{tag}.{dtype}.npy"
    labels_path = folder / f"{split}{tag}.labels.npy"
    seen_labels: list[torch.Tensor] = []
    cache.get_or_create(
        states_path,
        lambda tmp: write_states(
            model, dataset, device, dtype, cfg.runtime.amp, batch_size, tmp, cfg.runtime.progress, split, seen_labels
        ),
        what="activation cache",
    )
    cache.get_or_create(labels_path, lambda tmp: _write_labels(dataset, tmp, seen_labels), what="label cache")
    return np.load(states_path, mmap_mode="r"), np.load(labels_path)
