import numpy as np
import pytest
import torch
from timm.layers import LayerScale

from study.science.raptor import DepthConditioner, Raptor

ONE_BLOCK_PER_LAYER = ((1, 1), (2, 2), (3, 3), (4, 4))
TWO_PHASES = ((1, 3), (4, 4))


def states_batch(prepared, n=16) -> torch.Tensor:
    return torch.from_numpy(np.array(prepared.states["test"][:n]))


def test_depth_conditioner_starts_at_all_ones():
    cond = DepthConditioner(num_layers=12, width=48, hidden=16)
    scales = cond()
    assert scales.shape == (12, 3, 48)
    assert torch.equal(scales, torch.ones_like(scales))
    # but it is trainable: the zero-initialised last layer receives gradient
    scales.sum().backward()
    assert cond.net[-1].bias.grad is not None and cond.net[-1].bias.grad.abs().sum() > 0


def test_teacher_init_with_one_block_per_layer_reproduces_the_teacher(prepared, teacher_model):
    """Identity conditioning (all scales 1) + k == L teacher blocks = the teacher, bit for bit."""
    from study.science.states import teacher_states
    from study.trial.data import load_splits

    raptor = Raptor(teacher_model, ONE_BLOCK_PER_LAYER, init="teacher").eval()
    images = load_splits(prepared.cfg.data, prepared.teacher.spec).test.tensors[0][:16]
    states = teacher_states(teacher_model, images)
    with torch.no_grad():
        rollout = raptor.rollout(states[:, 0])
        logits = raptor(images)
        expected_logits = teacher_model(images)
    assert rollout.shape == (16, 4, 17, 32)
    torch.testing.assert_close(rollout, states[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    # and from the cached (separately batched) states, up to float32 round-off
    cached = states_batch(prepared)
    with torch.no_grad():
        torch.testing.assert_close(raptor.rollout(cached[:, 0]), cached[:, 1:], rtol=1e-5, atol=1e-5)


def test_teacher_init_copies_the_phase_start_block(teacher_model):
    raptor = Raptor(teacher_model, TWO_PHASES, init="teacher")
    assert raptor.k == 2 and raptor.num_layers == 4 and raptor.block_of_layer == (0, 0, 0, 1)
    for block, first in zip(raptor.blocks, (1, 4)):
        for (name, p), q in zip(block.named_parameters(), teacher_model.blocks[first - 1].parameters()):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr(), "the Raptor owns copies, the teacher is untouched"
            assert p.requires_grad


def test_weights_are_tied_inside_a_phase(teacher_model, prepared):
    raptor = Raptor(teacher_model, TWO_PHASES, init="teacher")
    used = []
    hooks = [
        block.attn.register_forward_hook(lambda mod, inp, out, m=m: used.append(m))
        for m, block in enumerate(raptor.blocks)
    ]
    x = states_batch(prepared, 4)[:, 0]
    with torch.no_grad():
        raptor.rollout(x)
    for hook in hooks:
        hook.remove()
    assert used == [0, 0, 0, 1]
    # one parameter set per phase: k blocks, not L
    per_block = sum(p.numel() for p in teacher_model.blocks[0].parameters())
    assert sum(p.numel() for p in raptor.blocks.parameters()) == 2 * per_block
    # a gradient through layers 1..3 accumulates into the same (shared) block
    raptor.zero_grad()
    scales = raptor.cond()
    y = x
    for layer in (1, 2, 3):
        y = raptor.step(y, layer, scales)
    y.square().mean().backward()
    assert raptor.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert raptor.blocks[1].attn.qkv.weight.grad is None


def test_random_init_differs_from_teacher_and_sets_layerscale(teacher_model, prepared):
    torch.manual_seed(0)
    raptor = Raptor(teacher_model, TWO_PHASES, init="random", layerscale_init=0.02)
    for block in raptor.blocks:
        gammas = [m.gamma for m in block.modules() if isinstance(m, LayerScale)]
        assert len(gammas) == 2
        for gamma in gammas:
            assert torch.equal(gamma, torch.full_like(gamma, 0.02))
        assert not torch.allclose(block.attn.qkv.weight, teacher_model.blocks[0].attn.qkv.weight)
        assert torch.equal(block.norm1.weight, torch.ones_like(block.norm1.weight))
    states = states_batch(prepared, 8)
    with torch.no_grad():
        rollout = Raptor(teacher_model, ONE_BLOCK_PER_LAYER, init="random").rollout(states[:, 0])
    assert not torch.allclose(rollout, states[:, 1:], atol=1e-3)


def test_stem_is_frozen_and_stays_in_eval_mode(teacher_model):
    raptor = Raptor(teacher_model, TWO_PHASES)
    raptor.train()
    assert raptor.training and raptor.blocks[0].training
    assert not raptor.stem.training and not any(m.training for m in raptor.stem.modules())
    assert not any(p.requires_grad for p in raptor.stem.parameters())
    assert len(raptor.stem.blocks) == 0, "the stem carries no teacher blocks"
    trainable = {name.split(".")[0] for name, p in raptor.named_parameters() if p.requires_grad}
    assert trainable == {"blocks", "cond"}
    # the teacher it was built from is left frozen
    assert not any(p.requires_grad for p in teacher_model.parameters())


def test_forward_gives_logits(teacher_model, prepared):
    raptor = Raptor(teacher_model, TWO_PHASES)
    from study.trial.data import load_splits

    images = load_splits(prepared.cfg.data, prepared.teacher.spec).test.tensors[0][:5]
    logits = raptor(images)
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()
    assert raptor.features(states_batch(prepared, 3)[:, -1]).shape == (3, 32)


def test_bad_phase_bounds_are_rejected(teacher_model):
    with pytest.raises(ValueError, match="do not tile"):
        Raptor(teacher_model, ((1, 2), (3, 3)))
    with pytest.raises(ValueError, match="do not tile"):
        Raptor(teacher_model, ((2, 4),))


def test_from_config_builds_the_raptor_its_config_describes(teacher_model):
    from study.config import RaptorConfig

    cfg = RaptorConfig(k=2, init="random", layerscale_init=0.25, cond_hidden=8)
    torch.manual_seed(3)
    built = Raptor.from_config(teacher_model, TWO_PHASES, cfg)
    torch.manual_seed(3)
    direct = Raptor(teacher_model, TWO_PHASES, init="random", layerscale_init=0.25, cond_hidden=8)
    assert built.k == 2 and built.cond.net[0].out_features == 8
    for (name, a), (_, b) in zip(built.state_dict().items(), direct.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    teacher_init = Raptor.from_config(teacher_model, TWO_PHASES, cfg, init="teacher")  # an override wins
    assert torch.equal(teacher_init.blocks[1].mlp.fc1.weight, teacher_model.blocks[3].mlp.fc1.weight)
    gammas = [m.gamma for m in built.blocks.modules() if isinstance(m, LayerScale)]
    assert gammas and all(torch.all(g == 0.25) for g in gammas)
