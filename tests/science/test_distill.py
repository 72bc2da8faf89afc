import copy
import io

import numpy as np
import pytest
import torch

from study.config import ConfigError, load_trial_config
from study.runtime import seed_everything
from study.science.distill import (
    DistillJob,
    GroupWeights,
    Stage1Objective,
    Stage2Objective,
    StateBatches,
    run_distillation,
    stage1_lambda,
    teacher_forcing_weight,
    train_step,
)
from study.science.fidelity import evaluate_fidelity
from study.science.raptor import Raptor

ONE_BLOCK_PER_LAYER = ((1, 1), (2, 2), (3, 3), (4, 4))
TWO_PHASES = ((1, 3), (4, 4))


def distill_cfg(prepared, overrides: dict):
    """The session's tiny trial config with distill.* / runtime.* overrides."""
    return load_trial_config(None, {**prepared.cfg.flat(), **overrides})


def as_tensor(states, n=None) -> torch.Tensor:
    return torch.from_numpy(np.array(states[:n] if n else states))


# --- teacher forcing schedule -------------------------------------------------
@pytest.mark.parametrize("step,expected", [(0, 0.5), (25, 0.25), (40, 0.1), (50, 0.0), (51, 0.0), (199, 0.0)])
def test_teacher_forcing_weight_anneals_linearly_to_zero(step, expected):
    # 200 stage-1 steps, anneal 0.25: the horizon is 50 steps
    assert teacher_forcing_weight(step, 200, anneal=0.25, start=0.5) == pytest.approx(expected)


def test_teacher_forcing_weight_zero_everywhere_without_annealing():
    assert all(teacher_forcing_weight(step, 100, anneal=0.0) == 0.0 for step in range(100))
    assert teacher_forcing_weight(0, 100, anneal=1.0, start=0.8) == 0.8
    assert teacher_forcing_weight(50, 100, anneal=1.0, start=0.8) == pytest.approx(0.4)


# --- loss ----------------------------------------------------------------------
def _pred_target(tokens: int, errors: list[tuple[slice, float]]):
    target = torch.randn(3, tokens, 5)
    pred = target.clone()
    for where, err in errors:
        pred[:, where] += err
    return pred, target


def test_group_weights_mse_with_registers():
    # token 0 = cls (error 1), tokens 1..2 = registers (error 2), tokens 3.. = patches (error 3)
    pred, target = _pred_target(9, [(slice(0, 1), 1.0), (slice(1, 3), 2.0), (slice(3, None), 3.0)])
    weights = GroupWeights(cls=0.2, reg=0.3, patch=0.5, num_registers=2)
    assert weights.mse(pred, target).item() == pytest.approx(0.2 * 1 + 0.3 * 4 + 0.5 * 9, rel=1e-5)
    assert GroupWeights(1.0, 0.0, 0.0, 2).mse(pred, target).item() == pytest.approx(1.0, rel=1e-5)


def test_group_weights_mse_without_registers_ignores_lambda_reg():
    pred, target = _pred_target(9, [(slice(0, 1), 1.0), (slice(1, None), 3.0)])
    for reg in (0.0, 0.7):
        assert GroupWeights(0.2, reg, 0.5, 0).mse(pred, target).item() == pytest.approx(0.2 * 1 + 0.5 * 9, rel=1e-5)


def test_group_weights_of_stage_config_are_renormalised_to_sum_one():
    cfg = load_trial_config()
    weights = GroupWeights.of(cfg.distill.stage2, num_registers=4)
    assert (weights.cls, weights.reg, weights.patch, weights.num_registers) == pytest.approx((0.45, 0.10, 0.45, 4))
    doubled = load_trial_config(
        None, {"distill.stage2.lambda_cls": 0.9, "distill.stage2.lambda_reg": 0.2, "distill.stage2.lambda_patch": 0.9}
    ).distill.stage2
    scaled = GroupWeights.of(doubled, 4)
    assert (scaled.cls, scaled.reg, scaled.patch) == pytest.approx((weights.cls, weights.reg, weights.patch))
    # without registers the register weight drops out and cls + patch sum to 1
    no_reg = GroupWeights.of(cfg.distill.stage1, num_registers=0)
    assert (no_reg.cls, no_reg.reg, no_reg.patch) == pytest.approx((0.34 / 0.67, 0.0, 0.33 / 0.67))
    only_reg = load_trial_config(
        None, {"distill.stage1.lambda_cls": 0, "distill.stage1.lambda_patch": 0}
    ).distill.stage1
    with pytest.raises(ConfigError, match="distill.stage1"):
        GroupWeights.of(only_reg, 0, "stage1")


@pytest.mark.parametrize(
    "arm, mode, expected",
    [
        ("tf_only", "loss_mix", [1.0, 1.0, 1.0]),
        ("ar_only", "loss_mix", [0.0, 0.0, 0.0]),
        ("full", "loss_mix", [1.0, 0.5, 0.0]),
        ("ar_anneal", "loss_mix", [1.0, 0.5, 0.0]),
        ("full", "input_mix", [0.5, 0.25, 0.0]),
    ],
)
def test_stage1_lambda_per_arm_and_mode(arm, mode, expected):
    cfg = load_trial_config(None, {"distill.arm": arm, "distill.tf_mode": mode, "distill.anneal": 0.5}).distill
    assert [stage1_lambda(step, 100, cfg) for step in (0, 25, 50)] == pytest.approx(expected)
    assert cfg.stage2_runs == (arm == "full")


# --- objectives ------------------------------------------------------------------
def test_objectives_are_zero_on_teacher_states_for_k_equal_depth(prepared, teacher_model):
    """With k == L, teacher init and identity conditioning the Raptor IS the teacher."""
    from study.science.states import teacher_states
    from study.trial.data import load_splits

    raptor = Raptor(teacher_model, ONE_BLOCK_PER_LAYER, init="teacher")
    images = load_splits(prepared.cfg.data, prepared.teacher.spec).train.tensors[0][:32]
    states = teacher_states(teacher_model, images)
    weights = GroupWeights(0.34, 0.33, 0.33, 0)
    assert Stage1Objective(raptor, weights, 0.0)(states, lambda_tf=1.0).item() == 0.0
    assert Stage1Objective(raptor, weights, 0.0)(states, lambda_tf=0.0).item() == 0.0
    assert Stage2Objective(raptor, weights, 0.0)(states).item() == 0.0
    # with tied weights (k < L) layers 2..3 use block 1's weights: the loss is no longer zero
    tied = Raptor(teacher_model, TWO_PHASES, init="teacher")
    assert Stage1Objective(tied, weights, 0.0)(states, lambda_tf=1.0).item() > 0.0
    # noise on the inputs makes it non-zero too
    assert Stage1Objective(raptor, weights, 0.5)(states, lambda_tf=1.0).item() > 0.0


def test_stage1_teacher_forcing_feeds_teacher_states(prepared, teacher_model):
    """lambda_tf = 1: every step sees the teacher's input, so stage 1 equals the sum of one-step losses."""
    raptor = Raptor(teacher_model, TWO_PHASES, init="teacher")
    states = as_tensor(prepared.states["train"], 16)
    weights = GroupWeights(0.34, 0.33, 0.33, 0)
    with torch.no_grad():
        scales = raptor.cond()
        one_step = sum(weights.mse(raptor.step(states[:, i - 1], i, scales), states[:, i]) for i in range(1, 5)) / 4
        forced = Stage1Objective(raptor, weights, 0.0)(states, lambda_tf=1.0)
        free = Stage1Objective(raptor, weights, 0.0)(states, lambda_tf=0.0)
    torch.testing.assert_close(forced, one_step)
    assert not torch.isclose(free, forced)
    # loss_mix: lambda 1 is the same one-step loss; lambda 0 the free rollout; in between their mix
    with torch.no_grad():
        mix = Stage1Objective(raptor, weights, 0.0, mode="loss_mix")
        torch.testing.assert_close(mix(states, 1.0), one_step)
        torch.testing.assert_close(mix(states, 0.0), free)
        torch.testing.assert_close(mix(states, 0.3), 0.3 * one_step + 0.7 * free)
        torch.testing.assert_close(mix(states, torch.tensor(0.3)), 0.3 * one_step + 0.7 * free)  # graph-replay form


def test_gradient_clipping_bounds_the_update_norm():
    """train_step clips the global gradient norm at grad_clip before the optimiser step (plain SGD shows it)."""
    layer = torch.nn.Linear(4, 1, bias=False)
    objective = lambda batch, lam: (1e3 * layer(batch)).sum()  # noqa: E731  (a huge gradient)
    batch = torch.ones(2, 4)
    for clip, expected in ((1.0, 1.0), (0.0, None)):
        torch.nn.init.zeros_(layer.weight)
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        train_step(objective, opt, batch, 0.0, torch.device("cpu"), False, grad_clip=clip)
        moved = layer.weight.detach().norm().item()
        if expected is None:
            assert moved == pytest.approx(2e3 * 2.0)  # unclipped: |grad| = 1e3 * 2 * sqrt(4)
        else:
            assert moved == pytest.approx(expected, rel=1e-5)


def test_arms_skip_stage2(prepared, teacher_model):
    for arm, stages in (("tf_only", {1}), ("full", {1, 2})):
        cfg = distill_cfg(prepared, {"distill.arm": arm, "distill.tf_mode": "loss_mix"})
        history = _run(prepared, cfg, Raptor(teacher_model, TWO_PHASES, init="teacher"))
        assert {r["stage"] for r in history} == stages
        if arm == "tf_only":
            assert all(r["lambda_tf"] == 1.0 for r in history)


# --- batches -----------------------------------------------------------------------
def test_state_batches_resident_and_streaming_agree(prepared):
    states = prepared.states["train"]
    resident = StateBatches(states, 64, torch.device("cpu"))
    streaming = StateBatches(states, 64, torch.device("cpu"), device_budget=0)
    assert resident.resident is not None and streaming.resident is None
    assert len(resident) == len(states) // 64
    a, b = list(resident.epoch(3, seed=1)), list(streaming.epoch(3, seed=1))
    assert len(a) == len(b) == len(resident)
    # streaming sorts each batch's indices (memmap-friendly); the set of samples is the same
    for x, y in zip(a, b):
        assert x.shape == (64, 5, 17, 32)
        assert torch.equal(torch.sort(x.flatten(1), dim=0).values, torch.sort(y.flatten(1), dim=0).values)
    assert not torch.equal(a[0], list(resident.epoch(4, seed=1))[0]), "each epoch is reshuffled"


# --- training ------------------------------------------------------------------------
def _run(prepared, cfg, raptor, **kwargs):
    states, cpu = prepared.states, torch.device("cpu")
    return run_distillation(
        DistillJob(raptor, states["train"], states["val"], cfg.distill, cfg.runtime, cpu, 0, cfg.seed, **kwargs)
    )


def _stage2_loss(raptor, states) -> float:
    with torch.no_grad():
        return Stage2Objective(raptor, GroupWeights(0.45, 0.10, 0.45, 0), 0.0)(as_tensor(states)).item()


def test_short_distillation_lowers_the_loss(prepared, teacher_model):
    cfg = distill_cfg(
        prepared,
        {"distill.stage1.epochs": 2, "distill.stage2.epochs": 2, "distill.stage1.lr": 2e-3, "distill.stage2.lr": 2e-3},
    )
    seed_everything(0)
    raptor = Raptor(teacher_model, TWO_PHASES, init="random")
    before = _stage2_loss(raptor, prepared.states["val"])
    r2_before = evaluate_fidelity(raptor, prepared.states["val"], 0, torch.device("cpu"), False)[0]["all"][-1]
    history = _run(prepared, cfg, raptor)
    after = _stage2_loss(raptor, prepared.states["val"])
    assert after < 0.5 * before, (before, after)
    assert history[-1]["val_r2"] > r2_before
    assert [(r["stage"], r["epoch"]) for r in history] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert history[0]["loss"] > history[1]["loss"]
    assert all(np.isfinite(r["loss"]) and r["val_r2"] <= 1 for r in history)
    assert history[0]["lambda_tf"] == 0.0 and all(r["lambda_tf"] == 0.0 for r in history if r["stage"] == 2)


def test_stage_switches_skip_stages(prepared, teacher_model):
    only1 = _run(prepared, distill_cfg(prepared, {"distill.stage2.enabled": False}), Raptor(teacher_model, TWO_PHASES))
    only2 = _run(prepared, distill_cfg(prepared, {"distill.stage1.enabled": False}), Raptor(teacher_model, TWO_PHASES))
    zero1 = _run(prepared, distill_cfg(prepared, {"distill.stage1.epochs": 0}), Raptor(teacher_model, TWO_PHASES))
    assert [r["stage"] for r in only1] == [1]
    assert [r["stage"] for r in only2] == [2]
    assert [r["stage"] for r in zero1] == [2]
    raptor = Raptor(teacher_model, TWO_PHASES)
    initial = copy.deepcopy(raptor.state_dict())
    none = _run(
        prepared, distill_cfg(prepared, {"distill.stage1.enabled": False, "distill.stage2.enabled": False}), raptor
    )
    assert none == []
    assert all(torch.equal(initial[k], v) for k, v in raptor.state_dict().items()), "no stage, no update"


class Interrupted(Exception):
    pass


RESUME_CFG = {"distill.stage1.epochs": 2, "distill.stage2.epochs": 2, "seed": 3}


def _fresh_random_raptor(teacher_model, seed=3):
    seed_everything(seed)
    return Raptor(teacher_model, TWO_PHASES, init="random")


@pytest.fixture(scope="module")
def uninterrupted(prepared):
    """(history, final state dict) of a 2 + 2 epoch run that is never interrupted."""
    raptor = _fresh_random_raptor(prepared.teacher.model)
    history = _run(prepared, distill_cfg(prepared, RESUME_CFG), raptor)
    return history, copy.deepcopy(raptor.state_dict())


@pytest.mark.parametrize("stop_at", [(1, 0), (1, 1), (2, 0)])
def test_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run(
    prepared, teacher_model, uninterrupted, stop_at
):
    """Interrupt after `stop_at` = (stage, epoch), resume from the state the trial would have
    saved (round-tripped through torch.save like distill_state.pt), and compare with a run
    that was never interrupted. Everything is seeded and on one CPU thread with no noise, so
    the runs perform the same float operations in the same order and agree to float32
    round-off; the tolerance (1e-6) only allows for intra-op thread scheduling.
    (2, 0) guards a fixed bug: a stage-2 resume state was dropped after stage 1, so training
    went on from the fresh init instead of the saved weights."""
    cfg = distill_cfg(prepared, RESUME_CFG)
    reference_history, reference_state = uninterrupted
    saved = {}

    def interrupt(record, state_fn):
        if (record["stage"], record["epoch"]) == stop_at:
            buffer = io.BytesIO()
            torch.save(state_fn(), buffer)
            saved["state"] = buffer.getvalue()
            raise Interrupted

    with pytest.raises(Interrupted):
        _run(prepared, cfg, _fresh_random_raptor(teacher_model), on_epoch=interrupt)
    state = torch.load(io.BytesIO(saved["state"]), weights_only=False)
    assert (state["stage"], state["epoch"]) == stop_at

    epochs_run = []
    resumed = _fresh_random_raptor(teacher_model, seed=99)  # a new process, another init: the resume state decides
    history = _run(
        prepared,
        cfg,
        resumed,
        resume=state,
        on_epoch=lambda record, _: epochs_run.append((record["stage"], record["epoch"])),
    )
    remaining = [(r["stage"], r["epoch"]) for r in reference_history]
    assert epochs_run == remaining[remaining.index(stop_at) + 1 :], "resume continues at the next epoch"
    assert [(r["stage"], r["epoch"]) for r in history] == remaining
    for mine, ref in zip(history, reference_history):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert mine["val_r2"] == pytest.approx(ref["val_r2"], abs=1e-6)
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, reference_state[name], rtol=1e-6, atol=1e-6, msg=name)
