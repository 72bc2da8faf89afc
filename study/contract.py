"""The MLflow contract between the study's trials and the analysis: every tag, param and metric name.

One experiment per sweep; a parent run tagged ``raptor.role=sweep``; one child
run per trial tagged ``raptor.role=trial``, ``raptor.sweep``, ``raptor.sweep_id``,
``raptor.status`` and ``mlflow.parentRunId``. Params are the flattened trial
config (dotted keys, logged as strings, the spec's own names for the searched
ones); metrics and the ``result.json`` artifact are named below. No other module
spells a metric name (``tests/test_contract.py`` greps for literals); the one
writer of these names is `study.sweep.record`, the one reader `analysis.load`.

This module imports nothing beyond the standard library, so every layer may use it.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- tags
ROLE_TAG = "raptor.role"
SWEEP_TAG = "raptor.sweep"
SWEEP_ID_TAG = "raptor.sweep_id"
"""One id per launch of a sweep, on the parent and every child; `resume` finds its parent by it."""
SPEC_HASH_TAG = "raptor.spec_hash"
"""Hash of the launched spec (overrides applied, description excluded); a launch with another hash is refused."""
STATUS_TAG = "raptor.status"
TRIAL_ID_TAG = "raptor.trial_id"
FAILURE_TAG = "raptor.failure"
"""Why a trial failed or was killed (one line)."""
VERSION_TAG = "raptor.version"
GIT_DIRTY_TAG = "raptor.git_dirty"
SEARCHED_TAG = "raptor.searched"
"""On the parent: the spec's searched params (JSON list), the axes to compare in the UI."""
PRIMARY_RELATION_TAG = "raptor.primary_relation"
REPORT_TAG = "raptor.report"
PHASE_BOUNDS_TAG = "partition.phase_bounds"
PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
NOTE_TAG = "mlflow.note.content"
"""MLflow's run (and experiment) description, rendered as Markdown in the UI."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
"""Experiment tag asking MLflow 3.x's UI to open the experiment on its runs table, not the GenAI overview."""
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""Experiment tag prefix of a saved runs-table view (MLflow 3.x's "Share" button); the UI opens the view
named by the URL's ``viewStateShareKey`` (study/sweep/view.py writes one per sweep)."""
RUNS_VIEW_KEY = "raptor-study"
"""The sweep's saved view: tag ``SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY``, opened by `raptor-study ui`."""
UI_WORKFLOW = "machine_learning"
"""MLflow 3.x's ``workflowType`` URL parameter for its model-training layout (not the GenAI one)."""
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
"""The runs table's Source column: the entry point that ran the sweep, e.g. ``raptor-study sweep smoke.yaml`` (type
LOCAL; the UI shows the text after its last '/', so it names the spec file, not its folder)."""
COMMAND_TAG = "raptor.command"
"""On the parent run: the whole command line that launched (or resumed) the sweep."""
OPTUNA_TRIAL_TAG = "raptor.optuna_trial"
"""On a trial run: its Optuna trial number (samplers tpe and random; a grid search has no Optuna study)."""
OPTUNA_STUDY_TAG = "raptor.optuna_study"
"""On the parent run: the Optuna study's name (``{sweep}-{sweep_id}``) in its storage."""
OPTUNA_RUN_ID_ATTR = "mlflow_run_id"
OPTUNA_RUN_NAME_ATTR = "mlflow_run_name"
OPTUNA_TUNE_TRIAL_ATTR = "tune_trial_id"
"""User attributes of an Optuna trial: its MLflow run's id and name, and the Tune trial it became."""
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

FINISHED, FAILED, PRUNED, RUNNING = "finished", "failed", "pruned", "running"
STATUSES = (FINISHED, FAILED, PRUNED, RUNNING)
"""Trial outcomes; ``running`` covers runs that never ended (a killed worker, or a sweep stopped by Ctrl-C
whose `resume` will continue them: their MLflow status is KILLED meanwhile)."""

MLFLOW_STATUS = {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": PRUNED, "RUNNING": RUNNING, "SCHEDULED": RUNNING}
"""Fallback outcome from the MLflow run status when the ``raptor.status`` tag is absent."""
MLFLOW_END_STATUS = {FINISHED: "FINISHED", FAILED: "FAILED", PRUNED: "KILLED", RUNNING: "KILLED"}
"""MLflow run status written when a trial's run ends with each outcome (``running``: interrupted, to be resumed)."""

# ----------------------------------------------------------------------------- params
SD_PARAM = "teacher.sd_rate"
K_PARAM = "raptor.k"
TEACHER_SEED_PARAM = "teacher.seed"
TEACHER_KEY_PARAM = "teacher.key"
"""Hash of what determines the teacher; a tag on trial runs (read as a column like the params)."""

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

# ----------------------------------------------------------------------------- metrics
TEACHER_TEST_ACC = "teacher.test_acc"
CUT_VALUE = "partition.cut_value"
R2_FINAL = "r2.final"
R2_MEAN = "r2.mean"
VAL_R2 = "val_r2"
"""Final-layer R^2 on the validation split: the search objective (per epoch in Tune, final in MLflow)."""
R2_KINDS = ("r2", "r2_pooled")
"""Strict R^2 (SST around per-feature means) and the reference code's pooled R^2 (SST around one scalar mean)."""


def r2_metric(kind: str, stat: str, group: str = "all") -> str:
    """``{kind}.{stat}[.{group}]``, e.g. ``r2_pooled.final.cls``; stat is ``final`` or ``mean``."""
    return group_metric(f"{kind}.{stat}", group)


R2_POOLED_FINAL = "r2_pooled.final"
R2_POOLED_MEAN = "r2_pooled.mean"
ACC_TEACHER = "acc.teacher"
ACC_RAPTOR = "acc.raptor"
ACC_RATIO = "acc.ratio"
ACC_FLOOR = "acc.floor"
ACC_RECOVERED = "acc.recovered"
ACC_TRANSFER_TEACHER = "acc.transfer_teacher"
ACC_TRANSFER = "acc.transfer"
ACC_TRANSFER_RATIO = "acc.transfer_ratio"
ACC_AGREEMENT = "acc.agreement"
ACC_FLOOR_DEEP = "acc.floor_deep"
"""The probe floor on a random Raptor whose LayerScale gammas are 1 (random deep features); ``acc.floor`` uses the
Raptor's LayerScale init (1e-5: nearly the identity, a probe on normed embeddings)."""
PROBE_METRICS = (
    ACC_TEACHER,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_FLOOR,
    ACC_RECOVERED,
    ACC_TRANSFER_TEACHER,
    ACC_TRANSFER,
    ACC_TRANSFER_RATIO,
    ACC_AGREEMENT,
    ACC_FLOOR_DEEP,
)
"""Probe accuracies of a trial (docs/science.md §5)."""
ACC_HEAD = "acc.head"
"""The paper's ablation accuracy: the teacher's own frozen classifier head (for a headless teacher: the teacher's
probe, fitted once on the teacher's features) applied to the Raptor's final states exactly as the teacher applies
it to its own."""
ACC_HEAD_TEACHER = "acc.head_teacher"
"""The teacher through the same head on the same images."""
ACC_HEAD_RATIO = "acc.head_ratio"
"""``acc.head / acc.head_teacher``."""
ACC_FINETUNED = "acc.finetuned"
"""The paper's last ablation row and its k-table: a probe initialised from the teacher's head and fine-tuned on the
Raptor's features (train split), scored on the test split."""
ACC_FINETUNED_RATIO = "acc.finetuned_ratio"
"""``acc.finetuned / acc.head_teacher``."""
HEAD_METRICS = (ACC_HEAD, ACC_HEAD_TEACHER, ACC_HEAD_RATIO, ACC_FINETUNED, ACC_FINETUNED_RATIO)
"""Accuracies through the teacher's own head (docs/science.md §5)."""
PAPER_HEAD_METRIC = ACC_HEAD_RATIO
"""The accuracy metric held against the paper's ablation table (the teacher's own frozen head)."""
PAPER_KTABLE_METRIC = ACC_FINETUNED_RATIO
"""The accuracy metric held against the paper's k=2/3/4 ratios (96.1 / 98.2 / 98.5%: the fine-tuned probe)."""
PAPER_ACC_METRIC = ACC_RATIO
"""The first edition's accuracy (a probe refit on each model's own features); `PAPER_HEAD_METRIC` and
`PAPER_KTABLE_METRIC` are the paper's own measurements."""
PAPER_R2_METRIC = R2_POOLED_FINAL
"""The R^2 closest to the reference code's (pooled SST)."""


PARTITION_METHOD_PARAM = "partition.method"
"""'dp' (max-cut), 'bisection', 'fixed' or 'random' (a seeded uniform draw of a contiguous partition)."""
PARTITION_SEED_PARAM = "partition.seed"
"""Seed of a 'random' partition; the DP and its random counterparts of one teacher and k form one comparison."""
SD_SCHEDULE_PARAM = "teacher.sd_schedule"
"""'uniform' (the same drop rate at every block, the paper's small-scale ViTs) or 'linear' (timm's ramp)."""
TEACHER_SNAPSHOT_PARAM = "teacher.snapshot"
"""Which of the teacher's kept checkpoints the trial fits: an epoch (0 = init), 'best' (best validation accuracy),
or empty for the final weights (training stages, docs/science.md)."""
ARM_PARAM = "distill.arm"
DEPTH_SCALING_PARAM = "raptor.depth_scaling"
CLS_WEIGHTING_PARAM = "distill.cls_weighting"
ABLATION_ROW = "ablation_row"
"""The `cases` entry of the ablation specs (search_spaces/ablation.yaml, pretrained_ablation.yaml): a label per row,
not a logged param; a trial's row is read back from the three params of `ABLATION_ROWS`."""
ABLATION_ROWS = {
    "tf_only": {ARM_PARAM: "tf_only", DEPTH_SCALING_PARAM: False, CLS_WEIGHTING_PARAM: False},
    "ar_anneal": {ARM_PARAM: "ar_anneal", DEPTH_SCALING_PARAM: False, CLS_WEIGHTING_PARAM: False},
    "depth_scaling": {ARM_PARAM: "ar_anneal", DEPTH_SCALING_PARAM: True, CLS_WEIGHTING_PARAM: False},
    "cls_weighting": {ARM_PARAM: "ar_anneal", DEPTH_SCALING_PARAM: True, CLS_WEIGHTING_PARAM: True},
    "stage2": {ARM_PARAM: "full", DEPTH_SCALING_PARAM: True, CLS_WEIGHTING_PARAM: True},
}
"""The paper's ablation rows 1-5 (docs/science.md §4), each scored by ``acc.head``; row 6 (+ fine-tuned probe) is
the ``stage2`` row's ``acc.finetuned``."""

LAYERSCALE_PARAM = "teacher.layerscale_init"
DEPTH_PARAM = "teacher.depth"
RESIDUAL_SCALE_PARAM = "teacher.residual_scale"
WEIGHT_DECAY_PARAM = "teacher.weight_decay"
AUGMENT_PARAM = "teacher.augment"
"""Teacher knobs that the causes study varies one at a time (docs/science.md, "Beyond the paper: what causes block
recurrence"; with `SD_SCHEDULE_PARAM`); an empty layerscale_init means a teacher without LayerScale."""


def partition_metric(name: str) -> str:
    return f"partition.{name}"


PARTITION_METRICS = tuple(partition_metric(n) for n in ("cut_value", "cut_dp", "cut_bisection", "dp_differs"))
"""Cut of the partition used, of the exact DP and of the reference's bisection, and whether DP and bisection differ."""

CLASS_SHARE_SUBSETS = ("train", "val", "test", "similarity", "dynamics", "accuracy")
"""Splits and subsets whose class balance is logged (``accuracy``: the test images of every dynamics accuracy, layer
replacement and adjacent swaps)."""


def class_share_metric(subset: str, bound: str) -> str:
    """Name of the min / max class share of a split or subset, e.g. ``data.train.class_share_min``."""
    return f"data.{subset}.class_share_{bound}"


CLASS_SHARE_METRICS = tuple(class_share_metric(s, b) for s in CLASS_SHARE_SUBSETS for b in ("min", "max"))

PHASE_KINDS = ("cosine", "cka")
PHASE_NAMES = ("within_sim", "between_sim", "contrast", "cut_norm", "adjacent_sim", "mean_sim")
PHASE_PREFIX = "phase."


def phase_metric(kind: str, name: str) -> str:
    """``phase.{kind}.{name}``: a phase-structure metric of one similarity kind."""
    return f"{PHASE_PREFIX}{kind}.{name}"


PHASE_METRICS = tuple(phase_metric(kind, name) for kind in PHASE_KINDS for name in PHASE_NAMES)
"""Phase-structure metrics: the x-axis of the similarity-fidelity correlation."""

FIDELITY_METRICS = (
    R2_FINAL,
    R2_MEAN,
    R2_POOLED_FINAL,
    R2_POOLED_MEAN,
    ACC_HEAD_RATIO,
    ACC_FINETUNED_RATIO,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TRANSFER_RATIO,
)
"""Fidelity metrics: the y-axis (docs/science.md §5). ``r2.*`` is the strict R^2, ``r2_pooled.*`` the reference
code's; ``acc.head_ratio`` (the teacher's frozen head) and ``acc.finetuned_ratio`` (a probe fine-tuned from it) are
the paper's accuracies; ``acc.ratio`` refits a probe on each model's own features; ``acc.transfer_ratio`` applies
the teacher's refit cls probe to the Raptor."""


def group_metric(name: str, group: str) -> str:
    """A fidelity metric of one token group: ``r2.final`` + ``cls`` -> ``r2.final.cls`` (``all``: the name itself)."""
    return name if group == "all" else f"{name}.{group}"


LAYER_METRIC_PREFIX = "r2.layer"
"""Metrics with this prefix are per-layer histories (step = teacher layer 1..L), one per token group."""
LAYER_METRIC_PREFIXES = ("r2.layer", "r2_pooled.layer")
"""Per-layer histories of the strict and the pooled R^2 (``<prefix>`` for all tokens, ``<prefix>.<group>``)."""
LAYER_RESULT_KEYS = {"r2_per_layer": "r2.layer", "r2_pooled_per_layer": "r2_pooled.layer"}
"""result.json entry -> per-layer metric prefix."""


def layer_metric(group: str, prefix: str = LAYER_METRIC_PREFIX) -> str:
    return group_metric(prefix, group)


EPOCH_KEYS = ("loss", VAL_R2, "lambda_tf", "seconds")
"""Keys of a distillation history record logged per epoch, as ``stage{n}.{key}`` at step = epoch."""


def epoch_metric(stage: int, key: str) -> str:
    return f"stage{stage}.{key}"


DYNAMICS_PREFIX = "dyn."
"""Summary metrics of the dynamics read-outs (``dyn.teacher.*``, ``dyn.raptor.*``, ``dyn.swap.*``)."""


def dynamics_metric(model: str, name: str) -> str:
    """``dyn.{model}.{name}``; model is ``teacher``, ``raptor`` or ``swap``."""
    return f"{DYNAMICS_PREFIX}{model}.{name}"


TEACHER_DYNAMICS_PREFIXES = tuple(dynamics_metric(model, "") for model in ("teacher", "swap", "replace"))
"""Dynamics metrics of the teacher alone: equal (up to the trial seed) across the trials of one teacher."""
SWAP_BASELINE = dynamics_metric("swap", "baseline_acc")
SWAP_METRICS = (SWAP_BASELINE, dynamics_metric("swap", "intra_acc_mean"), dynamics_metric("swap", "inter_acc_mean"))
"""Teacher accuracy unswapped, and mean over adjacent-layer swaps inside a phase / across a boundary."""


def swap_metric(kind: str) -> str:
    """Mean accuracy over adjacent-layer swaps of one kind (``intra`` / ``inter`` phase)."""
    return dynamics_metric("swap", f"{kind}_acc_mean")


REPLACE_NS = (1, 2, 3)
"""How many teacher layers the layer-replacement test replaces at once (docs/science.md §6)."""
REPLACE_BASELINE = dynamics_metric("replace", "baseline")
REPLACE_IMAGES = dynamics_metric("replace", "num_images")
"""Test images each replacement accuracy is scored on (at least 2,000 on a GPU)."""


def replace_metric(kind: str, n: int) -> str:
    """Mean ``acc.head``-path accuracy of the teacher with `n` layers replaced by a block of the same phase
    (``intra``) or of another phase (``inter``): ``dyn.replace.intra.n2``."""
    return dynamics_metric("replace", f"{kind}.n{n}")


REPLACE_METRICS = (
    REPLACE_BASELINE,
    *(replace_metric(kind, n) for kind in ("intra", "inter") for n in REPLACE_NS),
)
"""The paper's swap test (layer replacement); the adjacent swaps (``dyn.swap.*``) are the secondary read-out."""

EMERGENCE_PREFIX = "teacher.emergence."
"""The teacher's phase snapshots across its training (``teacher.track_phases``; study/science/emergence.py), logged by
each of its trials at step = epochs done (0 = init): ``teacher.emergence.{val_acc, mean_sim, k2.within_sim, ...}``."""
EMERGENCE_KEY = "emergence"
"""Entry of result.json's ``teacher`` record holding those snapshots (a list of records with an ``epoch``)."""


def emergence_metric(key: str) -> str:
    return f"{EMERGENCE_PREFIX}{key}"


SUMMARY_PREFIXES = ("trials.", "best.")
"""Parent-run metrics: ``trials.{status}`` counts, ``trials.orphaned``, ``best.{objective}``."""


def trials_count_metric(status: str) -> str:
    return f"trials.{status}"


def best_metric(objective: str) -> str:
    return f"best.{objective}"


# ----------------------------------------------------------------------------- artifacts, inputs, names
RESULT_ARTIFACT = "result.json"
SPEC_ARTIFACT = "sweep_spec.json"
DYNAMICS_KEY = "dynamics"
"""result.json entry with the dynamics curves; absent in older runs and with ``dynamics.enabled: false``."""
DATA_KEY = "data"
"""result.json entry naming the trial's dataset: name, split sizes, digest (logged with ``log_inputs``)."""
MODEL_ARTIFACT = "model"
"""Artifact path of the Raptor as an MLflow PyTorch model (``record.log_model``)."""
RAPTOR_FILE = "raptor.pt"
"""The trial folder's Raptor: ``state_dict``, ``phase_bounds``, ``config``; with ``record.log_model`` also the
pickled module (``RAPTOR_MODULE_KEY``) and a few x_0 test rows (``RAPTOR_EXAMPLE_KEY``): what the MLflow model is
logged from."""
RAPTOR_MODULE_KEY = "module"
RAPTOR_EXAMPLE_KEY = "input_example"

METRIC_PREFIXES = (
    "r2.",
    "r2_pooled.",
    "acc.",
    PHASE_PREFIX,
    DYNAMICS_PREFIX,
    EMERGENCE_PREFIX,
    "stage1.",
    "stage2.",
    *SUMMARY_PREFIXES,
)
METRIC_NAMES = frozenset({TEACHER_TEST_ACC, VAL_R2, *PARTITION_METRICS, *CLASS_SHARE_METRICS})
"""What a metric name looks like: the names above or a name under these prefixes (used by the literal grep test)."""


def trial_index(trial_id: str) -> int:
    """Tune's trial ids end in a running counter (``a1b2c3d4_00007`` -> 7); other ids -> 0."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def trial_run_name(params: dict, trial_id: str, index: int | None = None) -> str:
    """Short, sortable run name for the UI, e.g. ``sd0.3-s1-k2-0007`` (SD rate, teacher seed, k, trial index).

    `params` is the trial's flat config (dotted keys); `index` the trial's position in the sweep
    (default: the counter at the end of `trial_id`)."""
    index = trial_index(trial_id) if index is None else index
    return (
        f"sd{float(params.get(SD_PARAM, 0.0)):g}-s{params.get(TEACHER_SEED_PARAM, 0)}-k{params.get(K_PARAM, 0)}"
        f"-{index:04d}"
    )


# ----------------------------------------------------------------------------- the pre-registered relation
PRIMARY_PREDICTOR = "phase.cosine.within_sim"
PRIMARY_TARGET = "r2_pooled.final"
"""The default pre-registered relation of a sweep (docs/science.md §7): similarity -> pooled final-layer R^2."""
ANALYSIS_TARGETS = tuple(dict.fromkeys((*FIDELITY_METRICS, *PROBE_METRICS)))
"""Metric names a sweep spec may declare as the target of its primary relation (docs/science.md §5)."""
ANALYSIS_PREDICTORS = PHASE_METRICS
"""Metric names a sweep spec may declare as the predictor of its primary relation."""
