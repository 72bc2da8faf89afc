"""The MLflow contract between the study's trials and the analysis: names only.

One experiment per sweep; a parent run tagged ``raptor.role=sweep``; one child
run per trial tagged ``raptor.role=trial``, ``raptor.sweep``, ``raptor.status``
and ``mlflow.parentRunId``. Params are the flattened trial config (dotted keys,
logged as strings); metrics and the ``result.json`` artifact are named below.
"""

from __future__ import annotations

ROLE_TAG = "raptor.role"
SWEEP_TAG = "raptor.sweep"
STATUS_TAG = "raptor.status"
TRIAL_ID_TAG = "raptor.trial_id"
PARENT_TAG = "mlflow.parentRunId"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

FINISHED, FAILED, PRUNED, RUNNING = "finished", "failed", "pruned", "running"
STATUSES = (FINISHED, FAILED, PRUNED, RUNNING)
"""Trial outcomes; ``running`` covers runs that never ended (e.g. a killed worker)."""

MLFLOW_STATUS = {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": PRUNED, "RUNNING": RUNNING, "SCHEDULED": RUNNING}
"""Fallback outcome from the MLflow run status when the ``raptor.status`` tag is absent."""

PHASE_KINDS = ("cosine", "cka")
PHASE_NAMES = ("within_sim", "between_sim", "contrast", "cut_norm", "adjacent_sim", "mean_sim")
PHASE_METRICS = tuple(f"phase.{kind}.{name}" for kind in PHASE_KINDS for name in PHASE_NAMES)
"""Phase-structure metrics: the x-axis of the similarity-fidelity correlation."""

FIDELITY_METRICS = ("r2.final", "r2.mean", "r2_pooled.final", "r2_pooled.mean", "acc.ratio", "acc.recovered",
                    "acc.transfer_ratio")
"""Fidelity metrics: the y-axis (docs/science.md §5). ``r2.*`` is the strict R^2 (SST around per-feature means),
``r2_pooled.*`` the reference code's (SST around one scalar mean); ``acc.ratio`` is the paper's probe protocol (each
model's own probe) and the only one compared with the paper; ``acc.transfer_ratio`` applies the teacher's probe to
the Raptor (the study's acc.ratio before the paper's protocol)."""
PAPER_ACC_METRIC = "acc.ratio"
"""The accuracy metric held against the paper's k=2/3/4 probe ratios."""
PAPER_R2_METRIC = "r2_pooled.final"
"""The R^2 closest to the reference code's (pooled SST)."""
PROBE_METRICS = ("acc.teacher", "acc.raptor", "acc.ratio", "acc.floor", "acc.recovered", "acc.transfer_teacher",
                 "acc.transfer", "acc.transfer_ratio", "acc.agreement")
"""Probe accuracies of a trial (docs/science.md §5)."""
PARTITION_METRICS = ("partition.cut_value", "partition.cut_dp", "partition.cut_bisection", "partition.dp_differs")
"""Cut of the partition used, of the exact DP and of the reference's bisection, and whether DP and bisection differ."""

PRIMARY_PREDICTOR = "phase.cosine.within_sim"
PRIMARY_TARGET = "r2_pooled.final"
"""The default pre-registered relation of a sweep (docs/science.md §7): similarity -> pooled final-layer R^2."""
ANALYSIS_TARGETS = tuple(dict.fromkeys((*FIDELITY_METRICS, *PROBE_METRICS)))
"""Metric names a sweep spec may declare as the target of its primary relation (docs/science.md §5)."""
ANALYSIS_PREDICTORS = PHASE_METRICS
"""Metric names a sweep spec may declare as the predictor of its primary relation."""

LAYER_METRIC_PREFIX = "r2.layer"
"""Metrics with this prefix are per-layer histories (step = teacher layer 1..L)."""
LAYER_METRIC_PREFIXES = ("r2.layer", "r2_pooled.layer")
"""Per-layer histories of the strict and the pooled R^2 (``<prefix>`` for all tokens, ``<prefix>.<group>``)."""

CLASS_SHARE_SUBSETS = ("train", "val", "test", "similarity", "dynamics")
"""Splits and subsets whose class balance is logged (``dynamics`` is also the layer-swap subset)."""


def class_share_metric(subset: str, bound: str) -> str:
    """Name of the min / max class share of a split or subset, e.g. ``data.train.class_share_min``."""
    return f"data.{subset}.class_share_{bound}"


CLASS_SHARE_METRICS = tuple(class_share_metric(s, b) for s in CLASS_SHARE_SUBSETS for b in ("min", "max"))

DYNAMICS_PREFIX = "dyn."
"""Summary metrics of `study.dynamics_report` (``dyn.teacher.*``, ``dyn.raptor.*``, ``dyn.swap.*``)."""
TEACHER_DYNAMICS_PREFIXES = ("dyn.teacher.", "dyn.swap.")
"""Dynamics metrics of the teacher alone: equal (up to the trial seed) across the trials of one teacher."""
SWAP_METRICS = ("dyn.swap.baseline_acc", "dyn.swap.intra_acc_mean", "dyn.swap.inter_acc_mean")
"""Teacher accuracy unswapped, and mean over adjacent-layer swaps inside a phase / across a boundary."""

SD_PARAM = "teacher.sd_rate"
K_PARAM = "raptor.k"
TEACHER_KEY_PARAM = "teacher.key"

TEXT_PARAMS = frozenset(
    {
        "name",
        TEACHER_KEY_PARAM,
        "data.name",
        "data.path",
        "teacher.timm_name",
        "teacher.checkpoint",
        "runtime.cache_dir",
    }
)
"""Params kept as text even when every value happens to look like a number (e.g. a hex hash)."""

RESULT_ARTIFACT = "result.json"
DYNAMICS_KEY = "dynamics"
"""result.json entry with the dynamics curves; absent in older runs and with ``dynamics.enabled: false``."""
