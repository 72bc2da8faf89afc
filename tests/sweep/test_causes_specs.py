"""The causes study specs (docs/science.md, "Beyond the paper: what causes block recurrence"): each varies one teacher
knob from the v2 base teacher, with >= 6 teacher seeds per level and SD rate, and bench/causes_chunk.sh cuts each into
sweeps of one level at one SD rate; checked on CPU by expanding the grids."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from study.cli import parse_overrides
from study.sweep.space import load_sweep
from tests.sweep.test_study_specs import SPACES, check_study_recipe, expand, teachers

ROOT = SPACES.parent
FACTORS = {  # spec -> (field, base level, other levels)
    "layerscale": ("layerscale_init", 0.1, [1e-5, 1e-2, None]),
    "depth": ("depth", 12, [6, 18]),
    "residual_scale": ("residual_scale", 1.0, ["inv_sqrt_depth"]),
    "weight_decay": ("weight_decay", 0.05, [0.005, 0.5]),
    "sd_schedule": ("sd_schedule", "uniform", ["linear"]),
    "augmentation": ("augment", True, [False]),
}


FAST = {"dynamics.enabled": False, "similarity.num_samples": 256, "data.max_samples": 200}


def _recipe(teacher, **update) -> dict:
    """The teacher's recipe, but for what every study varies (seed, SD rate) and its read-outs."""
    return teacher.model_copy(update=update).model_dump(exclude={"seed", "sd_rate", "track_phases", "track_samples"})


@pytest.mark.parametrize("factor", list(FACTORS))
def test_causes_spec_varies_one_knob_from_the_v2_base_teacher(factor):
    field, base, others = FACTORS[factor]
    spec = load_sweep(SPACES / f"causes_{factor}.yaml")
    configs = expand(spec)
    check_study_recipe([c for c in configs if c.teacher.sd_schedule == "uniform"])
    levels = [base, *others]
    assert len(configs) == len(levels) * 2 * 6 * 2
    assert {cfg.raptor.k for cfg in configs} == {2, 3} and {cfg.teacher.sd_rate for cfg in configs} == {0.0, 0.4}
    assert all(cfg.teacher.track_phases > 0 for cfg in configs)  # emergence for every teacher
    assert [level for level in levels if any(getattr(c.teacher, field) == level for c in configs)] == levels
    for level, sd in itertools.product(levels, (0.0, 0.4)):
        at = [c for c in configs if getattr(c.teacher, field) == level and c.teacher.sd_rate == sd]
        assert len(teachers(at)) >= 6
    v2 = expand(load_sweep(SPACES / "fashion_sd_study_v2.yaml"))[0]
    for cfg in configs:  # only the factor differs from the v2 teacher; the Raptor budget is v2's
        assert _recipe(cfg.teacher, **{field: base}) == _recipe(v2.teacher)
        assert (cfg.data, cfg.distill, cfg.similarity) == (v2.data, v2.distill, v2.similarity)
    assert spec.purpose == "correlation" and spec.analysis.primary.target == "r2_pooled.final"
    header = (SPACES / f"causes_{factor}.yaml").read_text().split("\nname:")[0]
    for line in ("# Purpose:", "# Run time (estimated", "# Results: results/causes/", "# Command"):
        assert line in header


def test_every_causes_spec_shares_the_base_teachers():
    keys = [
        teachers(c for c in expand(load_sweep(SPACES / f"causes_{factor}.yaml")) if getattr(c.teacher, f) == base)
        for factor, (f, base, _) in FACTORS.items()
    ]
    assert len(keys[0]) == 12 and all(k == keys[0] for k in keys)


def _chunk(*args: str) -> list:
    out = subprocess.run(
        ["bash", "bench/causes_chunk.sh", *args],
        cwd=ROOT,
        env={**os.environ, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    spec = Path(ROOT / out[4])
    sets = [value for flag, value in zip(out, out[1:]) if flag == "--set"]
    return expand(load_sweep(spec, parse_overrides(sets)))


@pytest.mark.parametrize(
    "args,field,level",
    [
        (("base", "0.0"), "layerscale_init", 0.1),
        (("layerscale", "null", "0.4"), "layerscale_init", None),
        (("residual_scale", "inv_sqrt_depth", "0.0"), "residual_scale", "inv_sqrt_depth"),
        (("augmentation", "false", "0.4"), "augment", False),
    ],
)
def test_a_chunk_is_one_level_at_one_sd_rate(args, field, level):
    configs = _chunk(*args)
    assert len(configs) == 12 and len(teachers(configs)) == 6
    assert {getattr(c.teacher, field) for c in configs} == {level}
    assert {c.teacher.sd_rate for c in configs} == {float(args[-1])}


def test_a_tiny_causes_trial_keeps_the_emergence_of_a_teacher_without_layerscale(tmp_path):
    """A causes trial shrunk to the tiny digits teacher: no LayerScale, the 1/sqrt(depth) branch scale, SD 0.4, and
    the phase snapshots of its training."""
    from study.contract import EMERGENCE_KEY
    from study.trial.pipeline import run_trial
    from tests.sweep.test_study_specs import tiny

    extra = {"runtime.cache_dir": str(tmp_path / "cache"), "teacher.residual_scale": "inv_sqrt_depth"}
    spec = tiny("causes_layerscale", {**extra, "teacher.track_samples": 64, "teacher.track_phases": 1, **FAST})
    cfg = spec.trial_config({"teacher.layerscale_init": None, "teacher.sd_rate": 0.4, "teacher.seed": 0, "raptor.k": 2})
    result = run_trial(cfg, tmp_path / "trial")
    assert [snap["epoch"] for snap in result["teacher"][EMERGENCE_KEY]] == [0, 1, 2]
    assert result["config"]["teacher"]["layerscale_init"] is None
