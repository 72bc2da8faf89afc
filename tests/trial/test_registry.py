"""The registries of study/registry.py: every entry resolves, config validation follows the tables, and a similarity
kind added as one function + one registry line drives a tiny digits trial's partition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from study import registry
from study.config import ConfigError
from study.contract import PHASE_KINDS
from study.science.partition import choose_partition
from study.science.similarity import layer_summaries
from study.trial.data import DatasetKind, native_spec


def test_every_registry_entry_resolves_to_its_kind_of_builder(tiny_cfg):
    for name in registry.DATASETS:
        assert isinstance(registry.resolve(registry.DATASETS, name), DatasetKind), name
    for kind in registry.SIMILARITY:
        assert callable(registry.resolve(registry.SIMILARITY, kind)), kind
    assert set(PHASE_KINDS) <= set(registry.SIMILARITY)  # the logged phase metrics are of registered kinds
    assert set(registry.DATASETS_WITHOUT_PATH) <= set(registry.DATASETS)
    assert native_spec(tiny_cfg.data).size == 8  # digits, through its registry entry


def cls_cosine(states, num_registers: int, device=None) -> np.ndarray:
    """A toy similarity kind: mean cosine of the cls tokens of two layers (layers 1..L)."""
    cls, _ = layer_summaries(states, num_registers, device=device)
    u = torch.nn.functional.normalize(cls[:, 1:].double(), dim=-1)
    return torch.einsum("nid,njd->ij", u, u).cpu().numpy() / len(u)


def test_a_registered_similarity_kind_drives_a_trial(make_cfg, session_cache, tmp_path, monkeypatch):
    overrides = {"similarity.partition_on": "cls_cosine", "dynamics.enabled": False, "distill.stage2.epochs": 0}
    with pytest.raises(ConfigError, match="similarity.partition_on: must be one of"):
        make_cfg(session_cache, overrides)
    monkeypatch.setitem(registry.SIMILARITY, "cls_cosine", cls_cosine)  # the one registry line
    from study.trial.pipeline import run_trial

    result = run_trial(make_cfg(session_cache, overrides), tmp_path)
    assert set(result["similarity"]) == set(registry.SIMILARITY)
    toy = np.asarray(result["similarity"]["cls_cosine"])
    assert toy.shape == (4, 4) and np.allclose(np.diag(toy), 1.0)
    expected, _ = choose_partition(1.0 - toy, 2, "dp", None)
    assert [list(b) for b in result["partition"]["phase_bounds"]] == [list(b) for b in expected.phase_bounds]
    assert json.loads((tmp_path / "result.json").read_text())["config"]["similarity"]["partition_on"] == "cls_cosine"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.name": "mnist"}, "data.name: must be one of 'digits', 'fashion_mnist'"),
        ({"eval.readouts": ["fidelity", "nope"]}, "eval.readouts: must be one of 'fidelity'"),
        ({"eval.readouts": ["probes", "probes"]}, "eval.readouts: each read-out at most once"),
    ],
)
def test_config_names_are_checked_against_the_tables(make_cfg, session_cache, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(session_cache, overrides)
