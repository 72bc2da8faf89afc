"""The switches of the paper's ablation rows: `raptor.depth_scaling` and `distill.cls_weighting`."""

import numpy as np
import pytest
import torch

from study.config import load_trial_config
from study.contract import ARM_PARAM, CLS_WEIGHTING_PARAM, DEPTH_SCALING_PARAM
from study.science.distill import DistillJob, GroupWeights, run_distillation
from study.science.raptor import DepthConditioner, Raptor

TWO_PHASES = ((1, 3), (4, 4))


def test_depth_scaling_off_fixes_every_scale_at_one_with_no_parameters():
    cond = DepthConditioner(num_layers=6, width=8, hidden=4, enabled=False)
    scales = cond()
    assert scales.shape == (6, 3, 8) and torch.equal(scales, torch.ones(6, 3, 8))
    assert list(cond.parameters()) == []


def test_raptor_without_depth_scaling_trains_only_its_blocks(prepared, teacher_model):
    cfg = load_trial_config(None, {**prepared.cfg.flat(), "distill.stage1.epochs": 1, "distill.stage2.epochs": 1})
    off = Raptor(teacher_model, TWO_PHASES, init="teacher", depth_scaling=False)
    on = Raptor(teacher_model, TWO_PHASES, init="teacher")
    assert {name.split(".")[0] for name, p in off.named_parameters() if p.requires_grad} == {"blocks"}
    x0 = torch.from_numpy(np.array(prepared.states["test"][:8, 0]))
    with torch.no_grad():  # at init both apply scales of exactly 1
        torch.testing.assert_close(off.rollout(x0), on.rollout(x0), rtol=0, atol=0)
    before = off.blocks[0].attn.qkv.weight.clone()
    states = prepared.states
    run_distillation(
        DistillJob(off, states["train"], states["val"], cfg.distill, cfg.runtime, torch.device("cpu"), 0, 0)
    )
    assert torch.equal(off.cond(), torch.ones_like(off.cond()))
    assert not torch.equal(off.blocks[0].attn.qkv.weight, before)


@pytest.mark.parametrize("registers", [0, 2])
def test_uniform_weights_are_the_plain_mean_over_tokens(registers):
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 9, 5, generator=gen), torch.randn(3, 9, 5, generator=gen)
    weights = GroupWeights.uniform(num_tokens=9, num_registers=registers)
    assert weights.cls + weights.reg + weights.patch == pytest.approx(1.0)
    torch.testing.assert_close(weights.mse(pred, target), (pred - target).square().mean())
    weighted = GroupWeights(0.45, 0.10 if registers else 0.0, 0.45, registers)
    assert not torch.allclose(weighted.mse(pred, target), (pred - target).square().mean())


def test_cls_weighting_switch_picks_the_weights(tiny_cfg):
    on = GroupWeights.for_stage(tiny_cfg.distill, 2, num_tokens=17, num_registers=0)
    assert (on.cls, on.patch) == pytest.approx((0.5, 0.5))  # stage 2's 0.45 / 0.45, renormalised without registers
    off_cfg = load_trial_config(None, {**tiny_cfg.flat(), CLS_WEIGHTING_PARAM: False})
    for stage in (1, 2):
        off = GroupWeights.for_stage(off_cfg.distill, stage, num_tokens=17, num_registers=0)
        assert off == GroupWeights.uniform(17, 0)


def test_switches_are_config_params_named_in_the_contract(tiny_cfg):
    flat = tiny_cfg.flat()
    assert flat[DEPTH_SCALING_PARAM] is True and flat[CLS_WEIGHTING_PARAM] is True and flat[ARM_PARAM] == "full"


def test_a_partly_given_stage2_keeps_stage2_default_weights():
    """Setting one stage-2 field (a spec's `stage2: {epochs: 4}`) must not reset its weights to stage 1's."""
    default = load_trial_config(None, {}).distill.stage2
    partial = load_trial_config(None, {"distill.stage2.epochs": 3, "distill.stage2.lambda_patch": 0.2}).distill.stage2
    assert (default.lambda_cls, default.lambda_reg, default.lambda_patch) == (0.45, 0.10, 0.45)
    assert (partial.epochs, partial.lambda_cls, partial.lambda_reg, partial.lambda_patch) == (3, 0.45, 0.10, 0.2)
