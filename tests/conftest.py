"""Shared fixtures: a TINY trial config and one prepared trial per session.

The tiny teacher (digits 8x8, patch 2 -> 16 patches + cls = 17 tokens, depth 4,
width 32, 2 heads, 2 epochs, at most 400 images per split) trains in ~2 s on one CPU thread; the session
fixture `prepared` trains it once and caches its states, so every test that
needs a teacher reuses the same cache folder (`tiny_overrides['runtime.cache_dir']`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.config import TrialConfig, load_trial_config

TINY = {
    "teacher.depth": 4,
    "teacher.width": 32,
    "teacher.heads": 2,
    "teacher.epochs": 2,
    "teacher.warmup_epochs": 1,
    "teacher.patch_size": 2,
    "data.max_samples": 400,
    "distill.stage1.epochs": 1,
    "distill.stage2.epochs": 1,
    "distill.batch_size": 64,
    "similarity.num_samples": 512,
    "dynamics.replace_draws": 4,  # the default 20 is checked in tests/science/test_replacement.py; 4 keeps trials quick
    "runtime.device": "cpu",
    "runtime.progress": False,
    "runtime.num_threads": 1,
}

CPU = torch.device("cpu")

# One intra-op thread for the whole session (what runtime.num_threads=1 sets in
# trial.prepare): tiny models gain nothing from more, and a 2-core CI box shared with
# other jobs slows down badly when torch threads spin against each other.
torch.set_num_threads(1)


def tiny_config(cache_dir: Path | str, overrides: dict | None = None) -> TrialConfig:
    """The tiny trial config with its cache in `cache_dir`, plus dotted `overrides`."""
    return load_trial_config(None, {**TINY, "runtime.cache_dir": str(cache_dir), **(overrides or {})})


def pytest_collection_modifyitems(config, items):
    """Tests marked e2e (real Ray / MLflow processes, up to a minute each) run first, each file in its order: under
    the Makefile's `pytest -n 2 --dist worksteal` the long ones start early and the ~900 short ones fill the gaps,
    instead of one worker finishing a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="session")
def make_cfg():
    """Factory: make_cfg(cache_dir, {'dotted.key': value}) -> a tiny TrialConfig."""
    return tiny_config


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """Cache folder shared by the whole session (holds the tiny teacher and its states)."""
    return tmp_path_factory.mktemp("raptor_cache")


@pytest.fixture(scope="session")
def tiny_overrides(session_cache) -> dict:
    """The dotted overrides of the session's tiny config (for CLI `--set` and variants)."""
    return {**TINY, "runtime.cache_dir": str(session_cache)}


@pytest.fixture(scope="session")
def tiny_cfg(tiny_overrides) -> TrialConfig:
    return load_trial_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def prepared(tiny_cfg):
    """Teacher trained once per session, states of every split cached, k=2 partition."""
    from study.trial.pipeline import prepare

    return prepare(tiny_cfg)


@pytest.fixture
def teacher_model(prepared):
    """The session teacher's (frozen, eval-mode) timm VisionTransformer."""
    return prepared.teacher.model


@pytest.fixture
def cpu() -> torch.device:
    return CPU
