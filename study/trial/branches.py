"""The residual branch scale of a teacher trained here (`teacher.residual_scale`; docs/science.md, "Beyond the paper:
what causes block recurrence"): every block computes x + s * ls(attn(norm1(x))) and then x + s * ls(mlp(norm2(x))).

The factor rides on each block's `ls1` / `ls2` module (LayerScale, or the identity when `teacher.layerscale_init` is
None), so a copied block (the Raptor's, study/science/raptor.py) carries it, and the state dict keeps timm's names."""

from __future__ import annotations

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ScaledLayerScale(LayerScale):
    """LayerScale followed by a fixed factor: x * gamma * scale.

    Args:
        layerscale: the block's LayerScale; its gamma parameter is kept (same name, same values).
        scale: the fixed factor (not a parameter, not in the state dict).
    """

    def __init__(self, layerscale: LayerScale, scale: float):
        super().__init__(layerscale.gamma.numel(), layerscale.init_values, layerscale.inplace)
        self.gamma = layerscale.gamma
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


class BranchScale(nn.Module):
    """A fixed factor on a branch without LayerScale: x * scale.

    Args:
        scale: the fixed factor (not a parameter, not in the state dict).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


def scale_branches(model: VisionTransformer, scale: float) -> VisionTransformer:
    """Put `scale` on the attention and MLP branch of every block (after its LayerScale); 1 leaves the model as is.
    Draws no random numbers and changes no weight."""
    if scale == 1.0:
        return model
    for block in model.blocks:
        for name in ("ls1", "ls2"):
            current = getattr(block, name)
            if not isinstance(current, LayerScale | nn.Identity):
                raise TypeError(f"teacher.residual_scale: unsupported branch module {type(current).__name__}")
            wrapped = ScaledLayerScale(current, scale) if isinstance(current, LayerScale) else BranchScale(scale)
            setattr(block, name, wrapped)
    return model
