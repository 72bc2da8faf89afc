"""Every statistic of one sweep's trials, computed once: the numbers behind the report, without rendering.

Inference follows docs/science.md §7: the pre-registered primary relation (`Reading`) is fitted
with the teacher as the unit (`analysis.cluster`), per SD rate and per k as well; trial-level
fits (``fits``, ``by_sd``, ``by_k``, ``ranking``) are kept as naive, exploratory tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.cluster import ClusterFit, cluster_fit, exploratory_ranking, searched_covariates
from analysis.fit import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    StatusCounts,
    fit_by,
    fit_table,
    rank_predictors,
    sd_trend,
    split_by_status,
)
from analysis.importance import Importances, param_importances
from analysis.inference import cluster_mean
from analysis.power import Power, power
from study.contract import (
    DYNAMICS_PREFIX,
    FIDELITY_METRICS,
    K_PARAM,
    PAPER_ACC_METRIC,
    PHASE_METRICS,
    PHASE_PREFIX,
    PRIMARY_PREDICTOR,
    PRIMARY_TARGET,
    R2_FINAL,
    R2_KINDS,
    SD_PARAM,
    TEACHER_DYNAMICS_PREFIXES,
    TEACHER_KEY_PARAM,
)

DYNAMICS_COLUMNS = ["metric", "sd", "mean", "std", "n"]
SECONDARY_TARGETS = (R2_FINAL, PAPER_ACC_METRIC)
"""Targets refitted per SD rate beside the primary one (same predictor and covariates): the strict R^2 and the
paper-protocol accuracy ratio, so a report can say whether the per-SD picture depends on the fidelity measure.
Each R^2 target is refitted for its mean over layers too (`over_layers`)."""


def over_layers(metric: str) -> str | None:
    """The mean-over-layers counterpart of a final-layer R^2 metric (``r2_pooled.final.cls`` ->
    ``r2_pooled.mean.cls``); None for any other metric. docs/science.md §7: fidelity claims show both."""
    parts = metric.split(".")
    if len(parts) >= 2 and parts[0] in R2_KINDS and parts[1] == "final":
        return ".".join([parts[0], "mean", *parts[2:]])
    return None


@dataclass(frozen=True)
class Reading:
    """How a sweep is read, as its spec pre-registered it (docs/science.md §7).

    ``source`` says where it came from: "spec" (the sweep's sweep_spec.json), "default" (a spec
    launched before specs declared it), or "given" (passed by the caller, e.g. a re-analysis).
    """

    predictor: str = PRIMARY_PREDICTOR
    target: str = PRIMARY_TARGET
    purpose: str = "correlation"
    scheduler: str = "none"
    source: str = "default"

    @classmethod
    def from_spec(cls, spec: Mapping | None) -> Reading:
        """From a saved sweep spec (``SweepSpec.model_dump``); missing sections take the defaults."""
        if not spec:
            return cls()
        primary = (spec.get("analysis") or {}).get("primary") or {}
        declared = "purpose" in spec and bool(primary)
        return cls(
            predictor=primary.get("predictor", PRIMARY_PREDICTOR),
            target=primary.get("target", PRIMARY_TARGET),
            purpose=spec.get("purpose", "correlation"),
            scheduler=(spec.get("scheduler") or {}).get("type", "none"),
            source="spec" if declared else "default",
        )

    def warnings(self, counts: StatusCounts) -> list[str]:
        notes = []
        if self.purpose == "tuning":
            notes.append(
                f"Tuning sweep (scheduler {self.scheduler}): trials were chosen by a search"
                + (" and stopped early by the scheduler" if self.scheduler != "none" else "")
                + ", so any similarity-fidelity correlation here holds only among trials that survived it "
                "(pruned trials are missing not at random); it is not an estimate of the relation."
            )
        elif counts.pruned:
            notes.append(f"{counts.pruned} trials were pruned in a correlation sweep: the relation is conditional "
                         "on the trials that finished.")  # fmt: skip
        if self.source == "default":
            notes.append(f"The sweep's spec declares no primary relation (launched before specs did): the default "
                         f"{self.target} ~ {self.predictor} is used.")  # fmt: skip
        return notes


@dataclass(frozen=True)
class SweepAnalysis:
    """The finished trials and everything fitted on them.

    ``best`` maps each fidelity metric to the phase metric with the highest
    pooled regression R^2 (only fidelity metrics with a defined fit appear);
    ``dynamics`` is `dynamics_by_sd` of the finished trials.
    """

    trials: pd.DataFrame
    counts: StatusCounts
    params: list[str]
    fits: pd.DataFrame
    ranking: pd.DataFrame
    by_sd: pd.DataFrame
    by_k: pd.DataFrame
    trends: pd.DataFrame
    importances: list[Importances]
    best: dict[str, str]
    dynamics: pd.DataFrame
    reading: Reading = Reading()
    covariates: tuple[str, ...] = ()
    primary: ClusterFit | None = None
    """The pre-registered relation, teacher as the unit, adjusted for `covariates`."""
    primary_unadjusted: ClusterFit | None = None
    """The same without covariates (to show what adjusting for k and the knobs changes)."""
    primary_mean: ClusterFit | None = None
    """The primary relation with the target's mean over layers (`over_layers`), when the target is a final R^2."""
    per_sd: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_k: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_sd_secondary: pd.DataFrame = field(default_factory=pd.DataFrame)
    """`per_sd` for each of `SECONDARY_TARGETS` (other than the primary target), column ``target``."""
    sd_trends: list[ClusterFit] = field(default_factory=list)
    """SD rate -> the primary predictor, target and the target over layers, teacher as the unit, k adjusted."""
    n_teachers: int = 0
    """Distinct teachers among the finished trials: below `MIN_TEACHERS` no R^2, CI or p is shown anywhere."""
    power: Power | None = None
    exploratory: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def analyse_sweep(
    trials: pd.DataFrame,
    params: Sequence[str],
    *,
    fidelity: Sequence[str] = FIDELITY_METRICS,
    predictors: Sequence[str] | None = None,
    reading: Reading | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> SweepAnalysis:
    """Split off the finished trials, then fit, rank, group, trend-test and score importances.

    ``trials`` is `analysis.load.load_trials` output (all statuses); ``params``
    the config-param columns scored for importance; ``predictors`` defaults to
    `PHASE_METRICS` plus any other ``phase.*`` metric the trials carry; ``reading``
    (default `Reading()`) names the primary relation fitted with the teacher as the unit.
    Works on zero trials too (empty tables).
    """
    reading = reading or Reading()
    if predictors is None:
        predictors = [
            *PHASE_METRICS,
            *sorted(c for c in trials if c.startswith(PHASE_PREFIX) and c not in PHASE_METRICS),
        ]
    finished, counts = split_by_status(trials)
    options = {"n_resamples": n_resamples, "seed": seed}
    fits = with_teacher_counts(fit_table(finished, fidelity, predictors, **options), finished)
    ranking = rank_predictors(fits)
    top = ranking[(ranking["rank"] == 1) & ranking["r2"].notna()]
    clustered = _clustered(finished, params, predictors, reading, n_resamples, seed)
    return SweepAnalysis(
        trials=finished,
        counts=counts,
        params=list(params),
        fits=fits,
        ranking=ranking,
        by_sd=with_teacher_counts(fit_by(finished, SD_PARAM, fidelity, predictors, **options), finished, SD_PARAM),
        by_k=with_teacher_counts(fit_by(finished, K_PARAM, fidelity, predictors, **options), finished, K_PARAM),
        trends=sd_trend(finished, [*predictors, *fidelity], **options),
        importances=[param_importances(finished, target, params, seed=seed) for target in fidelity],
        best=dict(zip(top["y"], top["x"], strict=True)),
        dynamics=dynamics_by_sd(finished),
        reading=reading,
        notes=reading.warnings(counts) + clustered.pop("notes"),
        n_teachers=int(finished[TEACHER_KEY_PARAM].nunique()) if TEACHER_KEY_PARAM in finished else 0,
        **clustered,
    )


def with_teacher_counts(fits: pd.DataFrame, trials: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """``fits`` (naive, one row per (y, x) and level of ``by``) with ``n_teachers``: distinct teachers among the
    complete pairs of each row, so every fit states both counts (docs/science.md §7); NaN without teacher.key."""
    # boolean masks on arrays, not a filtered trials table per row: the table has hundreds of columns and every
    # pandas filter deep-copies its attrs, which took seconds per report (results/throughput/README.md, smoke sweep)
    present: dict[str, np.ndarray] = {}

    def complete(column: str) -> np.ndarray:
        if column not in present:
            present[column] = trials[column].notna().to_numpy()
        return present[column]

    teachers = trials[TEACHER_KEY_PARAM] if TEACHER_KEY_PARAM in trials else None
    counts = []
    for row in fits.itertuples(index=False):
        if teachers is None:
            counts.append(math.nan)
            continue
        if not {row.x, row.y} <= set(trials):
            counts.append(0)
            continue
        keep = complete(row.x) & complete(row.y)
        if by is not None:
            keep = keep & (trials[by] == row.level).to_numpy()
        counts.append(teachers[keep].nunique())
    position = list(fits.columns).index("n") + 1 if "n" in fits else len(fits.columns)
    fits = fits.copy()
    fits.insert(position, "n_teachers", pd.Series(counts, index=fits.index, dtype=float))
    return fits


def _clustered(
    trials: pd.DataFrame,
    params: Sequence[str],
    predictors: Sequence[str],
    reading: Reading,
    n_resamples: int,
    seed: int,
) -> dict:
    """The teacher-as-unit fields of `SweepAnalysis` (docs/science.md §7); empty ones when they cannot be fitted."""
    x, y = reading.predictor, reading.target
    missing = [c for c in (x, y, TEACHER_KEY_PARAM) if c not in trials]
    if missing or trials.empty:
        why = f"no {', '.join(missing)} in the finished trials" if missing else "no finished trials"
        return {"notes": [f"Primary relation {y} ~ {x} not fitted: {why}."]}
    options = {"n_resamples": n_resamples, "seed": seed}
    covariates = tuple(searched_covariates(trials, params))
    factor = SD_PARAM if SD_PARAM in trials and trials[SD_PARAM].nunique() > 1 else None
    primary = cluster_fit(trials, x, y, covariates, factor=factor, **options)
    y_mean = over_layers(y)
    primary_mean = cluster_fit(trials, x, y_mean, covariates, factor=factor, **options) if y_mean in trials else None
    per_sd = _per_level(trials, SD_PARAM, x, y, covariates, options)
    others = dict.fromkeys(t for target in (y, *SECONDARY_TARGETS) for t in (target, over_layers(target)) if t)
    secondary = [
        _per_level(trials, SD_PARAM, x, target, covariates, options).assign(target=target)
        for target in others
        if target != y and target in trials
    ]
    per_k = _per_level(trials, K_PARAM, x, y, [c for c in covariates if c != K_PARAM], options)
    if len(per_k) and PAPER_ACC_METRIC in trials:
        accuracy = [cluster_mean(group[PAPER_ACC_METRIC], group[TEACHER_KEY_PARAM])
                    for _, group in trials.dropna(subset=[K_PARAM]).groupby(K_PARAM, sort=True)]  # fmt: skip
        per_k = per_k.assign(
            acc_ratio=[a["mean"] for a in accuracy],
            acc_ratio_ci=[a["ci"].as_list() for a in accuracy],
            acc_ratio_n_teachers=[a["n_teachers"] for a in accuracy],
            acc_ratio_note=[a["note"] for a in accuracy],
        )
    trend_covariates = [K_PARAM] if K_PARAM in covariates else []
    trends = [cluster_fit(trials, SD_PARAM, metric, trend_covariates, **options)
              for metric in (x, y, y_mean) if metric and metric in trials and SD_PARAM in trials]  # fmt: skip
    return {
        "covariates": covariates,
        "primary": primary,
        "primary_unadjusted": cluster_fit(trials, x, y, (), factor=factor, **options) if covariates else primary,
        "primary_mean": primary_mean,
        "per_sd": per_sd,
        "per_k": per_k,
        "per_sd_secondary": pd.concat(secondary, ignore_index=True) if secondary else pd.DataFrame(),
        "sd_trends": trends,
        "power": power(primary, trials),
        "exploratory": exploratory_ranking(trials, y, predictors, covariates, **options),
        "notes": [],
    }


def _per_level(trials: pd.DataFrame, by: str, x: str, y: str, covariates: Sequence[str], options: dict) -> pd.DataFrame:
    """`cluster_fit` of y ~ x within each level of ``by``: one summary row per level (column ``level``)."""
    if by not in trials or trials[by].isna().all():
        return pd.DataFrame()
    rows = []
    for level, group in trials.dropna(subset=[by]).groupby(by, sort=True):
        fit = cluster_fit(group, x, y, covariates, **options)
        rows.append({"level": level.item() if hasattr(level, "item") else level, **fit.summary()})
    return pd.DataFrame(rows)


def dynamics_by_sd(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of every ``dyn.*`` metric per SD rate, one row per (metric, sd): `DYNAMICS_COLUMNS`.

    Teacher-only metrics (`TEACHER_DYNAMICS_PREFIXES`) are first averaged over the trials of
    each teacher (``teacher.key``, else the run), so their n counts teachers; Raptor metrics
    count trials. Trials without a metric are left out of its n. Empty when no trial has a
    ``dyn.*`` metric or the SD param is absent.
    """
    metrics = sorted(c for c in trials if c.startswith(DYNAMICS_PREFIX))
    if not metrics or SD_PARAM not in trials:
        return pd.DataFrame(columns=DYNAMICS_COLUMNS)
    teacher = trials.get(TEACHER_KEY_PARAM, trials["run_id"]).fillna(trials["run_id"])
    units = pd.DataFrame({"sd": trials[SD_PARAM], "teacher": teacher})
    frames = []
    for metric in metrics:
        values = units.assign(value=trials[metric]).dropna(subset=["sd", "value"])
        if metric.startswith(TEACHER_DYNAMICS_PREFIXES):
            values = values.groupby(["sd", "teacher"], as_index=False)["value"].mean()
        table = values.groupby("sd")["value"].agg(mean="mean", std="std", n="count").reset_index()
        frames.append(table.assign(metric=metric))
    return pd.concat(frames, ignore_index=True)[DYNAMICS_COLUMNS]
