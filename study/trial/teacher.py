"""Teacher ViTs: built from a typed config (timm VisionTransformer), trained with
AdamW + warmup-cosine, checkpointed per epoch (resumable) and cached by the
hash of what determines their weights, or loaded pretrained (timm name,
local checkpoint file or HF-style folder, or an ONNX file converted by study/trial/onnx_vit.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

import study.trial.cache as cache
from study.config import ConfigError, TrialConfig
from study.runtime import (
    CudaGraphStep,
    adamw,
    autocast,
    progress_bar,
    seed_everything,
    set_fused_attn,
    step_flops,
    use_compile,
    use_graphs,
    warmup_cosine,
)
from study.science.emergence import phase_snapshot
from study.science.sampling import stratified_subset
from study.science.states import teacher_states
from study.trial.data import ImageSpec, Splits, dataset_labels, native_spec

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A ready teacher: the model (eval mode, frozen), its input spec and facts about it."""

    model: VisionTransformer
    spec: ImageSpec
    key: str
    test_acc: float | None  # head accuracy on the test split (teachers trained here), else None
    emergence: list[dict] | None = None  # phase snapshots across training (`teacher.track_phases`), else None

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_registers(self) -> int:
        return int(getattr(self.model, "num_reg_tokens", 0) or 0)

    @property
    def width(self) -> int:
        return int(self.model.embed_dim)


def build_scratch_model(cfg: TrialConfig, spec: ImageSpec, num_classes: int) -> VisionTransformer:
    t = cfg.teacher
    return VisionTransformer(
        img_size=spec.size,
        patch_size=t.patch_size,
        in_chans=spec.in_chans,
        num_classes=num_classes,
        embed_dim=t.width,
        depth=t.depth,
        num_heads=t.heads,
        mlp_ratio=t.mlp_ratio,
        reg_tokens=t.registers,
        no_embed_class=False,
        init_values=t.layerscale_init,
        drop_path_rate=t.sd_rate,
        class_token=True,
        global_pool="token",
    )


def _checkpoint_file(path: str) -> str:
    p = Path(path)
    if p.is_dir():  # HF-style folder
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if (p / name).is_file():
                return str(p / name)
        raise ConfigError(f"teacher.checkpoint: no model.safetensors / pytorch_model.bin in folder {p}")
    if not p.is_file():
        raise ConfigError(f"teacher.checkpoint: file not found: {path}")
    return str(p)


def build_pretrained_model(cfg: TrialConfig) -> VisionTransformer:
    """A timm ViT by name: pretrained weights, a local checkpoint, or random init.

    At the model's default input size (e.g. 518 px for DINOv2), or at `data.image_size`
    when given (timm resamples the position embedding of loaded weights). Random init is
    seeded by `teacher.seed`, so a Tune driver and its Ray Train workers build the same teacher."""
    t = cfg.teacher
    kwargs: dict = dict(num_classes=0)
    if cfg.data.image_size is not None:
        kwargs["img_size"] = cfg.data.image_size
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            if t.source == "checkpoint":
                model = timm.create_model(
                    t.timm_name,
                    pretrained=True,
                    pretrained_cfg_overlay={"file": _checkpoint_file(t.checkpoint)},
                    **kwargs,
                )
            else:
                model = timm.create_model(t.timm_name, pretrained=t.pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"teacher.timm_name: unknown timm model {t.timm_name!r}") from None
        raise
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"teacher.timm_name: {t.timm_name!r} is a {type(model).__name__}, not a timm VisionTransformer"
        )
    patch = model.patch_embed.patch_size[0]
    if cfg.data.image_size is not None and cfg.data.image_size % patch:
        raise ConfigError(
            f"data.image_size: must be a multiple of {t.timm_name}'s patch size {patch}, got {cfg.data.image_size}"
        )
    return model


def pretrained_spec(model: VisionTransformer) -> ImageSpec:
    """The model's own preprocessing (timm data config) at the input size it was built for."""
    data_cfg = timm.data.resolve_data_config({}, model=model)
    chans = data_cfg["input_size"][0]
    size = model.patch_embed.img_size[0]
    return ImageSpec(
        chans,
        size,
        tuple(data_cfg["mean"]),
        tuple(data_cfg["std"]),
        data_cfg.get("interpolation", "bilinear"),
        data_cfg.get("crop_pct", 1.0),
    )


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512, amp: bool = True
) -> float:
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        with autocast(device, amp):
            logits = model(images.to(device))
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
        total += len(labels)
    return correct / max(1, total)


def phase_tracker(
    splits: Splits, cfg: TrialConfig, device: torch.device
) -> Callable[[VisionTransformer], dict[str, float]]:
    """model -> its `phase_snapshot` on a fixed stratified draw of `teacher.track_samples` validation images.

    Runs in eval mode without gradients and draws no random numbers, so tracking leaves training unchanged."""
    chosen = stratified_subset(
        dataset_labels(splits.val), cfg.teacher.track_samples, cfg.data.split_seed + 13, num_items=len(splits.val)
    )
    images = torch.stack([splits.val[int(i)][0] for i in chosen])

    @torch.no_grad()
    def snapshot(model: VisionTransformer) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with autocast(device, cfg.runtime.amp):
            states = torch.cat([teacher_states(model, part.to(device)).float() for part in images.split(256)])
        model.train(was_training)
        return phase_snapshot(states, int(getattr(model, "num_reg_tokens", 0) or 0))

    return snapshot


def train_scratch(
    model: VisionTransformer,
    splits: Splits,
    cfg: TrialConfig,
    device: torch.device,
    resume_path: Path,
    track: Callable[[VisionTransformer], dict[str, float]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """AdamW + warmup-cosine training on the train split, resumable from `resume_path`.

    Returns the per-epoch history [{'epoch', 'loss', 'val_acc'}] and, with `track` and `teacher.track_phases` = N,
    the emergence records [{'epoch': epochs done (0 = init), 'val_acc', **track(model)}] at init, every N epochs
    and at the end (else [])."""
    t, rt = cfg.teacher, cfg.runtime
    generator = seed_everything(t.seed)
    loader = DataLoader(
        splits.train,
        batch_size=t.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=False,
        pin_memory=device.type == "cuda",
    )
    model.to(device)
    set_fused_attn(model, rt.fused_attn)
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    if use_compile(rt, device, step_flops(t.batch_size, tokens, sum(p.numel() for p in model.blocks.parameters()))):
        for block in model.blocks:  # regional: one compiled graph serves every block
            block.compile()
    optimizer = adamw(model.parameters(), t.lr, t.weight_decay, device, rt.fused_adamw)
    scheduler = warmup_cosine(optimizer, t.epochs * len(loader), t.warmup_epochs * len(loader))
    history: list[dict] = []
    emergence: list[dict] = []
    every = t.track_phases if track is not None else 0
    start_epoch = 0
    if resume_path.is_file():
        # on CPU: generator states must be CPU ByteTensors (load_state_dict moves the rest to the model's device)
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        if "torch_rng" in state:  # drop-path masks continue as in an uninterrupted run
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)
        history, start_epoch = state["history"], state["epoch"] + 1
        emergence = state.get("emergence", [])
        log.info("resuming teacher training at epoch %d", start_epoch)

    def snapshot(epochs_done: int, val_acc: float | None = None) -> dict:
        # the global RNG (drop-path masks) must not see the read-out: DataLoader iterators draw a base seed from it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            val_acc = accuracy(model, splits.val, device, amp=rt.amp) if val_acc is None else val_acc
            return {"epoch": epochs_done, "val_acc": val_acc, **track(model)}

    if every and start_epoch == 0:
        emergence.append(snapshot(0))

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(device, rt.amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step = CudaGraphStep(train_step, optimizer, device) if use_graphs(rt, device) else train_step
    with progress_bar(rt.progress) as bar:
        task = bar.add_task("teacher", total=t.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, t.epochs):
            model.train()
            running, seen = 0.0, 0
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                running += step(images, labels) * len(labels)
                scheduler.step()
                seen += len(labels)
            record = {
                "epoch": epoch,
                "loss": float(running) / seen,
                "val_acc": accuracy(model, splits.val, device, amp=rt.amp),
            }
            history.append(record)
            if every and ((epoch + 1) % every == 0 or epoch + 1 == t.epochs):
                emergence.append(snapshot(epoch + 1, record["val_acc"]))
            bar.update(task, advance=1, info=f"loss {record['loss']:.3f} val_acc {record['val_acc']:.3f}")
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "emergence": emergence,
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
            cache.atomic_write(resume_path, lambda tmp: torch.save(state, tmp))
    return history, emergence


def _freeze(model: VisionTransformer) -> VisionTransformer:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(cfg: TrialConfig, device: torch.device, splits_for: Callable[[ImageSpec], Splits]) -> Teacher:
    """Return the trial's teacher, training it (once, under a lock) if it is not cached.

    `splits_for(spec)` loads the dataset for a given ImageSpec; it is called only
    when the teacher has to be trained or its test accuracy measured.
    """
    key = cfg.teacher_key()
    if cfg.teacher.source == "onnx":  # a converted ONNX ViT (study/trial/onnx_vit.py)
        from study.trial.onnx_vit import build_onnx_model, onnx_teacher_key

        model = build_onnx_model(cfg)
        set_fused_attn(model, cfg.runtime.fused_attn)
        return Teacher(_freeze(model).to(device), pretrained_spec(model), onnx_teacher_key(cfg), None)
    if cfg.teacher.source != "scratch":
        model = build_pretrained_model(cfg)
        set_fused_attn(model, cfg.runtime.fused_attn)
        return Teacher(_freeze(model).to(device), pretrained_spec(model), key, None)

    spec = native_spec(cfg.data)
    folder = Path(cfg.runtime.cache_dir) / "teachers"
    path = folder / f"{key}.pt"

    def train(tmp: Path) -> None:
        splits = splits_for(spec)
        seed_everything(cfg.teacher.seed)  # the init is part of what teacher.seed (and the cache key) determines
        model = build_scratch_model(cfg, spec, splits.num_classes)
        track = phase_tracker(splits, cfg, device) if cfg.teacher.track_phases else None
        history, emergence = train_scratch(model, splits, cfg, device, folder / f"{key}.resume.pt", track)
        test_acc = accuracy(model, splits.test, device, amp=cfg.runtime.amp)
        torch.save(
            {
                "state_dict": model.state_dict(),
                "num_classes": splits.num_classes,
                "spec": asdict(spec),
                "teacher": cfg.teacher.model_dump(mode="json"),
                "data": cfg.data.model_dump(mode="json"),
                "history": history,
                "emergence": emergence,
                "test_acc": test_acc,
            },
            tmp,
        )

    cache.get_or_create(path, train, what="teacher checkpoint")
    (folder / f"{key}.resume.pt").unlink(missing_ok=True)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = build_scratch_model(cfg, spec, saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    set_fused_attn(model, cfg.runtime.fused_attn)
    return Teacher(_freeze(model).to(device), spec, key, saved["test_acc"], saved.get("emergence") or None)
