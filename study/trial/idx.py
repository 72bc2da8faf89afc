"""Fashion-MNIST from its original IDX files, parsed with numpy (no network, no torchvision download).

The Debian package `dataset-fashion-mnist` installs the four gzip IDX files in
`study.trial.sources.FASHION_MNIST_DIR` (`make data`, or `apt-get install dataset-fashion-mnist`); `data.path`
points at another folder holding the same files, gzipped or not (e.g. the GPU machine's
copy unpacked by bench/device_env.sh). 60,000 train and 10,000 test images, 28 x 28 grey,
10 balanced classes. The train file is split into train / val by `split_seed`; the
dataset's own test file is the test split.

IDX format (the files' own documentation): a 4-byte magic `0x00 0x00 <type> <ndim>`,
then `ndim` big-endian uint32 sizes, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from study.config import ConfigError
from study.teacher_config import DataConfig
from study.trial.sources import fashion_files

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# IDX type byte -> numpy dtype (big-endian where it matters)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(blob: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode the bytes of one IDX file into an array of its declared shape and type."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ConfigError(f"data.path: {name} is not an IDX file (bad magic number)")
    kind, ndim = blob[2], blob[3]
    if kind not in _IDX_TYPES:
        raise ConfigError(f"data.path: {name} has unknown IDX data type 0x{kind:02x}")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise ConfigError(f"data.path: {name} is truncated (header of {ndim} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[kind]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) - header != expected:
        raise ConfigError(
            f"data.path: {name} holds {len(blob) - header} data bytes, its header {shape} needs {expected}"
        )
    data = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else data


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped (`.gz`) or not."""
    path = Path(path)
    blob = path.read_bytes()
    if blob[:2] == b"\x1f\x8b":  # gzip magic
        blob = gzip.decompress(blob)
    return parse_idx(blob, path.name)


class GreyImages(Dataset):
    """uint8 images [N, H, W] + labels, transformed on access to the teacher's ImageSpec."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        if len(images) != len(labels):
            raise ConfigError(f"data.path: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def _batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.images[index].astype(np.float32) / 255.0).unsqueeze(1)  # [n, 1, H, W]
        return self.transform(pixels), torch.from_numpy(self.labels[index])

    def __getitem__(self, i: int):
        images, labels = self._batch(np.array([i]))
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]):
        """Batched fetch for DataLoader: one resize for the whole batch."""
        images, labels = self._batch(np.asarray(indices))
        return list(zip(images, labels))


def load_fashion_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The four arrays, shape-checked: train/test images [N, 28, 28] uint8 and labels [N] in 0..9."""
    arrays = {key: read_idx(path) for key, path in fashion_files(cfg).items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"data.path: Fashion-MNIST {split} files have shapes {images.shape} and {labels.shape}")
        if labels.size and not 0 <= labels.min() <= labels.max() < len(FASHION_CLASSES):
            raise ConfigError(f"data.path: Fashion-MNIST {split} labels outside 0..9")
    return arrays


def fashion_datasets(cfg: DataConfig, transform) -> tuple[GreyImages, GreyImages]:
    """(train-file dataset, test-file dataset), images transformed by `transform` on access."""
    arrays = load_fashion_arrays(cfg)
    return (
        GreyImages(arrays["train_images"], arrays["train_labels"], transform),
        GreyImages(arrays["test_images"], arrays["test_labels"], transform),
    )


def subset(dataset: Dataset, indices: np.ndarray) -> Subset:
    return Subset(dataset, [int(i) for i in indices])
