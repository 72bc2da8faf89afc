"""Search spaces as data: a sweep YAML -> a validated `SweepSpec`.

A sweep file has these sections (all but `name` optional):

    name: smoke
    base:        {teacher: {depth: 6}, ...}          # a partial TrialConfig shared by all trials
    space:                                           # dotted TrialConfig field -> distribution
      teacher.sd_rate: {uniform: [0.0, 0.6]}
      raptor.k: {choice: [2, 3]}
      distill.stage2.lr: {loguniform: [1.0e-4, 1.0e-3]}
      teacher.seed: {randint: [0, 3]}                # upper bound exclusive
      ablation_row:                                  # cases: a label that sets several fields together
        cases: {tf_only: {distill.arm: tf_only, raptor.depth_scaling: false}, full: {distill.arm: full}}
    search:     {sampler: tpe, metric: val_r2, mode: max, num_samples: 6, max_concurrent: 2, seed: 0}
    scheduler:  {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none}
    resources:  {driver_cpu: 1, driver_gpu: 0, workers: 1, worker_cpu: 0, worker_gpu: 0}
    purpose:    correlation                          # or tuning (default correlation)
    analysis:   {primary: {predictor: phase.cosine.within_sim, target: r2_pooled.final}}   # the default
    record:     {log_model: false, register_as: null}   # the Raptor as an MLflow model (+ registry name)

`purpose` and `analysis` pre-register how the sweep is read (docs/science.md §7). A correlation
sweep measures the similarity-fidelity relation, so it may not stop trials early: an early-stopping
scheduler is refused at load (pruned trials are missing not at random). A tuning sweep may use one;
its report warns that any correlation is conditional on surviving the scheduler. `analysis.primary`
is the one relation the report's headline and paper comparison use; every other predictor is
exploratory. Its metric names must be ones the trials log (study/contract.py).

Validation happens at load: unknown keys, empty ranges and any corner of the
space that would make an invalid TrialConfig (k > depth, lambda outside [0, 1],
...) fail with one line naming the field.

Command-line overrides (`raptor-study sweep SPEC --set KEY=VALUE`) are applied to
the YAML tree before validation: a KEY under a spec section (`search.num_samples`,
`resources.worker_gpu`, `name`, `space.raptor.k`) sets that entry; any other KEY is
a TrialConfig field of the base (`data.path` -> `base.data.path`).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from study.config import ConfigError, TrialConfig, build_trial_config
from study.configio import (
    StrictModel,
    deep_merge,
    describe_validation_error,
    flatten,
    read_yaml,
    stable_hash,
    unflatten,
)
from study.contract import ANALYSIS_PREDICTORS, ANALYSIS_TARGETS, PRIMARY_PREDICTOR, PRIMARY_TARGET, VAL_R2

MAX_CORNER_CHECKS = 4096


class Distribution(StrictModel):
    """Exactly one of: uniform [lo, hi], loguniform [lo, hi], randint [lo, hi), choice [values...], or cases
    {label: {dotted field: value, ...}}: a choice of labels, each setting several fields together (e.g. the
    paper's ablation rows, which couple distill.arm with two switches); its key is the label's name, not a field."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    cases: dict[str, dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "randint", "choice", "cases") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of uniform / loguniform / randint / choice / cases, got {given or 'none'}"
            )
        if self.cases is not None and (not self.cases or not all(self.cases.values())):
            raise ValueError("cases: give at least one label, each setting at least one field")
        if self.uniform and not self.uniform[0] < self.uniform[1]:
            raise ValueError(f"uniform: empty range {list(self.uniform)} (need low < high)")
        if self.loguniform and not 0 < self.loguniform[0] < self.loguniform[1]:
            raise ValueError(f"loguniform: empty or non-positive range {list(self.loguniform)} (need 0 < low < high)")
        if self.randint and not self.randint[0] < self.randint[1]:
            raise ValueError(f"randint: empty range {list(self.randint)} (need low < high, high exclusive)")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: empty list")
        return self

    def corners(self) -> list[Any]:
        """The extreme values a trial can draw (used to validate the whole space at load)."""
        if self.choice is not None or self.cases is not None:
            return list(self.choice if self.choice is not None else self.cases)
        if self.randint:
            return [self.randint[0], self.randint[1] - 1]
        return list(self.uniform or self.loguniform)

    def to_tune(self, grid: bool = False):
        from ray import tune

        if grid and (self.choice is not None or self.cases is not None):  # grid: every combination of the choice
            return tune.grid_search(self.corners())  # lists, each once per num_samples, the rest drawn at random
        if self.choice is not None or self.cases is not None:
            return tune.choice(self.corners())
        if self.randint:
            return tune.randint(*self.randint)
        if self.loguniform:
            return tune.loguniform(*self.loguniform)
        return tune.uniform(*self.uniform)

    def fields(self, key: str, value: Any) -> dict[str, Any]:
        """The config fields a drawn value sets: the case's fields, else {key: value}."""
        if self.cases is None:
            return {key: value}
        if value not in self.cases:
            raise ConfigError(f"space.{key}: unknown case {value!r} (one of {', '.join(self.cases)})")
        return dict(self.cases[value])


class SearchConfig(StrictModel):
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="grid: every combination of the `choice` entries (x num_samples), continuous entries "
        "drawn at random (Tune's basic variant generator)",
    )
    metric: Literal[VAL_R2, "loss"] = Field(
        VAL_R2, description="reported every epoch: val final-layer R^2 or train loss"
    )
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1, le=100_000, description="trials (per grid point for 'grid')")
    max_concurrent: int = Field(2, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    storage: str | None = Field(
        None,
        description="Optuna storage: an RDB URL (e.g. sqlite:///optuna.db); "
        "default: a JournalStorage file in the sweep's Ray folder",
    )
    oom_retry: bool = Field(
        False, description="retry a trial that ran out of memory once, with half the distillation batch size"
    )


class SchedulerConfig(StrictModel):
    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(1, ge=1, description="stage-2 epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class ResourcesConfig(StrictModel):
    """Per trial: the Tune driver (teacher, activations, evaluation) and its Ray Train workers.

    The driver mostly waits while its workers train, so fractions (0.5 + 0.5) let
    one trial hold a single core; fractional GPUs pack several trials on one GPU."""

    driver_cpu: float = Field(1.0, ge=0.0)
    driver_gpu: float = Field(0.0, ge=0.0)
    workers: int = Field(1, ge=1, le=1024)
    worker_cpu: float = Field(1.0, ge=0.0)
    worker_gpu: float = Field(0.0, ge=0.0)
    train_mode: Literal["auto", "local", "workers"] = Field(
        "auto",
        description="local: Ray Train's local mode (the one worker runs in the trial's process, which then "
        "holds the driver's and the worker's resources); workers: Train worker actors; auto: local "
        "when workers == 1",
    )
    reuse_actors: bool = Field(True, description="Tune reuses a finished trial's process for the next trial")

    @property
    def local_train(self) -> bool:
        return self.train_mode == "local" or (self.train_mode == "auto" and self.workers == 1)

    @model_validator(mode="after")
    def _nonzero(self) -> ResourcesConfig:
        if self.driver_cpu + self.driver_gpu <= 0:
            raise ValueError("resources.driver_cpu: the trial driver needs a resource (driver_cpu + driver_gpu > 0)")
        if self.worker_cpu + self.worker_gpu <= 0:
            raise ValueError("resources.worker_cpu: each worker needs a resource (worker_cpu + worker_gpu > 0)")
        if self.train_mode == "local" and self.workers != 1:
            raise ValueError(
                f"resources.train_mode: 'local' runs one worker, got workers={self.workers} (use 'workers' or 'auto')"
            )
        return self


class PrimaryRelation(StrictModel):
    """The pre-registered relation target ~ predictor (docs/science.md §7); defaults in study/contract.py."""

    predictor: str = PRIMARY_PREDICTOR
    target: str = PRIMARY_TARGET

    @model_validator(mode="after")
    def _known(self) -> PrimaryRelation:
        if self.predictor not in ANALYSIS_PREDICTORS:
            raise ValueError(
                f"analysis.primary.predictor: unknown metric {self.predictor!r} "
                f"(one of {', '.join(ANALYSIS_PREDICTORS)})"
            )
        if self.target not in ANALYSIS_TARGETS:
            raise ValueError(
                f"analysis.primary.target: unknown metric {self.target!r} (one of {', '.join(ANALYSIS_TARGETS)})"
            )
        return self


class AnalysisConfig(StrictModel):
    primary: PrimaryRelation = PrimaryRelation()


class RecordConfig(StrictModel):
    """What MLflow records of a trial beyond its params, metrics and folder of artifacts (study/sweep/record.py)."""

    log_model: bool = Field(
        False,
        description="log each finished trial's Raptor as an MLflow PyTorch model (artifact 'model'): input x_0 "
        "tokens [B, T, D] float32 (the teacher's embedded tokens), output the Raptor's final tokens "
        "[B, T, D]; with a signature and a few test rows as input example",
    )
    register_as: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="register every logged model as a new version of this registered model (needs log_model)",
    )

    @model_validator(mode="after")
    def _register_needs_model(self) -> RecordConfig:
        if self.register_as is not None and not self.log_model:
            raise ValueError(
                f"record.register_as: registers the logged model, so it needs record.log_model: true "
                f"(got register_as={self.register_as!r} with log_model false)"
            )
        return self


class SweepSpec(StrictModel):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    purpose: Literal["correlation", "tuning"] = Field(
        "correlation",
        description="correlation: measure the similarity-fidelity relation (no early stopping); "
        "tuning: find good settings (early stopping allowed, correlations conditional on survival)",
    )
    analysis: AnalysisConfig = AnalysisConfig()
    record: RecordConfig = RecordConfig()

    @model_validator(mode="after")
    def _no_early_stopping_in_correlation(self) -> SweepSpec:
        if self.purpose == "correlation" and self.scheduler.type != "none":
            raise ValueError(
                f"scheduler.type: {self.scheduler.type!r} stops trials early, which a correlation sweep "
                "cannot use (pruned trials are missing not at random, docs/science.md §7); set "
                "scheduler.type: none, or purpose: tuning"
            )
        return self

    def trial_config(self, params: dict[str, Any], name: str | None = None) -> TrialConfig:
        """The full TrialConfig of one trial: base <- sampled params (dotted keys; a `cases` label -> its fields)."""
        fields: dict[str, Any] = {}
        for key, value in params.items():
            fields.update(self.space[key].fields(key, value) if key in self.space else {key: value})
        tree = deep_merge(self.base, unflatten(fields))
        if name:
            tree = deep_merge(tree, {"name": name})
        return build_trial_config(tree)

    def tune_space(self) -> dict[str, Any]:
        grid = self.search.sampler == "grid"
        return {key: dist.to_tune(grid) for key, dist in self.space.items()}


def _validate_space(spec: SweepSpec) -> None:
    known = set(TrialConfig().flat())
    for key, dist in spec.space.items():
        if dist.cases is not None:
            if key in known:
                raise ConfigError(f"space.{key}: a cases entry is named by a label, not a config field")
            for label, case in dist.cases.items():
                for field in case:
                    if field not in known or field in spec.space:
                        why = "searched by another entry" if field in spec.space else "unknown config field"
                        raise ConfigError(f"space.{key}.cases.{label}.{field}: {why}")
        elif key not in known:
            raise ConfigError(f"space.{key}: unknown config field (e.g. teacher.sd_rate, raptor.k, distill.anneal)")
    spec.trial_config({})  # the base alone must be a valid trial
    corner_lists = [[(key, value) for value in dist.corners()] for key, dist in spec.space.items()]
    n_corners = 1
    for values in corner_lists:
        n_corners *= len(values)
    if n_corners > MAX_CORNER_CHECKS:  # too many combinations: check each axis on its own
        combos = ([pair] for values in corner_lists for pair in values)
    else:
        combos = itertools.product(*corner_lists)
    for combo in combos:
        params = dict(combo)
        try:
            spec.trial_config(params)
        except ConfigError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"space: {err} (at {where})") from None


SPEC_SECTIONS = (
    "name",
    "description",
    "base",
    "space",
    "search",
    "scheduler",
    "resources",
    "purpose",
    "analysis",
    "record",
)


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A sweep tree with `--set` overrides applied (see the module docstring for the key rules).

    A base field that the space searches cannot be set (the sampled value would win): the
    error says to override its distribution instead."""
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head == "space":
            if not rest:
                raise ConfigError("--set space: name a searched field, e.g. space.raptor.k='{choice: [2, 3]}'")
            space = tree.get("space") or {}
            if isinstance(space, dict):  # else validation names the malformed `space`
                tree = {**tree, "space": {**space, rest: value}}
        elif head in SPEC_SECTIONS:
            tree = deep_merge(tree, unflatten({key: value}))
        elif key in (tree.get("space") or {}):
            raise ConfigError(
                f"--set {key}: the space searches this field; set its distribution instead, "
                f"e.g. --set space.{key}='{{choice: [{value!r}]}}'"
            )
        elif key in _case_fields(tree.get("space")):
            raise ConfigError(f"--set {key}: a cases entry of the space sets this field; edit its cases instead")
        else:
            tree = deep_merge(tree, {"base": unflatten({key: value})})
    return tree


def _case_fields(space: Any) -> set[str]:
    """The config fields that the `cases` entries of a (raw) space set."""
    entries = space.values() if isinstance(space, dict) else ()
    cases = [e["cases"] for e in entries if isinstance(e, dict) and isinstance(e.get("cases"), dict)]
    return {field for entry in cases for case in entry.values() if isinstance(case, dict) for field in case}


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Parse a sweep YAML, apply `--set` overrides, validate; any problem is one ConfigError line
    naming the field."""
    return sweep_from_tree(read_yaml(path), path, overrides)


def as_sweep_spec(spec: SweepSpec | dict[str, Any] | str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """A typed spec from a typed spec, a dict (the YAML's tree) or a path to a YAML file, overrides applied."""
    if isinstance(spec, SweepSpec):
        return sweep_from_tree(spec.model_dump(mode="json"), "spec", overrides) if overrides else spec
    if isinstance(spec, dict):
        return sweep_from_tree(json.loads(json.dumps(spec)), "spec", overrides)
    return load_sweep(spec, overrides)


def spec_text(spec: SweepSpec | dict[str, Any] | str | Path) -> str:
    """The spec as the user wrote it (the YAML file's text), else as YAML from the typed spec."""
    import yaml

    if isinstance(spec, (str, Path)) and Path(spec).is_file():
        return Path(spec).read_text()
    tree = spec.model_dump(mode="json") if isinstance(spec, SweepSpec) else spec
    return yaml.safe_dump(tree, sort_keys=False)


def spec_hash(spec: SweepSpec) -> str:
    """Hash of what defines the sweep (overrides applied; the description, the Optuna storage location and what
    MLflow records beyond the trials' results, `record`, excluded): two launches with the same hash run the same
    study."""
    tree = spec.model_dump(mode="json")
    tree.pop("description", None)
    tree.pop("record", None)
    tree["search"].pop("storage", None)
    return stable_hash(tree, length=12)


def sweep_from_tree(tree: Any, path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping with name/base/space/search/..., got {type(tree).__name__}"
        )
    if overrides:
        tree = apply_overrides(tree, overrides)
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_validation_error(err)}") from None
    try:
        _validate_space(spec)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return spec


NEWER_SECTIONS = ("purpose", "analysis", "record")
"""Spec sections added after sweeps were already launched; `resume` of such a sweep takes their defaults."""


def check_same_spec(launched: dict[str, Any], spec: SweepSpec) -> None:
    """`resume` must continue the sweep that was launched: the spec, with its --set overrides,
    may not have changed (the description excepted). `launched` is the saved `model_dump(mode='json')`."""
    before = flatten(launched)
    now = flatten(json.loads(json.dumps(spec.model_dump(mode="json"))))
    for key in sorted(before.keys() | now.keys()):
        if key not in before and key.split(".")[0] in NEWER_SECTIONS:
            continue  # launched before the spec had this section: its default applies
        if key != "description" and before.get(key) != now.get(key):
            raise ConfigError(
                f"resume: {key} differs from the launched sweep (launched {before.get(key)!r}, "
                f"now {now.get(key)!r}); resume with the launch's spec file and --set values"
            )
