"""Image datasets behind one interface: train / val / test splits of (image, label), one `DatasetKind` per name of
study/registry.py DATASETS (adding a dataset = its loader and `DatasetKind` here + one registry line).

- `digits` (default): scikit-learn's bundled 8x8 digits, 1797 images, 10 classes;
  needs no network and no files, split deterministically by `split_seed`.
- `fashion_mnist`: the original IDX files of the Debian package `dataset-fashion-mnist`
  (or `data.path`), parsed by `study.trial.idx`; its own test file is the test split.
- `cifar10` / `cifar100`: a local torchvision-format folder (never downloaded).
- `imagefolder`: an ImageNet-layout folder (`train/` and `val/` class folders),
  or a single folder of class folders that is split by seed.

Images come out as float32 tensors [C, H, W] matching an `ImageSpec`
(channels, side, mean, std); for pretrained timm teachers the spec is the
model's own data config, so preprocessing matches the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from study.config import ConfigError
from study.registry import DATASETS, resolve
from study.science.sampling import stratified_subset
from study.teacher_config import DataConfig
from study.trial.sources import require_dir


@dataclass(frozen=True)
class ImageSpec:
    """What the teacher consumes: channels, square side in px, per-channel mean/std."""

    in_chans: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


@dataclass
class Splits:
    """Train / val / test datasets of (image [C,H,W] float32, label int64)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int

    def __getitem__(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


SPLIT_NAMES = ("train", "val", "test")

# Native specs of the bundled / standard datasets (used by teachers trained from scratch).
DIGITS_SPEC = ImageSpec(in_chans=1, size=8, mean=(0.30,), std=(0.38,))
CIFAR_SPEC = ImageSpec(in_chans=3, size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
FASHION_SPEC = ImageSpec(in_chans=1, size=28, mean=(0.2860,), std=(0.3530,))  # train-file pixel mean / std
IMAGEFOLDER_SPEC = ImageSpec(
    in_chans=3, size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875
)


def native_spec(cfg: DataConfig) -> ImageSpec:
    """The spec a from-scratch teacher uses for this dataset (honouring data.image_size)."""
    base = resolve(DATASETS, cfg.name).spec
    if cfg.image_size is None:
        return base
    return ImageSpec(base.in_chans, cfg.image_size, base.mean, base.std, base.interpolation, base.crop_pct)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic disjoint index split of range(n) into train / val / test by seed."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def _train_val_indices(n: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a dataset that brings its own test split (CIFAR, ImageNet layout)."""
    idx = split_indices(n, cfg.val_fraction, 0.0001, cfg.split_seed)
    return np.sort(np.concatenate([idx["train"], idx["test"]])), idx["val"]


def _cap(indices: np.ndarray, cfg: DataConfig, labels: np.ndarray | None, split: str) -> np.ndarray:
    """`data.max_samples` of a split's indices: a seeded random draw stratified by class (docs/science.md §5),
    never the first ones (on a class-ordered dataset those hold only the first classes)."""
    if cfg.max_samples is None or cfg.max_samples >= len(indices):
        return indices
    seed = cfg.split_seed * 1_000 + SPLIT_NAMES.index(split)  # each split its own draw
    chosen = stratified_subset(
        None if labels is None else labels[indices], cfg.max_samples, seed, num_items=len(indices)
    )
    return indices[chosen]


def _tensor_transform(images: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> spec channels, side and normalisation."""
    if images.shape[1] != spec.in_chans:
        if images.shape[1] != 1:
            raise ConfigError(f"data: cannot map {images.shape[1]} channels to the teacher's {spec.in_chans}")
        images = images.expand(-1, spec.in_chans, -1, -1)
    if images.shape[-1] != spec.size or images.shape[-2] != spec.size:
        images = torch.nn.functional.interpolate(
            images, size=(spec.size, spec.size), mode="bilinear", align_corners=False
        )
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def _load_digits(cfg: DataConfig, spec: ImageSpec) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    images = _tensor_transform(images, spec)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    idx = split_indices(len(labels), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    parts = {name: _cap(idx[name], cfg, bunch.target, name) for name in SPLIT_NAMES}
    return Splits(*(TensorDataset(images[parts[n]], labels[parts[n]]) for n in SPLIT_NAMES), num_classes=10)


def pil_transform(spec: ImageSpec):
    """torchvision transform for PIL images: resize, centre-crop, to tensor, normalise."""
    from torchvision import transforms as T

    resize = int(round(spec.size / spec.crop_pct))
    interp = T.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    steps = [T.Resize(resize, interpolation=interp), T.CenterCrop(spec.size)]
    if spec.in_chans == 1:
        steps.append(T.Grayscale(1))
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


def _load_cifar(cfg: DataConfig, spec: ImageSpec) -> Splits:
    from torchvision.datasets import CIFAR10, CIFAR100

    root = require_dir(cfg.path, f"{cfg.name} (torchvision format)")
    cls, num_classes = (CIFAR10, 10) if cfg.name == "cifar10" else (CIFAR100, 100)
    transform = pil_transform(spec)
    try:
        train_full = cls(str(root), train=True, download=False, transform=transform)
        test = cls(str(root), train=False, download=False, transform=transform)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise ConfigError(f"data.path: no {cfg.name} batches under {root} ({err})") from None
    train_idx, val_idx = _train_val_indices(len(train_full), cfg)
    train_labels, test_labels = np.asarray(train_full.targets), np.asarray(test.targets)
    return Splits(
        Subset(train_full, _cap(train_idx, cfg, train_labels, "train").tolist()),
        Subset(train_full, _cap(val_idx, cfg, train_labels, "val").tolist()),
        Subset(test, _cap(np.arange(len(test)), cfg, test_labels, "test").tolist()),
        num_classes=num_classes,
    )


def _load_imagefolder(cfg: DataConfig, spec: ImageSpec) -> Splits:
    from torchvision.datasets import ImageFolder

    root = require_dir(cfg.path, "ImageFolder")
    transform = pil_transform(spec)
    if (root / "train").is_dir() and (root / "val").is_dir():  # ImageNet layout
        train_full = ImageFolder(str(root / "train"), transform=transform)
        test = ImageFolder(str(root / "val"), transform=transform)
        train_idx, val_idx = _train_val_indices(len(train_full), cfg)
        parts = {"train": (train_full, train_idx), "val": (train_full, val_idx), "test": (test, np.arange(len(test)))}
    else:
        full = ImageFolder(str(root), transform=transform)
        idx = split_indices(len(full), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        parts = {name: (full, idx[name]) for name in SPLIT_NAMES}
    num_classes = len(parts["train"][0].classes)
    capped = [Subset(ds, _cap(ix, cfg, np.asarray(ds.targets), n).tolist()) for n, (ds, ix) in parts.items()]
    return Splits(*(capped[list(parts).index(n)] for n in SPLIT_NAMES), num_classes=num_classes)


def _load_fashion_mnist(cfg: DataConfig, spec: ImageSpec) -> Splits:
    from study.trial.idx import fashion_datasets, subset

    train_full, test = fashion_datasets(cfg, lambda pixels: _tensor_transform(pixels, spec))
    train_idx, val_idx = _train_val_indices(len(train_full), cfg)
    test_idx = np.arange(len(test))
    parts = (("train", train_full, train_idx), ("val", train_full, val_idx), ("test", test, test_idx))
    return Splits(*(subset(ds, _cap(ix, cfg, ds.labels, name)) for name, ds, ix in parts), num_classes=10)


@dataclass(frozen=True)
class DatasetKind:
    """A dataset the study can load (an entry of study/registry.py DATASETS).

    Args:
        load: (data config, the teacher's image spec) -> train / val / test `Splits`.
        spec: the native spec of a teacher trained on it from scratch (`native_spec`).
    """

    load: Callable[[DataConfig, ImageSpec], Splits]
    spec: ImageSpec


DIGITS = DatasetKind(_load_digits, DIGITS_SPEC)
FASHION_MNIST = DatasetKind(_load_fashion_mnist, FASHION_SPEC)
CIFAR10 = DatasetKind(_load_cifar, CIFAR_SPEC)
CIFAR100 = DatasetKind(_load_cifar, CIFAR_SPEC)
IMAGEFOLDER = DatasetKind(_load_imagefolder, IMAGEFOLDER_SPEC)


def load_splits(cfg: DataConfig, spec: ImageSpec | None = None) -> Splits:
    """Load the configured dataset as train / val / test for a teacher consuming `spec`."""
    return resolve(DATASETS, cfg.name).load(cfg, spec or native_spec(cfg))


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The labels [N] of a split's dataset, read without loading its images where the dataset allows it."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    for name in ("labels", "targets"):
        if hasattr(dataset, name):
            return np.asarray(getattr(dataset, name))
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
