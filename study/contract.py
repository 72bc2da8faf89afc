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

FIDELITY_METRICS = ("r2.final", "r2.mean", "acc.ratio")
"""Fidelity metrics: the y-axis."""

PRIMARY_PREDICTOR = "phase.cosine.within_sim"
PRIMARY_TARGET = "r2_pooled.final"
"""The default pre-registered relation of a sweep (docs/science.md §7): similarity -> pooled final-layer R^2."""
ANALYSIS_TARGETS = tuple(dict.fromkeys((*FIDELITY_METRICS, "r2_pooled.final", "r2_pooled.mean", "acc.teacher",
                                        "acc.raptor", "acc.floor", "acc.recovered")))
"""Metric names a sweep spec may declare as the target of its primary relation (docs/science.md §5)."""
ANALYSIS_PREDICTORS = PHASE_METRICS
"""Metric names a sweep spec may declare as the predictor of its primary relation."""

LAYER_METRIC_PREFIX = "r2.layer"
"""Metrics with this prefix are per-layer histories (step = teacher layer 1..L)."""

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
