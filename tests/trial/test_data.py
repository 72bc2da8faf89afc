import numpy as np
import pytest
import torch
from PIL import Image

from study.config import ConfigError
from study.teacher_config import DataConfig
from study.trial.data import ImageSpec, load_splits, native_spec, split_indices
from study.trial.sources import check_data_source

DIGITS_N = 1797


def test_split_indices_are_disjoint_cover_everything_and_match_fractions():
    idx = split_indices(DIGITS_N, val_fraction=0.1, test_fraction=0.2, seed=0)
    parts = [set(idx[name].tolist()) for name in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(DIGITS_N))
    assert len(idx["test"]) == round(0.2 * DIGITS_N) and len(idx["val"]) == round(0.1 * DIGITS_N)
    assert len(idx["train"]) == DIGITS_N - len(idx["test"]) - len(idx["val"])


def test_split_indices_deterministic_by_seed_and_different_across_seeds():
    a, b, c = (split_indices(DIGITS_N, 0.1, 0.2, seed) for seed in (3, 3, 4))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["test"], c["test"])


def test_digits_splits_shapes_fractions_and_determinism():
    cfg = DataConfig(val_fraction=0.15, test_fraction=0.25)
    splits = load_splits(cfg)
    sizes = {name: len(splits[name]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == DIGITS_N
    assert sizes["val"] == round(0.15 * DIGITS_N) and sizes["test"] == round(0.25 * DIGITS_N)
    image, label = splits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
    assert splits.num_classes == 10
    assert set(splits.test.tensors[1].tolist()) == set(range(10))
    # the splits are exactly the disjoint index split of the bundled images, in index order
    from sklearn.datasets import load_digits

    target = load_digits().target
    idx = split_indices(DIGITS_N, 0.15, 0.25, cfg.split_seed)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(splits[name].tensors[1].numpy(), target[idx[name]])

    again = load_splits(cfg)
    other = load_splits(DataConfig(val_fraction=0.15, test_fraction=0.25, split_seed=1))
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    assert torch.equal(again.test.tensors[1], splits.test.tensors[1])
    assert not torch.equal(other.test.tensors[0], splits.test.tensors[0])


def test_digits_normalisation_and_max_samples():
    splits = load_splits(DataConfig(max_samples=50))
    assert all(len(splits[name]) == 50 for name in ("train", "val", "test"))
    images = load_splits(DataConfig()).train.tensors[0]
    # normalised with the digits mean/std: roughly zero mean, unit std
    assert abs(images.mean().item()) < 0.15 and 0.8 < images.std().item() < 1.2


def test_image_spec_resizes_and_expands_channels():
    spec = ImageSpec(in_chans=3, size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    splits = load_splits(DataConfig(max_samples=20), spec)
    image, _ = splits.train[0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey expanded to RGB
    # data.image_size feeds the native spec of from-scratch teachers
    assert native_spec(DataConfig(image_size=16)).size == 16
    assert load_splits(DataConfig(image_size=16, max_samples=10)).train[0][0].shape == (1, 16, 16)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_local_dataset_folder_is_a_config_error_naming_data_path(tmp_path, name):
    cfg = DataConfig(name=name, path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^data\.path: .*not found"):
        load_splits(cfg)
    with pytest.raises(ConfigError, match=r"^data\.path"):
        check_data_source(cfg)


def test_cifar_folder_without_batches_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.path: no cifar10 batches"):
        load_splits(DataConfig(name="cifar10", path=str(tmp_path)))


def _write_images(folder, classes: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder_flat_layout_is_split_by_seed(tmp_path):
    _write_images(tmp_path, {"cat": 6, "dog": 4})
    cfg = DataConfig(name="imagefolder", path=str(tmp_path), val_fraction=0.2, test_fraction=0.2, image_size=16)
    splits = load_splits(cfg)
    assert splits.num_classes == 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    image, label = splits.train[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)
    labels = sorted(int(splits[name][i][1]) for name in ("train", "val", "test") for i in range(len(splits[name])))
    assert labels == [0] * 6 + [1] * 4


def test_imagefolder_train_val_layout(tmp_path):
    _write_images(tmp_path / "train", {"a": 5, "b": 5})
    _write_images(tmp_path / "val", {"a": 2, "b": 1}, seed=1)
    splits = load_splits(DataConfig(name="imagefolder", path=str(tmp_path), val_fraction=0.2, image_size=8))
    assert splits.num_classes == 2
    assert len(splits.test) == 3  # the val/ folder is the held-out test split
    assert len(splits.train) + len(splits.val) == 10 and len(splits.val) == 2
    assert splits.test[2][0].shape == (3, 8, 8) and int(splits.test[2][1]) == 1


def class_sorted_imagefolder(root, classes=10, per_class=40):
    """An ImageFolder whose files sort by class (class_0/..., class_1/...), tiny 4x4 images."""
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((4, 4, 3), (c * 20 + i) % 255, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_capped_imagefolder_splits_hold_every_class_in_proportion(tmp_path):
    root = class_sorted_imagefolder(tmp_path / "sorted")
    spec = ImageSpec(in_chans=3, size=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    full = load_splits(DataConfig(name="imagefolder", path=str(root)), spec)
    cfg = DataConfig(name="imagefolder", path=str(root), max_samples=60)
    capped = load_splits(cfg, spec)
    for name in ("train", "test"):  # val holds 40 images: under the cap
        uncapped = np.bincount([full[name].dataset.targets[i] for i in full[name].indices], minlength=10)
        labels = [capped[name].dataset.targets[i] for i in capped[name].indices]
        counts = np.bincount(labels, minlength=10)
        assert len(labels) == 60
        share = 60 * uncapped / uncapped.sum()
        assert np.all(np.abs(counts - share) <= 1.0), (name, counts, share)
        assert np.all(counts > 0), (name, counts)  # every class present (a prefix cap kept 2 of 10)
        assert set(capped[name].indices) <= set(full[name].indices)
    again = load_splits(cfg, spec)
    for name in ("train", "val", "test"):
        assert again[name].indices == capped[name].indices  # same seed -> same subset
    other = load_splits(DataConfig(name="imagefolder", path=str(root), max_samples=60, split_seed=1), spec)
    assert other.train.indices != capped.train.indices


def test_raptor_samples_caps_the_states_not_the_teacher(tmp_path, make_cfg):
    """`data.raptor_samples`: the Raptor sees a stratified subset of each split; the teacher (and its cache key)
    is the one trained on the whole capped split."""
    from study.trial.prepare import teacher_and_states

    full = make_cfg(tmp_path / "cache")
    capped = make_cfg(tmp_path / "cache", {"data.raptor_samples": 50})
    assert capped.teacher_key() == full.teacher_key()
    _, states, labels = teacher_and_states(capped, torch.device("cpu"))
    assert {len(states[s]) for s in states} == {50}
    counts = np.bincount(labels["train"], minlength=10)
    assert counts.sum() == 50 and counts.min() >= 4  # stratified: every digit kept
