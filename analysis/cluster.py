"""A similarity-fidelity relation fitted with the teacher as the unit (docs/science.md §7).

Trials that share a teacher share its similarity structure, so the unit of replication is the
teacher (``teacher.key``). `cluster_fit` estimates ``target ~ predictor + covariates`` with the
estimators of `analysis.inference`, one model per number:

- the pooled slope, its CI and its p: OLS with a teacher-clustered covariance, t with G - 2 df
  (flagged unreliable below `MIN_RELIABLE_TEACHERS` teachers);
- the between-teacher and within-teacher slopes (within-between split, same covariance and reference);
- with a teacher-level factor (the SD rate), the slope on teacher means with the factor's levels as
  dummies: the relation among teachers of one SD level, which SD cannot confound;
- the partial R^2 and its cluster-bootstrap percentile CI, saturated resamples dropped and counted;
- labelled "naive": trial-level OLS t-interval and p that treat trials as independent (contrast only).

Fewer than `MIN_TEACHERS` teachers: no slope, R^2, CI or p at all, only the counts and the reason.
Covariates: ``raptor.k`` as categories; other varied searched knobs as numbers; a covariate constant
in the fitted rows is left out. Teacher params are never covariates: they define the unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests

from analysis.inference import (
    CATEGORICAL,
    CLUSTERED,
    CONFIDENCE,
    MIN_RELIABLE_TEACHERS,
    MIN_TEACHERS,
    Coefficient,
    Interval,
    bootstrap_r2,
    build_design,
    clustered_ols,
    json_number,
    partial_r2,
    teacher_means_ols,
    too_few,
    unreliable,
    within_between,
)
from study.contract import K_PARAM, TEACHER_KEY_PARAM

DEFAULT_RESAMPLES = 1999
DEFAULT_SEED = 0
NAIVE = "naive trial-level OLS"
NOT_COVARIATES = ("teacher.", "name", "seed", "runtime.", "data.")
"""Params never used as covariates: teacher params define the unit (the SD rate drives similarity, so
adjusting for it would remove the relation under study); names, trial seeds, runtime and data paths are not knobs."""


@dataclass(frozen=True)
class NaiveFit:
    """Trial-level numbers that treat every trial as independent: shown only labelled "naive"."""

    n_trials: int
    slope: float = math.nan
    slope_ci: Interval = Interval()
    r2: float = math.nan
    p: float = math.nan
    method: str = NAIVE

    def summary(self) -> dict:
        return {
            "method": self.method,
            "n_trials": self.n_trials,
            "slope": json_number(self.slope),
            "slope_ci": self.slope_ci.as_list(),
            "r2": json_number(self.r2),
            "p": json_number(self.p),
        }


@dataclass(frozen=True)
class ClusterFit:
    """``target ~ predictor + covariates`` with the teacher as the unit; NaN fields + ``note`` when undefined.

    ``pooled``, ``between``, ``within`` and ``within_factor`` are `Coefficient`s (estimate, se, CI, p, df of one
    model each); ``factor`` names the teacher-level factor of ``within_factor`` (empty: not fitted)."""

    predictor: str
    target: str
    covariates: tuple[str, ...]
    n_trials: int
    n_teachers: int
    method: str = ""
    pooled: Coefficient = Coefficient()
    between: Coefficient = Coefficient()
    within: Coefficient = Coefficient()
    factor: str = ""
    within_factor: Coefficient = Coefficient()
    r2: float = math.nan
    r2_ci: Interval = Interval()
    r2_resamples: int = 0
    r2_dropped: int = 0
    naive: NaiveFit | None = None
    note: str = ""

    @property
    def defined(self) -> bool:
        return self.pooled.defined

    @property
    def slope(self) -> float:
        return self.pooled.estimate

    @property
    def slope_ci(self) -> Interval:
        return self.pooled.ci

    @property
    def p(self) -> float:
        return self.pooled.p

    @property
    def reliable(self) -> bool:
        """Enough teachers for the t(G - 2) reference to be trusted (`MIN_RELIABLE_TEACHERS`)."""
        return self.n_teachers >= MIN_RELIABLE_TEACHERS

    def summary(self) -> dict:
        """The machine-readable record (summary.json); NaN as null."""
        return {
            "predictor": self.predictor,
            "target": self.target,
            "method": self.method,
            "covariates": list(self.covariates),
            "n_trials": self.n_trials,
            "n_teachers": self.n_teachers,
            "slope": json_number(self.slope),
            "slope_se": json_number(self.pooled.se),
            "slope_ci": self.slope_ci.as_list(),
            "p": json_number(self.p),
            "df": json_number(self.pooled.df),
            "p_reliable": self.reliable if self.defined else None,
            "slope_between": json_number(self.between.estimate),
            "slope_between_ci": self.between.ci.as_list(),
            "p_between": json_number(self.between.p),
            "slope_within": json_number(self.within.estimate),
            "slope_within_ci": self.within.ci.as_list(),
            "p_within": json_number(self.within.p),
            "within_factor": self.factor or None,
            "slope_within_factor": json_number(self.within_factor.estimate),
            "slope_within_factor_ci": self.within_factor.ci.as_list(),
            "p_within_factor": json_number(self.within_factor.p),
            "df_within_factor": json_number(self.within_factor.df),
            "r2": json_number(self.r2),
            "r2_ci": self.r2_ci.as_list(),
            "r2_resamples": self.r2_resamples,
            "r2_dropped": self.r2_dropped,
            "note": self.note,
        }


def searched_covariates(trials: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The searched knobs that vary among ``trials`` and may adjust a relation (`NOT_COVARIATES` excluded)."""
    found = []
    for name in params:
        if name.startswith(NOT_COVARIATES) or name not in trials or name == TEACHER_KEY_PARAM:
            continue
        values = trials[name].dropna()
        if values.nunique() > 1 and (name in CATEGORICAL or pd.api.types.is_numeric_dtype(values)):
            found.append(name)
    return sorted(found, key=lambda n: (n != K_PARAM, n))


def cluster_fit(
    trials: pd.DataFrame,
    predictor: str,
    target: str,
    covariates: Sequence[str] = (),
    *,
    unit: str = TEACHER_KEY_PARAM,
    factor: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    min_teachers: int = MIN_TEACHERS,
) -> ClusterFit:
    """``target ~ predictor + covariates`` over ``trials`` with ``unit`` (the teacher) as the cluster.

    Rows missing the predictor, target, a covariate, the unit or the ``factor`` are dropped. ``factor`` (a
    teacher-level column, e.g. the SD rate) adds the teacher-means fit with its levels as dummies when it varies.
    """
    design = build_design(trials, predictor, target, covariates, unit, factor)
    base = {
        "predictor": predictor,
        "target": target,
        "covariates": design.covariates,
        "n_trials": len(design.y),
        "n_teachers": design.n_teachers,
    }
    if design.n_teachers < min_teachers:
        return ClusterFit(**base, note=too_few(design.n_teachers))
    if np.ptp(design.x[:, 1]) == 0 or np.ptp(design.y) == 0:
        return ClusterFit(**base, note=f"constant {predictor if np.ptp(design.x[:, 1]) == 0 else target}")
    pooled = clustered_ols(design.x, design.y, design.groups)
    if not pooled.defined:
        return ClusterFit(**base, note=f"{predictor} is collinear with the covariates")
    between, within = within_between(design)
    varies = factor is not None and design.factor is not None and pd.Series(design.factor).nunique() > 1
    by_factor = teacher_means_ols(design) if varies else Coefficient()
    boot = bootstrap_r2(design, n_resamples, np.random.default_rng(seed))
    notes = [
        n for n in (boot.note, "" if design.n_teachers >= MIN_RELIABLE_TEACHERS else unreliable(design.n_teachers)) if n
    ]
    if varies and not by_factor.defined:
        notes.append(f"too few teachers for the fit within {factor} levels")
    return ClusterFit(
        **base,
        method=CLUSTERED,
        pooled=pooled,
        between=between,
        within=within,
        factor=factor if varies else "",
        within_factor=by_factor,
        r2=partial_r2(design),
        r2_ci=boot.ci,
        r2_resamples=boot.used,
        r2_dropped=boot.dropped,
        naive=_naive(design),
        note="; ".join(notes),
    )


def exploratory_ranking(
    trials: pd.DataFrame,
    target: str,
    predictors: Sequence[str],
    covariates: Sequence[str] = (),
    *,
    unit: str = TEACHER_KEY_PARAM,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Every predictor of ``target`` fitted as `cluster_fit`; p-values Holm-adjusted over the defined ones.

    Exploratory: choosing the best of many predictors after seeing the data is not the
    pre-registered relation. Rows ordered by partial R^2 (undefined last).
    """
    rows = []
    for predictor in predictors:
        if predictor not in trials or target not in trials:
            continue
        fit = cluster_fit(trials, predictor, target, covariates, unit=unit, n_resamples=n_resamples, seed=seed)
        rows.append(fit.summary())
    table = pd.DataFrame(rows)
    if table.empty:
        return table.assign(p_holm=pd.Series(dtype=float))
    p = pd.to_numeric(table["p"], errors="coerce")
    table["p_holm"] = np.nan
    if p.notna().any():
        table.loc[p.notna(), "p_holm"] = multipletests(p[p.notna()].to_numpy(float), method="holm")[1]
    return table.sort_values("r2", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _naive(design) -> NaiveFit:
    """The same estimate with trials as independent units: classical OLS t-interval and p."""
    ols = OLS(design.y, design.x).fit()
    lo, hi = ols.conf_int(alpha=1 - CONFIDENCE)[1]
    return NaiveFit(
        n_trials=len(design.y),
        slope=float(ols.params[1]),
        slope_ci=Interval(float(lo), float(hi)),
        r2=partial_r2(design),
        p=float(ols.pvalues[1]),
    )
