"""What is measured: teacher shapes (`Case`), speed-knob sets (`Variant`) and the teacher builder."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from study.config import RuntimeConfig, load_trial_config
from study.trial.data import ImageSpec
from study.trial.teacher import build_scratch_model


@dataclasses.dataclass(frozen=True)
class Case:
    """A ViT shape and the batch sizes its workloads run at."""

    name: str
    depth: int
    width: int
    heads: int
    mlp_ratio: float
    patch: int
    image: int
    chans: int
    classes: int
    teacher_batch: int
    raptor_batch: int
    k: int
    layerscale: float = 0.1
    registers: int = 0

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1 + self.registers

    def with_(self, **kw) -> Case:
        return dataclasses.replace(self, **kw)


VIT_S = Case(
    "vit_s16_224",
    depth=12,
    width=384,
    heads=6,
    mlp_ratio=4.0,
    patch=16,
    image=224,
    chans=3,
    classes=1000,
    teacher_batch=256,
    raptor_batch=256,
    k=2,
)
DIGITS = Case(
    "digits_default",
    depth=8,
    width=64,
    heads=4,
    mlp_ratio=2.0,
    patch=2,
    image=8,
    chans=1,
    classes=10,
    teacher_batch=128,
    raptor_batch=64,
    k=2,
)
# the DINOv2 ViT-B/14 shape of docs/science.md §1 (4 registers, 261 tokens), random weights
VIT_B = Case(
    "vit_b14_reg4_224",
    depth=12,
    width=768,
    heads=12,
    mlp_ratio=4.0,
    patch=14,
    image=224,
    chans=3,
    classes=1000,
    teacher_batch=128,
    raptor_batch=128,
    k=2,
    registers=4,
)
# the DINOv2 ViT-L/14 shape (24 blocks, width 1024, 4 registers, 261 tokens): how MFU grows with width
VIT_L = Case(
    "vit_l14_reg4_224",
    depth=24,
    width=1024,
    heads=16,
    mlp_ratio=4.0,
    patch=14,
    image=224,
    chans=3,
    classes=1000,
    teacher_batch=64,
    raptor_batch=64,
    k=2,
    registers=4,
)
QUICK_VIT = Case(
    "vit_quick",
    depth=4,
    width=64,
    heads=2,
    mlp_ratio=4.0,
    patch=8,
    image=32,
    chans=3,
    classes=10,
    teacher_batch=8,
    raptor_batch=8,
    k=2,
)
QUICK_DIGITS = DIGITS.with_(name="digits_quick", depth=4, teacher_batch=16, raptor_batch=16)


@dataclasses.dataclass(frozen=True)
class Variant:
    """RuntimeConfig's speed knobs (+ TF32, which study.runtime.setup turns on)."""

    name: str
    amp: bool = True
    fused_attn: bool = True
    compile: bool | str = "auto"
    fused_adamw: bool = True
    cuda_graphs: bool = True
    tf32: bool = True

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(
            amp=self.amp,
            fused_attn=self.fused_attn,
            compile=self.compile,
            fused_adamw=self.fused_adamw,
            cuda_graphs=self.cuda_graphs,
            progress=False,
        )


FAST = Variant("fast")  # the product's GPU defaults
BASELINE = Variant(
    "baseline fp32 eager", amp=False, fused_attn=False, compile=False, fused_adamw=False, cuda_graphs=False, tf32=False
)
ABLATIONS = (
    Variant("fast - cuda_graphs", cuda_graphs=False),
    Variant("fast - compile", compile=False),
    Variant("fast - fused_attn", fused_attn=False),
    Variant("fast - amp (tf32)", amp=False),
    Variant("fast - fused_adamw (no graphs)", fused_adamw=False),
    Variant("fast - graphs - compile", compile=False, cuda_graphs=False),
    Variant(
        "baseline + tf32", amp=False, fused_attn=False, compile=False, fused_adamw=False, cuda_graphs=False, tf32=True
    ),
)


def set_matmul(tf32: bool) -> None:
    """TF32 on or off for CUDA matmuls and cuDNN."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def build_teacher(case: Case, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The product's scratch teacher (study.trial.teacher.build_scratch_model) with random weights."""
    cfg = load_trial_config(
        None,
        {
            "teacher.depth": case.depth,
            "teacher.width": case.width,
            "teacher.heads": case.heads,
            "teacher.mlp_ratio": case.mlp_ratio,
            "teacher.patch_size": case.patch,
            "teacher.layerscale_init": case.layerscale,
            "teacher.registers": case.registers,
            "raptor.k": min(case.k, case.depth),
        },
    )
    spec = ImageSpec(case.chans, case.image, (0.5,) * case.chans, (0.5,) * case.chans, "bilinear", 1.0)
    torch.manual_seed(seed)
    return build_scratch_model(cfg, spec, case.classes).to(device)


def even_phases(depth: int, k: int) -> tuple[tuple[int, int], ...]:
    """k contiguous 1-based (first, last) layer ranges of near-equal length covering 1..depth."""
    edges = np.linspace(0, depth, k + 1).round().astype(int)
    return tuple((int(a) + 1, int(b)) for a, b in zip(edges[:-1], edges[1:]))
