"""One typed, serialisable config per trial, validated at the edge.

A `TrialConfig` is everything one trial needs; it round-trips through JSON/YAML
and is logged verbatim to MLflow (flattened with dotted keys). Every invalid
input raises `ConfigError` with one line naming the field and the allowed range,
before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from study.configio import (
    ConfigError,
    StrictModel,
    deep_merge,
    describe_validation_error,
    flatten,
    read_yaml,
    registered,
    stable_hash,
    unflatten,
)
from study.registry import DEFAULT_READOUTS, READOUTS, SIMILARITY
from study.teacher_config import DataConfig, TeacherConfig


class RaptorConfig(StrictModel):
    """The recurrent surrogate: k blocks tied within contiguous phases."""

    k: int = Field(2, ge=1, le=64, description="number of distinct blocks (phases)")
    init: Literal["teacher", "random"] = Field(
        "teacher", description="block init: teacher block at phase start, or random"
    )
    layerscale_init: float = Field(1e-5, gt=0.0, le=1.0, description="LayerScale init for random blocks")
    cond_hidden: int = Field(32, ge=1, le=1024, description="hidden width of the depth-conditioning MLP")
    depth_scaling: bool = Field(
        True,
        description="the depth-conditioning MLP (docs/science.md §3); false: every scale fixed at 1 and no MLP "
        "parameters (the paper's ablation rows without depth scaling)",
    )


class StageConfig(StrictModel):
    """One distillation stage: optimiser, length and token-group loss weights."""

    enabled: bool = True
    epochs: int = Field(4, ge=0, le=10_000)
    lr: float = Field(3e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_fraction: float = Field(0.05, ge=0.0, le=1.0)
    lambda_cls: float = Field(0.34, ge=0.0, le=1.0)
    lambda_reg: float = Field(0.33, ge=0.0, le=1.0)
    lambda_patch: float = Field(0.33, ge=0.0, le=1.0)


STAGE2_WEIGHTS = {"lambda_cls": 0.45, "lambda_reg": 0.10, "lambda_patch": 0.45}
"""Stage 2's default token-group weights, the reference's (docs/science.md §4)."""


class DistillConfig(StrictModel):
    """Two-stage distillation (docs/science.md §4).

    Each stage's lambda weights are renormalised to sum to 1 over the token groups the teacher has (registers
    only when it has some), so a searched lambda_cls changes the mix of the loss, not its scale."""

    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig(**STAGE2_WEIGHTS)
    tf_mode: Literal["input_mix", "loss_mix"] = Field(
        "input_mix",
        description="teacher forcing in stage 1: 'input_mix' mixes the step inputs, lambda tf_start -> 0; "
        "'loss_mix' (the reference's) mixes losses, lambda * L_tf + (1 - lambda) * L_ar, "
        "lambda 1 -> 0",
    )
    arm: Literal["full", "ar_anneal", "tf_only", "ar_only"] = Field(
        "full",
        description="ablation arm (docs/science.md §4): 'full' = annealed stage 1 + stage 2; 'ar_anneal' = "
        "annealed stage 1, no stage 2; 'tf_only' = lambda fixed at 1, no stage 2; 'ar_only' = "
        "lambda fixed at 0, no stage 2",
    )
    cls_weighting: bool = Field(
        True,
        description="token-group loss weights lambda_cls / lambda_reg / lambda_patch (docs/science.md §4); false: "
        "every token weighs the same (the paper's ablation rows without cls weighting)",
    )
    anneal: float = Field(0.25, ge=0.0, le=1.0, description="fraction of stage-1 steps over which lambda anneals to 0")
    tf_start: float = Field(
        0.5, ge=0.0, le=1.0, description="initial lambda of tf_mode 'input_mix' ('loss_mix' starts at 1)"
    )
    grad_clip: float = Field(
        1.0, ge=0.0, le=1e6, description="max global gradient norm per step (0: off); the reference clips at 1.0"
    )
    noise_sigma: float = Field(0.0, ge=0.0, le=10.0, description="input noise, in units of each token's RMS")
    batch_size: int = Field(64, ge=1, le=65_536)

    @model_validator(mode="before")
    @classmethod
    def _stage2_weight_defaults(cls, data: Any) -> Any:
        """A partly given stage 2 keeps stage 2's default weights (not StageConfig's, which are stage 1's)."""
        if isinstance(data, dict) and isinstance(data.get("stage2"), dict):
            return {**data, "stage2": {**STAGE2_WEIGHTS, **data["stage2"]}}
        return data

    @model_validator(mode="after")
    def _weights_positive(self) -> DistillConfig:
        for name in ("stage1", "stage2"):
            stage = getattr(self, name)
            if stage.lambda_cls + stage.lambda_reg + stage.lambda_patch <= 0:
                raise ValueError(f"distill.{name}: lambda_cls + lambda_reg + lambda_patch must be > 0 (each in [0, 1])")
        return self

    @property
    def stage2_runs(self) -> bool:
        """Stage 2 runs in arm 'full' only (and when enabled with epochs > 0)."""
        return self.arm == "full" and self.stage2.enabled and self.stage2.epochs > 0


class PartitionConfig(StrictModel):
    """How layers are split into k phases (docs/science.md §2); DP and bisection cuts are logged whatever is used."""

    method: Literal["dp", "bisection", "fixed", "random"] = Field(
        "dp",
        description="'dp': exact contiguous max-cut; 'bisection': the reference's recursive two-way split; "
        "'fixed': explicit boundaries; 'random': a contiguous partition drawn uniformly over all C(L-1, k-1) by "
        "partition.seed (the paper's control); 'random' without a seed is no draw: the trial fits the DP "
        "partition and records method 'dp', so one searched axis partition.seed: [null, 0, ..., 9] gives a "
        "teacher's DP partition and its random counterparts",
    )
    seed: int | None = Field(None, ge=0, description="seed of a 'random' partition (ignored by other methods)")
    boundaries: list[int] | dict[int, list[int]] | None = Field(
        None,
        description="method 'fixed': last teacher layer (1-based) of every phase but the last, increasing, k - 1 "
        "values in [1, L - 1]; e.g. the reference's DINOv2 ViT-B [7], [7, 10], [4, 7, 10] for "
        "k=2, 3, 4; or one list per k, {2: [7], 3: [7, 10], 4: [4, 7, 10]}, so that k and the "
        "method can both be searched (a per-k mapping is ignored by the other methods)",
    )

    @model_validator(mode="before")
    @classmethod
    def _unseeded_random_is_dp(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("method") == "random" and data.get("seed") is None:
            return {**data, "method": "dp"}
        return data

    @model_validator(mode="after")
    def _boundaries_with_fixed(self) -> PartitionConfig:
        if self.method == "fixed" and self.boundaries is None:
            raise ValueError(
                "partition.boundaries: required when partition.method is 'fixed' (k - 1 increasing layers)"
            )
        if self.method != "fixed" and isinstance(self.boundaries, list):
            raise ValueError(
                f"partition.boundaries: only used with partition.method 'fixed', got method '{self.method}'"
            )
        return self

    def boundaries_for(self, k: int) -> list[int] | None:
        """The fixed boundaries for k phases (None unless the method is 'fixed')."""
        if self.method != "fixed":
            return None
        if isinstance(self.boundaries, dict):
            if k not in self.boundaries:
                raise ConfigError(
                    f"partition.boundaries: no boundaries for raptor.k={k} (given for k in {sorted(self.boundaries)})"
                )
            return self.boundaries[k]
        return self.boundaries


class SimilarityConfig(StrictModel):
    """How layer-layer similarity is measured and which matrix drives the partition."""

    num_samples: int = Field(10_000, ge=2, description="samples averaged (capped at the train split)")
    partition_on: str = Field("cosine", description="the similarity kind (study/registry.py SIMILARITY) partitioned")

    @field_validator("partition_on")
    @classmethod
    def _registered(cls, kind: str) -> str:
        return registered("similarity.partition_on", kind, SIMILARITY)


class DynamicsConfig(StrictModel):
    """Dynamical read-outs of teacher and Raptor trajectories on the test split (docs/science.md §6)."""

    enabled: bool = Field(True, description="compute dynamics (metrics dyn.*, dynamics.png, layer_swaps.png)")
    num_samples: int = Field(256, ge=2, le=100_000, description="test samples used (capped at the test split)")
    perturb_layer: int | None = Field(
        None, ge=0, le=64, description="layer l whose state x_l is perturbed (None: L // 2; capped at L - 1)"
    )
    eps: float = Field(0.05, gt=0.0, le=10.0, description="perturbation norm, relative to each token's norm")
    swaps: bool = Field(True, description="adjacent layer-swap accuracies of the teacher (intra vs inter phase)")
    accuracy_samples: int = Field(
        2500,
        ge=2,
        le=1_000_000,
        description="test images (a stratified draw, capped at the test split) of every accuracy read-out of the "
        "dynamics: adjacent swaps and layer replacement; 2,500 keeps the standard error under 1 point",
    )
    replace: bool = Field(
        True, description="layer replacement: n = 1, 2, 3 teacher layers replaced by blocks of the same / another phase"
    )
    replace_draws: int = Field(
        20, ge=1, le=10_000, description="seeded replacement sets per kind (intra / inter) and n = 1, 2, 3"
    )


class EvalConfig(StrictModel):
    """Which read-outs the evaluation runs after distillation (study/trial/evaluation.py, docs/science.md)."""

    readouts: tuple[str, ...] = Field(
        DEFAULT_READOUTS, description="read-outs of study/registry.py READOUTS, run in this order"
    )

    @field_validator("readouts")
    @classmethod
    def _registered(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            registered("eval.readouts", name, READOUTS)
        if len(set(names)) != len(names):
            raise ValueError(f"eval.readouts: each read-out at most once, got {list(names)}")
        return names


class RuntimeConfig(StrictModel):
    """Where and how fast; none of it changes the science (cache keys ignore it)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str = Field(".raptor_cache", description="teacher + activation cache (shared by trials)")
    num_threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads (None: torch default)")
    amp: bool = Field(True, description="bf16 autocast on GPU")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile one Raptor step + its loss and the teacher's blocks (regional: compiled once, "
        "reused by every layer); 'auto': on CUDA when a training step is >= 1 TFLOP (ViT-S and up), "
        "off for small models (digits: compiling costs more than the whole run) and on CPU",
    )
    fused_attn: bool = Field(
        True,
        description="fused scaled-dot-product attention in every timm Attention "
        "(False: explicit softmax(QK^T)V, the reference path)",
    )
    fused_adamw: bool = Field(True, description="fused AdamW on GPU")
    cuda_graphs: bool = Field(
        True,
        description="replay each training step (forward, backward, AdamW) as one CUDA graph "
        "on GPU; needs fused_adamw and one process (else ignored)",
    )
    activation_dtype: Literal["float32", "float16"] = Field("float32", description="dtype of cached teacher states")
    progress: bool = True
    checkpoint_epochs: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="resumable distillation state every N "
        "epochs (None: by time only); the last epoch of each stage always",
    )
    checkpoint_seconds: float | None = Field(
        60.0,
        gt=0.0,
        le=86_400.0,
        description="resumable distillation state when "
        "this many seconds passed since the last one (None: by epochs only)",
    )


class TrialConfig(StrictModel):
    """Everything one trial needs; the unit logged to MLflow."""

    name: str = Field("trial", min_length=1, max_length=200)
    seed: int = Field(0, ge=0, description="seed for the Raptor init and distillation")
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    raptor: RaptorConfig = RaptorConfig()
    distill: DistillConfig = DistillConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    partition: PartitionConfig = PartitionConfig()
    dynamics: DynamicsConfig = DynamicsConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _k_fits_depth(self) -> TrialConfig:
        if self.teacher.source == "scratch":
            check_k_fits(self.raptor.k, self.teacher.depth)
            check_boundaries(self.partition.boundaries_for(self.raptor.k), self.raptor.k, self.teacher.depth)
        else:
            check_boundaries(self.partition.boundaries_for(self.raptor.k), self.raptor.k, None)
        return self

    # --- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> leaf values, e.g. {'teacher.sd_rate': 0.1}; what MLflow logs as params."""
        return flatten(self.to_dict())

    def teacher_key(self) -> str:
        """Cache key of the teacher: hash of exactly what determines its weights (data + teacher)."""
        data = self.data.model_dump(mode="json", exclude={"raptor_samples"})  # the teacher never sees that cap
        teacher = self.teacher.key_fields()  # what determines the weights (read-outs and checkpoint choice left out)
        payload = {"data": data, "teacher": teacher}
        if self.data.max_samples is not None:  # capped splits became stratified random draws (docs/science.md §5)
            payload["subsets"] = "stratified"
        return stable_hash(payload)


def check_k_fits(k: int, depth: int) -> None:
    """k must lie in [1, depth]; checked again once a pretrained teacher's depth is known."""
    if not 1 <= k <= depth:
        raise ConfigError(f"raptor.k: must be in [1, {depth}] (the teacher's depth), got {k}")


def check_boundaries(boundaries: list[int] | None, k: int, depth: int | None) -> None:
    """`partition.boundaries` must hold k - 1 strictly increasing layers in [1, depth - 1] (depth None: unknown yet)."""
    if boundaries is None:
        return
    top = f"{depth - 1}" if depth is not None else "L - 1"
    if len(boundaries) != k - 1:
        raise ConfigError(f"partition.boundaries: needs k - 1 = {k - 1} values (raptor.k={k}), got {boundaries}")
    if (
        any(b >= a for b, a in zip(boundaries, boundaries[1:]))
        or (boundaries and boundaries[0] < 1)
        or (depth is not None and boundaries and boundaries[-1] > depth - 1)
    ):
        raise ConfigError(f"partition.boundaries: must be strictly increasing layers in [1, {top}], got {boundaries}")


def build_trial_config(tree: dict[str, Any]) -> TrialConfig:
    """Validate a (nested) dict into a TrialConfig, or raise ConfigError with one line."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config: must be a mapping of sections, got {type(tree).__name__}")
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None


def load_trial_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrialConfig:
    """Load a trial config from YAML (or defaults), apply dotted overrides, validate."""
    tree = read_yaml(path) if path else {}
    tree = tree or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    if overrides:
        tree = deep_merge(tree, unflatten(overrides))
    return build_trial_config(tree)
