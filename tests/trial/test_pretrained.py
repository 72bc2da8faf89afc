"""Pretrained-style teachers, offline: DINOv2-with-registers architectures at random init.

No weights are downloaded. The real `vit_small_patch14_reg4_dinov2` (depth 12, width 384)
is built at img_size=28 (2x2 patches of 14 px) for the token-layout and exactness checks.
The `teacher.source: timm / checkpoint` path (`study.teacher.load_teacher`, which creates
models at their default 518 px and would be slow on CPU) runs on two TINY variants
registered below under DINOv2's own timm variant names and checkpoint filter: depth 3,
width 48, reg_tokens=4, init_values=1e-5, no_embed_class, img_size 28, one with the
GELU MLP of ViT-S/B/L and one with the SwiGLU (SwiGLUPacked + SiLU) MLP of ViT-g.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import GluMlp, SwiGLUPacked
from timm.models import register_model
from timm.models.vision_transformer import _create_vision_transformer

from study.config import ConfigError, load_trial_config
from study.science.raptor import Raptor
from study.science.states import embed, teacher_states
from study.trial.teacher import load_teacher

REGS, PATCHES = 4, 4  # 28 px / 14 px patches -> 2 x 2
TOKENS = 1 + REGS + PATCHES
TINY_ARGS = dict(
    patch_size=14,
    img_size=28,
    embed_dim=48,
    depth=3,
    num_heads=3,
    init_values=1e-5,
    reg_tokens=REGS,
    no_embed_class=True,
)


@register_model
def raptortest_vit_patch14_reg4_dinov2(pretrained: bool = False, **kwargs):
    """ViT-S/14 DINOv2 with registers, shrunk: GELU MLP."""
    return _create_vision_transformer(
        "vit_small_patch14_reg4_dinov2", pretrained=pretrained, **{**TINY_ARGS, "mlp_ratio": 4.0, **kwargs}
    )


@register_model
def raptortest_vit_patch14_reg4_dinov2_swiglu(pretrained: bool = False, **kwargs):
    """ViT-g/14 DINOv2 with registers, shrunk: SwiGLUPacked MLP with SiLU."""
    return _create_vision_transformer(
        "vit_giant_patch14_reg4_dinov2",
        pretrained=pretrained,
        **{**TINY_ARGS, "mlp_ratio": 2.66667 * 2, "mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU, **kwargs},
    )


TINY_NAMES = ["raptortest_vit_patch14_reg4_dinov2", "raptortest_vit_patch14_reg4_dinov2_swiglu"]


def _randomise_layerscale(model: torch.nn.Module, seed: int = 0) -> None:
    """LayerScale gammas of O(1) (DINOv2 inits 1e-5), so every block really moves the tokens."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            for ls in (block.ls1, block.ls2):
                ls.gamma.copy_(0.5 + torch.rand(ls.gamma.shape, generator=generator))


@pytest.fixture(scope="module")
def dinov2_small():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, num_classes=0).eval()
    _randomise_layerscale(model)
    return model


@pytest.fixture
def images():
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def _tiny_cfg(name: str, **extra):
    return load_trial_config(
        None,
        {
            "teacher.timm_name": name,
            "teacher.source": "timm",
            "runtime.progress": False,
            "runtime.device": "cpu",
            "raptor.k": 3,
            **extra,
        },
    )


def test_dinov2_small_token_layout_in_teacher_states(dinov2_small, images):
    model = dinov2_small
    assert model.num_reg_tokens == REGS and len(model.blocks) == 12 and model.num_classes == 0
    states = teacher_states(model, images)
    assert states.shape == (2, 13, TOKENS, 384)  # x_0..x_12; cls + 4 registers + 2x2 patches
    x0 = states[:, 0]
    # no_embed_class: cls and registers carry no position embedding, patches do
    assert torch.equal(x0[:, 0], model.cls_token[0, 0].expand(2, -1))
    assert torch.equal(x0[:, 1 : 1 + REGS], model.reg_token[0].expand(2, -1, -1))
    patches = model.patch_embed(images) + model.pos_embed
    assert torch.allclose(x0[:, 1 + REGS :], patches, atol=1e-6)
    # changing the top-left 14x14 pixels moves only the first patch token of x_0
    edited = images.clone()
    edited[:, :, :14, :14] += 1.0
    diff = (embed(model, edited) - x0).abs().amax(dim=(0, 2))
    assert diff[1 + REGS] > 0 and torch.count_nonzero(diff) == 1
    # the readout is the normed cls token of x_L: what timm's forward gives
    assert torch.allclose(model(images), model.norm(states[:, -1])[:, 0], atol=1e-5)


def test_dinov2_small_raptor_with_k_equal_depth_is_the_teacher_at_init(dinov2_small, images):
    states = teacher_states(dinov2_small, images)
    raptor = Raptor(dinov2_small, [(layer, layer) for layer in range(1, 13)]).eval()
    with torch.no_grad():
        rollout = raptor.rollout(states[:, 0])
    assert torch.equal(rollout, states[:, 1:])  # LayerScale respected, all scales exactly 1
    assert torch.equal(raptor.features(rollout[:, -1]), dinov2_small(images))


@pytest.mark.parametrize("name", TINY_NAMES)
def test_timm_source_teacher_has_dinov2_layout_and_raptor_reproduces_it(name, cpu, images):
    torch.manual_seed(0)
    teacher = load_teacher(_tiny_cfg(name), cpu, lambda spec: pytest.fail("a timm teacher needs no training data"))
    model = teacher.model
    assert teacher.num_registers == REGS and teacher.depth == 3 and teacher.test_acc is None
    mlp = model.blocks[0].mlp
    if name.endswith("swiglu"):
        assert isinstance(mlp, GluMlp) and isinstance(mlp.act, torch.nn.SiLU)  # SwiGLUPacked
    else:
        assert type(mlp).__name__ == "Mlp" and isinstance(mlp.act, torch.nn.GELU)
    assert torch.allclose(model.blocks[0].ls1.gamma, torch.full((48,), 1e-5))
    _randomise_layerscale(model)
    states = teacher_states(model, images)
    assert states.shape == (2, 4, TOKENS, 48)
    assert torch.equal(states[:, 0, 1 : 1 + REGS], model.reg_token[0].expand(2, -1, -1))
    raptor = Raptor(model, [(1, 1), (2, 2), (3, 3)]).eval()
    with torch.no_grad():
        assert torch.equal(raptor.rollout(states[:, 0]), states[:, 1:])
    # fewer blocks than layers: tied weights make it differ from the teacher
    with torch.no_grad():
        tied = Raptor(model, [(1, 2), (3, 3)]).eval().rollout(states[:, 0])
    assert not torch.allclose(tied[:, 1], states[:, 2])


@pytest.mark.parametrize("name", TINY_NAMES)
def test_checkpoint_source_reloads_identical_states(name, cpu, images, tmp_path):
    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, num_classes=0).eval()
    _randomise_layerscale(original, seed=3)
    path = tmp_path / "teacher.pth"
    torch.save(original.state_dict(), path)
    cfg = _tiny_cfg(name, **{"teacher.source": "checkpoint", "teacher.checkpoint": str(path)})
    torch.manual_seed(123)  # a different random init underneath: equality must come from the file
    loaded = load_teacher(cfg, cpu, lambda spec: pytest.fail("a checkpoint teacher needs no training data"))
    expected = teacher_states(original, images)
    assert torch.equal(teacher_states(loaded.model, images), expected)
    assert loaded.num_registers == REGS and not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    # sanity: a fresh random model of the same name gives different states
    other = timm.create_model(name, pretrained=False, num_classes=0).eval()
    assert not torch.allclose(teacher_states(other, images), expected)


def test_random_init_is_fixed_by_teacher_seed(cpu):
    """A Tune driver and its Ray Train workers each build the teacher: a random init must agree."""
    no_data = lambda spec: pytest.fail("a timm teacher needs no training data")  # noqa: E731
    name = TINY_NAMES[0]
    torch.manual_seed(1)
    first = load_teacher(_tiny_cfg(name), cpu, no_data).model.state_dict()
    torch.manual_seed(2)  # other global RNG state, same teacher.seed
    again = load_teacher(_tiny_cfg(name), cpu, no_data).model.state_dict()
    other_seed = load_teacher(_tiny_cfg(name, **{"teacher.seed": 1}), cpu, no_data).model.state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], other_seed["blocks.0.attn.qkv.weight"])


def test_data_image_size_sets_the_timm_teachers_input_size(cpu):
    no_data = lambda spec: pytest.fail("a timm teacher needs no training data")  # noqa: E731
    name = TINY_NAMES[0]
    assert load_teacher(_tiny_cfg(name), cpu, no_data).spec.size == 28  # the model's default
    teacher = load_teacher(_tiny_cfg(name, **{"data.image_size": 56}), cpu, no_data)
    assert teacher.spec.size == 56 and teacher.spec.mean == (0.485, 0.456, 0.406)  # its own normalisation
    states = teacher_states(teacher.model, torch.randn(2, 3, 56, 56))
    assert states.shape == (2, 4, 1 + REGS + 16, 48)  # 4 x 4 patches of 14 px
    with pytest.raises(ConfigError, match=r"^data.image_size: must be a multiple of .* patch size 14, got 30$"):
        load_teacher(_tiny_cfg(name, **{"data.image_size": 30}), cpu, no_data)
