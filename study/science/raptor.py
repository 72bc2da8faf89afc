"""Raptor: k distinct teacher-type blocks applied recurrently over L steps (docs/science.md §3).

Block m is applied at every teacher layer of phase m (weights tied inside the
phase), so a rollout costs the teacher's L block applications. Each
application at teacher layer t (1..L) is modulated by a tiny depth-conditioning
MLP giving per-channel scales for the attention branch, the MLP branch and the
output, all exactly 1 at init. The stem (patch/pos/cls/register embedding),
the final norm and the head are the teacher's, frozen.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import Block, VisionTransformer, init_weights_vit_timm
from torch import nn

from study.science.fidelity import probe_features
from study.science.states import embed

if TYPE_CHECKING:
    from study.config import RaptorConfig


class DepthConditioner(nn.Module):
    """Teacher layer index t in 1..L -> scales [L, 3, D] (attn branch, MLP branch, output).

    Input features of t are t/L and sin/cos of t/L at a few frequencies; the
    last layer is zero-initialised so every scale starts at exactly 1.

    Args:
        num_layers: the teacher's depth L.
        width: the token width D.
        hidden: hidden width of the MLP.
        num_freqs: sin/cos frequencies of the input features.
        enabled: False: no MLP, every scale is 1 for good (the paper's ablation rows without depth scaling,
            docs/science.md §4).
    """

    def __init__(self, num_layers: int, width: int, hidden: int, num_freqs: int = 4, enabled: bool = True):
        super().__init__()
        t = torch.arange(1, num_layers + 1, dtype=torch.float32).unsqueeze(1) / num_layers  # [L, 1]
        freqs = math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32)  # [F]
        self.register_buffer(
            "features", torch.cat([t, torch.sin(t * freqs), torch.cos(t * freqs)], dim=1), persistent=False
        )
        self.net = None
        if enabled:
            self.net = nn.Sequential(nn.Linear(self.features.shape[1], hidden), nn.GELU(), nn.Linear(hidden, 3 * width))
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.width = width

    def forward(self) -> torch.Tensor:
        if self.net is None:
            return self.features.new_ones(len(self.features), 3, self.width)
        return 1.0 + self.net(self.features).view(-1, 3, self.width)


def conditioned_block(block: Block, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """One pre-norm timm block with per-channel scales [3, D] on its two branches and output.

    x: [B, T, D] -> [B, T, D]. Drop-path is not applied (the Raptor is deterministic)."""
    x = x + scales[0] * block.ls1(block.attn(block.norm1(x)))
    x = x + scales[1] * block.ls2(block.mlp(block.norm2(x)))
    return scales[2] * x


def _reinit_block(block: Block, layerscale_init: float) -> None:
    """Random init in timm's ViT style; LayerScale gammas set to `layerscale_init`."""
    for name, module in block.named_modules():
        init_weights_vit_timm(module, name)
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
        if isinstance(module, LayerScale):
            nn.init.constant_(module.gamma, layerscale_init)


class Raptor(nn.Module):
    """k tied blocks over contiguous phases of a teacher with L blocks (docs/science.md §3).

    Args:
        teacher: the teacher ViT (pre-norm timm Blocks); its blocks are copied, its stem, final norm and head are
            kept frozen.
        phase_bounds: ((first, last), ...) 1-based inclusive teacher layers covering 1..L, one pair per block.
        init: 'teacher' starts block m from the teacher's block at its phase's first layer; 'random' re-initialises
            it in timm's ViT style.
        layerscale_init: LayerScale gamma of randomly initialised blocks (init 'random' only).
        cond_hidden: hidden width of the depth-conditioning MLP (`DepthConditioner`).
        depth_scaling: False: no depth-conditioning MLP, every scale fixed at 1 (the paper's ablation rows,
            docs/science.md §4).
    """

    def __init__(
        self,
        teacher: VisionTransformer,
        phase_bounds: Sequence[Sequence[int]],
        init: str = "teacher",
        layerscale_init: float = 1e-5,
        cond_hidden: int = 32,
        depth_scaling: bool = True,
    ):
        super().__init__()
        num_layers = len(teacher.blocks)
        if not all(hasattr(teacher.blocks[0], a) for a in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2")):
            raise TypeError(f"Raptor supports pre-norm timm Blocks, not {type(teacher.blocks[0]).__name__}")
        self.phase_bounds = tuple((int(a), int(b)) for a, b in phase_bounds)
        block_of_layer = [m for m, (first, last) in enumerate(self.phase_bounds) for _ in range(first, last + 1)]
        if len(block_of_layer) != num_layers or self.phase_bounds[0][0] != 1:
            raise ValueError(f"phase_bounds {self.phase_bounds} do not tile layers 1..{num_layers}")
        self.block_of_layer = tuple(block_of_layer)  # index l-1 -> block m
        self.blocks = nn.ModuleList(copy.deepcopy(teacher.blocks[first - 1]) for first, _ in self.phase_bounds)
        for block in self.blocks:
            block.requires_grad_(True)
            if init == "random":
                _reinit_block(block, layerscale_init)
        self.cond = DepthConditioner(num_layers, teacher.embed_dim, cond_hidden, enabled=depth_scaling)
        stem = copy.deepcopy(teacher)
        stem.blocks = nn.Sequential()  # keep embedding, norm and head only
        stem.requires_grad_(False)
        self.stem = stem.eval()

    @classmethod
    def from_config(
        cls, teacher: VisionTransformer, phase_bounds: Sequence[Sequence[int]], cfg: RaptorConfig, **overrides: Any
    ) -> Raptor:
        """The Raptor a `RaptorConfig` describes over `phase_bounds`: every config field but k (which the phase
        bounds fix) is a constructor knob of the same name; `overrides` replace knobs by name (the probe floor:
        ``init='random'``). Seeding is the caller's (`torch.manual_seed` before this)."""
        return cls(teacher, phase_bounds, **(cfg.model_dump(exclude={"k"}) | overrides))

    @property
    def num_layers(self) -> int:
        return len(self.block_of_layer)

    @property
    def k(self) -> int:
        return len(self.blocks)

    def train(self, mode: bool = True) -> Raptor:
        super().train(mode)
        self.stem.eval()  # frozen, always in eval mode
        return self

    def step(self, x: torch.Tensor, layer: int, scales: torch.Tensor | None = None) -> torch.Tensor:
        """x_{layer-1} [B, T, D] -> xhat_layer [B, T, D] with the block of layer's phase."""
        scales = self.cond() if scales is None else scales
        return conditioned_block(self.blocks[self.block_of_layer[layer - 1]], x, scales[layer - 1])

    def rollout(self, x0: torch.Tensor) -> torch.Tensor:
        """Autoregressive rollout from x_0 [B, T, D] -> xhat_1..xhat_L stacked [B, L, T, D]."""
        scales = self.cond()
        outputs, x = [], x0
        for layer in range(1, self.num_layers + 1):
            x = self.step(x, layer, scales)
            outputs.append(x)
        return torch.stack(outputs, dim=1)

    def features(self, x_last: torch.Tensor) -> torch.Tensor:
        """Readout features: the teacher's final norm on the cls token. [B, T, D] -> [B, D]."""
        return self.stem.norm(x_last)[:, 0]

    @property
    def num_registers(self) -> int:
        return int(getattr(self.stem, "num_reg_tokens", 0) or 0)

    def probe_features(self, x_last: torch.Tensor) -> torch.Tensor:
        """The paper's probe features (docs/science.md §3): final-norm cls ++ final-norm mean patch.

        [B, T, D] -> [B, 2D]."""
        return probe_features(self.stem.norm, x_last, self.num_registers)

    def final(self, x0: torch.Tensor) -> torch.Tensor:
        """x_0 [B, T, D] -> the Raptor's last state xhat_L [B, T, D] (the rollout without keeping every layer)."""
        scales = self.cond()
        x = x0
        for layer in range(1, self.num_layers + 1):
            x = self.step(x, layer, scales)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the teacher head's logits on the Raptor's final state (a drop-in model)."""
        return self.stem.forward_head(self.stem.norm(self.final(embed(self.stem, images))))


class RaptorTokens(nn.Module):
    """A Raptor as a model of token states: x_0 [B, T, D] -> xhat_L [B, T, D] (`Raptor.final`).

    The form logged to MLflow (`record.log_model`): its input is what the Raptor was distilled on, the
    teacher's embedded tokens, so any x_0 from the trial's cached states runs through it."""

    def __init__(self, raptor: Raptor):
        super().__init__()
        self.raptor = raptor.eval()

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.raptor.final(x0)
