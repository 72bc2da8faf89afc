"""Teacher knobs of the causes study (docs/science.md, "Beyond the paper: what causes block recurrence"): the residual
branch scale and teachers without LayerScale; what they do to the forward pass, the cache key and a trial."""

import pytest
import torch

from study.config import ConfigError, load_trial_config
from study.contract import R2_POOLED_FINAL
from study.science.raptor import Raptor
from study.trial.data import native_spec
from study.trial.teacher import build_scratch_model


def _models(make_cfg, tmp_path, overrides: dict):
    """The teacher at init with `overrides`, and the same teacher (same seed) without a branch scale."""
    built = []
    for extra in (overrides, {**overrides, "teacher.residual_scale": 1.0}):
        cfg = make_cfg(tmp_path, extra)
        torch.manual_seed(0)
        built.append(build_scratch_model(cfg, native_spec(cfg.data), 10).eval())
    return built


@pytest.mark.parametrize(
    "overrides,scale",
    [
        ({"teacher.residual_scale": "inv_sqrt_depth"}, 0.5),  # tiny depth 4
        ({"teacher.residual_scale": 0.3, "teacher.layerscale_init": None}, 0.3),
        ({"teacher.residual_scale": 2.0, "teacher.layerscale_init": 0.05}, 2.0),
    ],
)
def test_residual_scale_multiplies_both_branches_of_every_block(make_cfg, tmp_path, overrides, scale):
    scaled, plain = _models(make_cfg, tmp_path, overrides)
    weights, reference = scaled.state_dict(), plain.state_dict()
    assert weights.keys() == reference.keys() and all(torch.equal(weights[n], reference[n]) for n in weights)
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        for block, base in zip(scaled.blocks, plain.blocks):
            expected = x + scale * base.ls1(base.attn(base.norm1(x)))
            expected = expected + scale * base.ls2(base.mlp(base.norm2(expected)))
            assert torch.allclose(block(x), expected, atol=1e-6)
            assert not torch.allclose(block(x), base(x), atol=1e-4)
        # the Raptor copies the teacher's blocks, factor included: at init its step is the teacher's block
        raptor = Raptor(scaled, [(1, 2), (3, 4)]).eval()
        assert torch.allclose(raptor.step(x, 1), scaled.blocks[0](x), atol=1e-6)


def test_without_layerscale_the_blocks_have_no_gamma(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, {"teacher.layerscale_init": None})
    model = build_scratch_model(cfg, native_spec(cfg.data), 10)
    assert not any(name.endswith("gamma") for name in model.state_dict())


def test_residual_scale_keys_only_when_not_one():
    base = load_trial_config(None, {"teacher.sd_rate": 0.4})
    assert "residual_scale" not in base.teacher.key_fields()
    assert load_trial_config(None, {"teacher.sd_rate": 0.4, "teacher.residual_scale": 1}).teacher_key() == (
        base.teacher_key()
    )
    keys = {
        load_trial_config(None, {"teacher.sd_rate": 0.4, "teacher.residual_scale": value}).teacher_key()
        for value in ("inv_sqrt_depth", 0.5, 2.0)
    }
    assert len(keys) == 3 and base.teacher_key() not in keys
    assert load_trial_config(None, {"teacher.layerscale_init": None}).teacher_key() != base.teacher_key()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"teacher.residual_scale": 0}, r"teacher.residual_scale: a number in \(0, 10\] or 'inv_sqrt_depth'"),
        ({"teacher.residual_scale": "sqrt_depth"}, "teacher.residual_scale"),
        ({"teacher.residual_scale": 11}, "teacher.residual_scale"),
        (
            {"teacher.residual_scale": 0.5, "teacher.source": "timm", "teacher.timm_name": "vit_tiny"},
            "teacher.residual_scale: set on teachers trained from scratch only",
        ),
        ({"teacher.layerscale_init": 0}, "teacher.layerscale_init"),
    ],
)
def test_bad_causes_knobs_are_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_trial_config(None, overrides)
    assert "\n" not in str(err.value)


def test_a_tiny_trial_runs_with_a_residual_scale(make_cfg, tmp_path):
    """(inv_sqrt_depth without LayerScale: tests/sweep/test_causes_specs.py, through a causes spec.)"""
    from study.trial.pipeline import run_trial

    overrides = {"teacher.residual_scale": 0.5}
    cfg = make_cfg(tmp_path / "cache", {**overrides, "data.max_samples": 200, "raptor.k": 2, "dynamics.enabled": False})
    result = run_trial(cfg, tmp_path / "trial")
    assert result["config"]["teacher"]["residual_scale"] == overrides["teacher.residual_scale"]
    assert -1.0 < result["metrics"][R2_POOLED_FINAL] <= 1.0
