"""The GPU study specs (docs/science.md: max-cut vs random, teachers in the paper's regime, the Raptor budget) load,
expand to the trials their headers promise, and each trial is a valid config; checked on CPU with tiny overrides."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from study.science.partition import random_boundaries
from study.sweep.space import load_sweep
from tests.conftest import TINY

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
PARTITION_SEEDS = [None, *range(10)]


def expand(spec) -> list[dict]:
    """Every grid point (the specs search choice lists only), as the trials' configs."""
    keys = list(spec.space)
    assert all(spec.space[key].choice is not None for key in keys) and spec.search.sampler == "grid"
    points = itertools.product(*(spec.space[key].choice for key in keys))
    return [spec.trial_config(dict(zip(keys, values))) for values in points]


def tiny(spec_name: str, extra: dict | None = None):
    """The spec shrunk to the tiny digits teacher (base fields the space searches stay as searched)."""
    spec = load_sweep(SPACES / f"{spec_name}.yaml")
    shrink = {key: value for key, value in TINY.items() if key not in spec.space}
    return load_sweep(SPACES / f"{spec_name}.yaml", {**shrink, "data.name": "digits", **(extra or {})})


def teachers(configs) -> set[str]:
    return {cfg.teacher_key() for cfg in configs}


def check_study_recipe(configs) -> None:
    for cfg in configs:
        assert cfg.teacher.sd_schedule == "uniform" and cfg.data.raptor_samples is None
        assert (cfg.distill.tf_mode, cfg.distill.anneal, cfg.distill.grad_clip) == ("loss_mix", 0.25, 1.0)


def test_fashion_sd_study_v2_covers_the_paper_regime():
    spec = load_sweep(SPACES / "fashion_sd_study_v2.yaml")
    configs = expand(spec)
    check_study_recipe(configs)
    assert {cfg.data.name for cfg in configs} == {"fashion_mnist"} and all(cfg.teacher.augment for cfg in configs)
    levels = sorted({cfg.teacher.sd_rate for cfg in configs})
    assert levels == pytest.approx([i / 10 for i in range(10)])
    for level in levels:
        assert len(teachers(c for c in configs if c.teacher.sd_rate == level)) >= 8
    assert {cfg.raptor.k for cfg in configs} == {2, 3, 4} and len(configs) == 240
    assert spec.purpose == "correlation" and spec.analysis.primary.target == "r2_pooled.final"
    assert len(expand(tiny("fashion_sd_study_v2"))) == 240


@pytest.mark.parametrize(
    "name,min_teachers,ks", [("maxcut_vs_random", 4, {2, 3}), ("maxcut_vs_random_fashion", 12, {2, 3, 4})]
)
def test_maxcut_specs_fit_the_dp_and_ten_random_partitions_per_teacher_and_k(name, min_teachers, ks):
    configs = expand(load_sweep(SPACES / f"{name}.yaml"))
    check_study_recipe(configs)
    assert len(teachers(configs)) >= min_teachers and {cfg.raptor.k for cfg in configs} == ks
    for key, k in itertools.product(teachers(configs), ks):
        fits = [c.partition for c in configs if c.teacher_key() == key and c.raptor.k == k]
        assert sorted((p.method, p.seed if p.seed is not None else -1) for p in fits) == [("dp", -1)] + [
            ("random", seed) for seed in range(10)
        ]
    assert len(expand(tiny(name))) == len(configs)


def test_maxcut_spec_trial_fits_its_random_partition(tmp_path):
    """A tiny trial of the digits spec with a random partition: the pipeline fits the drawn partition."""
    from study.trial.pipeline import run_trial

    spec = tiny("maxcut_vs_random", {"runtime.cache_dir": str(tmp_path / "cache")})
    cfg = spec.trial_config({"teacher.sd_rate": 0.5, "teacher.seed": 0, "raptor.k": 3, "partition.seed": 4})
    result = run_trial(cfg, tmp_path / "trial")
    ends = random_boundaries(cfg.teacher.depth, 3, 4) + [cfg.teacher.depth]
    assert result["partition"]["method"] == "random"
    assert result["partition"]["phase_bounds"] == [[a, b] for a, b in zip([1] + [e + 1 for e in ends[:-1]], ends)]
    assert result["partition"]["cut_value"] <= result["partition"]["cut_dp"] + 1e-9


def test_training_stages_fits_init_early_best_and_overfitted_checkpoints():
    spec = load_sweep(SPACES / "training_stages.yaml")
    configs = expand(spec)
    check_study_recipe(configs)
    assert not any(cfg.teacher.augment for cfg in configs)  # the late teacher overfits
    for level in (0.0, 0.4):
        assert len(teachers(c for c in configs if c.teacher.sd_rate == level)) >= 6
    assert {cfg.teacher.snapshot for cfg in configs} == {0, 3, "best", None}
    assert all(cfg.teacher.epochs >= 100 and cfg.teacher.snapshots == [0, 3] for cfg in configs)
    small = tiny(
        "training_stages", {"teacher.snapshots": [0, 1], "space.teacher.snapshot": {"choice": [0, 1, "best", None]}}
    )
    assert len(expand(small)) == len(configs)
