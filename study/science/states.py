"""Token states of a timm ViT: x_0 (embedded tokens) and x_1..x_L (block outputs), docs/science.md §1."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


def embed(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] -> x_0 [B, T, D] (patch + pos embed, cls/register tokens, norm_pre)."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


@torch.no_grad()
def teacher_states(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] -> all token states [B, L+1, T, D]."""
    x = embed(model, images)
    states = [x]
    for block in model.blocks:
        x = block(x)
        states.append(x)
    return torch.stack(states, dim=1)
