"""Teacher ViTs: built from a typed config (timm VisionTransformer), trained with
AdamW + warmup-cosine, checkpointed per epoch (resumable) and cached by the
hash of what determines their weights, or loaded pretrained (timm name,
local checkpoint file or HF-style folder, or an ONNX file converted by study/trial/onnx_vit.py).

Training from scratch keeps checkpoints beside the teacher (`teacher.snapshots`: chosen epochs, 0 = init, and the
best-validation-accuracy weights), so a trial can fit its Raptor to the teacher at a stage of its training
(`teacher.snapshot`; docs/science.md, "Teachers in the paper's regime")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from timm.layers import DropPath
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
from study.trial.augment import Augment
from study.trial.branches import scale_branches
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
    snapshot_epoch: int | None = None  # epochs of training behind the weights when a kept checkpoint is used

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
    """The teacher at init. Stochastic depth per `teacher.sd_schedule`: timm's linear ramp (0 at the first block,
    sd_rate at the last), or sd_rate at every block ('uniform'; DropPath modules hold no weights and draw nothing at
    construction, so the init is the same under both). `teacher.residual_scale` multiplies each block's two branch
    outputs (study/trial/branches.py)."""
    t = cfg.teacher
    model = VisionTransformer(
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
        drop_path_rate=t.sd_rate if t.sd_schedule == "linear" else 0.0,
        class_token=True,
        global_pool="token",
    )
    if t.sd_schedule == "uniform" and t.sd_rate > 0:
        for block in model.blocks:
            block.drop_path1, block.drop_path2 = DropPath(t.sd_rate), DropPath(t.sd_rate)
    return scale_branches(model, t.branch_scale())


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
    keep: Callable[[str, int, VisionTransformer], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """AdamW + warmup-cosine training on the train split (augmented when `teacher.augment`), resumable from
    `resume_path`.

    Returns the per-epoch history [{'epoch', 'loss', 'val_acc'}] and, with `track` and `teacher.track_phases` = N,
    the emergence records [{'epoch': epochs done (0 = init), 'val_acc', **track(model)}] at init, every N epochs
    and at the end (else []). `keep(name, epochs_done, model)` is called with the model at each epoch of
    `teacher.snapshots` (name: the epoch) and, after the last epoch, holding the weights of the best validation
    accuracy (name 'best'; ties: the earliest epoch); it runs outside the training RNG streams."""
    t, rt = cfg.teacher, cfg.runtime
    generator = seed_everything(t.seed)
    augment = Augment(t, native_spec(cfg.data)) if t.augment else None
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
    best: dict | None = None  # {'epoch', 'val_acc', 'state_dict'} of the best validation accuracy so far
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
        emergence, best = state.get("emergence", []), state.get("best")
        if augment is not None:
            augment.load_state(state["augment_rng"])
        log.info("resuming teacher training at epoch %d", start_epoch)

    def snapshot(epochs_done: int, val_acc: float | None = None) -> dict:
        # the global RNG (drop-path masks) must not see the read-out: DataLoader iterators draw a base seed from it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            val_acc = accuracy(model, splits.val, device, amp=rt.amp) if val_acc is None else val_acc
            return {"epoch": epochs_done, "val_acc": val_acc, **track(model)}

    def kept(name: str, epochs_done: int) -> None:
        if keep is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                keep(name, epochs_done, model)

    if every and start_epoch == 0:
        emergence.append(snapshot(0))
    if start_epoch == 0 and 0 in t.snapshots:
        kept("0", 0)

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
                if augment is not None:
                    images = augment(images)
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
            if epoch + 1 in t.snapshots:
                kept(str(epoch + 1), epoch + 1)
            if keep is not None and (best is None or record["val_acc"] > best["val_acc"]):
                weights = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
                best = {"epoch": epoch + 1, "val_acc": record["val_acc"], "state_dict": weights}
            bar.update(task, advance=1, info=f"loss {record['loss']:.3f} val_acc {record['val_acc']:.3f}")
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "emergence": emergence,
                "best": best,
                "augment_rng": augment.state() if augment is not None else None,
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
            cache.atomic_write(resume_path, lambda tmp: torch.save(state, tmp))
    if best is not None:  # the best weights in the model for `keep`, then the final ones back
        final = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(best["state_dict"])
        kept("best", best["epoch"])
        model.load_state_dict(final)
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

    def fresh(splits: Splits) -> VisionTransformer:
        seed_everything(cfg.teacher.seed)  # the init is part of what teacher.seed (and the cache key) determines
        return build_scratch_model(cfg, spec, splits.num_classes)

    def keeper(splits: Splits, only: str | None = None, into: Path | None = None):
        """`train_scratch`'s keep: each checkpoint (or only `only`, written to `into`) with its accuracies."""

        def keep(name: str, epochs_done: int, model: VisionTransformer) -> None:
            if only is not None and name != only:
                return

            def write(tmp: Path) -> None:
                val_acc, test_acc = (
                    accuracy(model, part, device, amp=cfg.runtime.amp) for part in (splits.val, splits.test)
                )
                record = {
                    "state_dict": model.state_dict(),
                    "epoch": epochs_done,
                    "val_acc": val_acc,
                    "test_acc": test_acc,
                }
                torch.save(record, tmp)

            if into is not None:
                write(into)
            else:
                cache.get_or_create(snapshot_path(folder, key, name), write, what="teacher snapshot")

        return keep

    def train(tmp: Path) -> None:
        splits = splits_for(spec)
        model = fresh(splits)
        track = phase_tracker(splits, cfg, device) if cfg.teacher.track_phases else None
        history, emergence = train_scratch(
            model, splits, cfg, device, folder / f"{key}.resume.pt", track, keeper(splits)
        )
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
    test_acc, epoch = saved["test_acc"], None
    chosen = cfg.teacher.snapshot
    if chosen is not None:
        snap_path, resume = snapshot_path(folder, key, chosen), folder / f"{key}.snapshot-{chosen}.resume.pt"

        def retrain(tmp: Path) -> None:  # the teacher was cached without this checkpoint: the same run again
            log.warning("teacher %s was cached without checkpoint %r: training it again to keep it", key, chosen)
            splits = splits_for(spec)
            train_scratch(fresh(splits), splits, cfg, device, resume, keep=keeper(splits, str(chosen), tmp))

        cache.get_or_create(snap_path, retrain, what="teacher snapshot")
        resume.unlink(missing_ok=True)
        kept = torch.load(snap_path, map_location="cpu", weights_only=False)
        model.load_state_dict(kept["state_dict"])
        test_acc, epoch = kept["test_acc"], kept["epoch"]
    set_fused_attn(model, cfg.runtime.fused_attn)
    emergence = saved.get("emergence") or None
    return Teacher(_freeze(model).to(device), spec, key, test_acc, emergence, epoch)


def snapshot_path(folder: Path, key: str, snapshot: int | str) -> Path:
    """The cache file of teacher `key`'s kept checkpoint `snapshot` (an epoch, or 'best'): in a `snapshots/` folder
    beside the teachers, so that `teachers/*.pt` is one file per teacher."""
    return folder / "snapshots" / f"{key}-{snapshot}.pt"
