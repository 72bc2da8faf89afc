"""Small-cluster inference with the teacher as the unit (docs/science.md §7, statistical rules).

The estimators every teacher-level number in a report comes from, so that a slope, its CI and its p
come from one model:

- `clustered_ols`: OLS with a teacher-clustered (CR1) covariance from statsmodels; CI and p from t with
  G - 2 degrees of freedom (G = teachers), the small-cluster reference (Cameron and Miller's advice for
  few clusters). With fewer than `MIN_RELIABLE_TEACHERS` teachers the p is flagged unreliable.
- `within_between`: the within-between (Mundlak) split of one predictor into its teacher mean and its
  deviation from it, each with its own clustered slope: the between-teacher and within-teacher slopes.
- `teacher_means_ols`: OLS on one row per teacher, optionally with a factor (the SD rate) as dummies:
  the relation among teachers of the same factor level. Classical t with its residual df.
- `bootstrap_r2`: a percentile cluster bootstrap of the partial R^2 that drops (and counts) resamples
  without residual degrees of freedom; under `MIN_USABLE_SHARE` usable resamples the CI is "not estimable".
- `mean_ci_teachers`: a mean over teachers with its t(G - 1) interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.linear_model import OLS

from study.contract import K_PARAM

MIN_TEACHERS = 5
"""Fewest teachers in a group for any R^2, CI or p (docs/science.md §7)."""
MIN_RELIABLE_TEACHERS = 10
"""Below this many teachers a clustered p-value is printed with the flag `unreliable` (docs/science.md §7)."""
MIN_RESIDUAL_DF = 1
"""A bootstrap resample with fewer residual degrees of freedom (distinct rows minus rank) is saturated: dropped."""
MIN_USABLE_SHARE = 0.8
"""A bootstrap CI from a smaller share of usable resamples is "not estimable"."""
CONFIDENCE = 0.95
CATEGORICAL = frozenset({K_PARAM})
"""Covariates entered as categories (one dummy per level but the first)."""
CLUSTERED = "OLS, teacher-clustered SE, t(G-2)"
TEACHER_MEANS = "OLS on teacher means"


def too_few(n_teachers: int) -> str:
    return f"too few teachers (n = {n_teachers} < {MIN_TEACHERS})"


def unreliable(n_teachers: int) -> str:
    return f"p unreliable: {n_teachers} < {MIN_RELIABLE_TEACHERS} teachers"


def json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Interval:
    lo: float = math.nan
    hi: float = math.nan

    def as_list(self) -> list[float | None]:
        return [json_number(self.lo), json_number(self.hi)]

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def defined(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


@dataclass(frozen=True)
class Coefficient:
    """One slope with its standard error, CI and p, all from the same fit; ``df`` of its t reference."""

    estimate: float = math.nan
    se: float = math.nan
    ci: Interval = Interval()
    p: float = math.nan
    df: float = math.nan

    @property
    def defined(self) -> bool:
        return math.isfinite(self.estimate)


@dataclass
class Design:
    """Complete rows of one relation: X = [1, predictor, covariate columns], y, teacher index per row."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    covariates: tuple[str, ...]
    n_teachers: int
    names: list[str] = field(default_factory=list)
    factor: np.ndarray | None = None
    """The per-row level of a teacher-level factor (the SD rate), when asked for."""


def build_design(
    trials: pd.DataFrame, predictor: str, target: str, covariates: Sequence[str], unit: str, factor: str | None = None
) -> Design:
    """The complete rows of ``target ~ predictor + covariates``; a covariate constant in them, or determined by the
    columns before it, is left out. Raises KeyError naming missing columns."""
    needed = [predictor, target, unit, *covariates, *([factor] if factor else [])]
    missing = [c for c in dict.fromkeys(needed) if c not in trials]
    if missing:
        raise KeyError(f"columns not in the trials: {missing}")
    frame = trials[list(dict.fromkeys(needed))].copy()
    for column in (predictor, target):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame.dropna()
    columns, names, used = [np.ones(len(frame)), frame[predictor].to_numpy(float)], ["const", predictor], []
    for name in covariates:
        values = frame[name]
        if values.nunique() < 2:
            continue  # constant in these rows (e.g. k within a k stratum)
        if name in CATEGORICAL or not pd.api.types.is_numeric_dtype(values):
            dummies = pd.get_dummies(values.astype(str), prefix=name, drop_first=True, dtype=float)
            added, labels = [dummies[c].to_numpy() for c in dummies], list(dummies)
        else:
            added, labels = [values.to_numpy(float)], [name]
        if np.linalg.matrix_rank(np.column_stack(columns + added)) < len(columns) + len(added):
            continue  # determined by the columns before it (e.g. lambda_patch = 0.9 - lambda_cls)
        used.append(name)
        columns += added
        names += labels
    groups, keys = pd.factorize(frame[unit].astype(str))
    levels = frame[factor].to_numpy() if factor else None
    return Design(
        np.column_stack(columns), frame[target].to_numpy(float), groups, tuple(used), len(keys), names, levels
    )


def clustered_ols(x: np.ndarray, y: np.ndarray, groups: np.ndarray, column: int = 1) -> Coefficient:
    """Coefficient ``column`` of OLS ``y ~ x`` with a teacher-clustered covariance; CI and p from t(G - 2)."""
    n_groups = len(np.unique(groups))
    df = n_groups - 2
    if df < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return Coefficient()
    fit = OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    estimate, se = float(fit.params[column]), float(fit.bse[column])
    return _t_coefficient(estimate, se, df)


def within_between(design: Design) -> tuple[Coefficient, Coefficient]:
    """(between, within): the within-between split of the predictor, x = mean_g(x) + (x - mean_g(x)), both in one
    OLS with the covariates, teacher-clustered, t(G - 2). The within slope is undefined when the predictor does not
    vary inside any teacher; the between slope when the teacher means do not vary."""
    counts = np.bincount(design.groups).astype(float)
    x = design.x[:, 1]
    means = (np.bincount(design.groups, weights=x) / counts)[design.groups]
    deviation = x - means
    parts = [design.x[:, :1], means[:, None], deviation[:, None], design.x[:, 2:]]
    if np.ptp(deviation) < 1e-12 * max(1.0, np.abs(x).max()):
        between = clustered_ols(np.column_stack([parts[0], parts[1], parts[3]]), design.y, design.groups)
        return between, Coefficient()
    full = np.column_stack(parts)
    return (clustered_ols(full, design.y, design.groups, 1), clustered_ols(full, design.y, design.groups, 2))


def teacher_means_ols(design: Design, with_factor: bool = True) -> Coefficient:
    """Slope of teacher-mean y on teacher-mean x (covariates averaged per teacher, kept where they vary), with the
    factor's levels as dummies when ``with_factor``: the relation among teachers of one level. Classical OLS t."""
    counts = np.bincount(design.groups).astype(float)
    means_x = np.stack([np.bincount(design.groups, weights=c) / counts for c in design.x.T], axis=1)
    means_y = np.bincount(design.groups, weights=design.y) / counts
    columns = [means_x[:, 0], means_x[:, 1]]
    columns += [means_x[:, i] for i in range(2, means_x.shape[1]) if np.ptp(means_x[:, i]) > 1e-12]
    if with_factor and design.factor is not None:
        first = pd.Series(design.factor).groupby(design.groups).first().astype(str)
        columns += list(pd.get_dummies(first, drop_first=True, dtype=float).to_numpy().T)
    x = np.column_stack(columns)
    keep = _independent_columns(x)
    x = x[:, keep]
    df = len(means_y) - x.shape[1]
    if df < 1 or 1 not in keep:
        return Coefficient()
    fit = OLS(means_y, x).fit()
    return _t_coefficient(float(fit.params[1]), float(fit.bse[1]), df)


def mean_ci_teachers(values: np.ndarray) -> tuple[float, float, float, str]:
    """Mean of one value per teacher with its t(G - 1) interval: (mean, lo, hi, note); no CI below MIN_TEACHERS."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan, "no teacher"
    mean = float(values.mean())
    if len(values) < MIN_TEACHERS:
        return mean, math.nan, math.nan, too_few(len(values))
    if np.ptp(values) == 0:
        return mean, mean, mean, "no variation between teachers"
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half, ""


def cluster_mean(values: pd.Series, units: pd.Series, *, min_teachers: int = MIN_TEACHERS) -> dict:
    """Mean over teachers of each teacher's mean of ``values`` with its t(G - 1) interval:
    {mean, ci, n_trials, n_teachers, note}; fewer than ``min_teachers``: the mean alone (no CI)."""
    frame = pd.DataFrame({"v": pd.to_numeric(values, errors="coerce"), "u": units}).dropna()
    per_teacher = frame.groupby("u")["v"].mean().to_numpy(float)
    n_teachers = len(per_teacher)
    out = {"mean": math.nan, "ci": Interval(), "n_trials": len(frame), "n_teachers": n_teachers, "note": ""}
    if n_teachers < min_teachers:
        return out | {"mean": float(per_teacher.mean()) if n_teachers else math.nan, "note": too_few(n_teachers)}
    mean, lo, hi, note = mean_ci_teachers(per_teacher)
    return out | {"mean": mean, "ci": Interval(lo, hi), "note": note}


@dataclass(frozen=True)
class BootstrapR2:
    """A percentile cluster-bootstrap CI of the partial R^2 and how many resamples it used and dropped."""

    ci: Interval = Interval()
    used: int = 0
    dropped: int = 0
    note: str = ""


def partial_r2(design: Design) -> float:
    """(SSE without the predictor - SSE with it) / SSE without it, on the design's rows."""
    _, r2, _ = _slope_r2(*(s.sum(axis=0)[None] for s in sufficient(design)), np.array([1e9]))
    return float(r2[0])


def bootstrap_r2(design: Design, n_resamples: int, rng: np.random.Generator) -> BootstrapR2:
    """Resample teachers with replacement (all their trials), refit, take percentiles of the partial R^2.

    A resample whose distinct rows minus the rank of its design leave fewer than `MIN_RESIDUAL_DF` degrees of
    freedom fits exactly (R^2 = 1 by construction): it is dropped and counted, as is a singular one. Under
    `MIN_USABLE_SHARE` usable resamples no CI is given ("not estimable")."""
    xtx, xty, yty = sufficient(design)
    rows = np.bincount(design.groups, minlength=design.n_teachers).astype(float)
    chunk = max(1, int(4e6 // max(1, xtx.size)))
    values = []
    for start in range(0, n_resamples, chunk):
        counts = resample_counts(rng, min(chunk, n_resamples - start), design.n_teachers)
        present = (counts > 0).astype(float)
        ranks = np.linalg.matrix_rank(np.einsum("bg,gij->bij", present, xtx), hermitian=True)
        residual_df = present @ rows - ranks
        _, r2, _ = _slope_r2(np.einsum("bg,gij->bij", counts, xtx), counts @ xty, counts @ yty, residual_df)
        values.append(r2)
    r2 = np.concatenate(values)
    usable = np.isfinite(r2)
    used, dropped = int(usable.sum()), int((~usable).sum())
    note = f"{dropped} of {n_resamples} resamples saturated or singular (dropped)" if dropped else ""
    if used < MIN_USABLE_SHARE * n_resamples:
        why = f"R² CI not estimable: {used} of {n_resamples} resamples usable (< {MIN_USABLE_SHARE:.0%})"
        return BootstrapR2(Interval(), used, dropped, why)
    return BootstrapR2(percentile(r2[usable]), used, dropped, note)


def sufficient(design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per teacher: X'X (G, p, p), X'y (G, p), y'y (G,); every OLS of a resample is a sum of these."""
    x, y, groups, n = design.x, design.y, design.groups, design.n_teachers
    xtx = np.zeros((n, x.shape[1], x.shape[1]))
    np.add.at(xtx, groups, x[:, :, None] * x[:, None, :])
    xty = np.zeros((n, x.shape[1]))
    np.add.at(xty, groups, x * y[:, None])
    return xtx, xty, np.bincount(groups, weights=y * y, minlength=n)


def resample_counts(rng: np.random.Generator, n_resamples: int, n_units: int) -> np.ndarray:
    """How often each unit is drawn in each resample (n_resamples, n_units)."""
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    counts = np.zeros((n_resamples, n_units))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts


def percentile(values: np.ndarray) -> Interval:
    if len(values) < 2:
        return Interval()
    lo, hi = np.percentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return Interval(float(lo), float(hi))


def _t_coefficient(estimate: float, se: float, df: float) -> Coefficient:
    if not (math.isfinite(se) and se > 0):
        return Coefficient(estimate, se, Interval(), math.nan, df)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
    p = float(2 * stats.t.sf(abs(estimate / se), df))
    return Coefficient(estimate, se, Interval(estimate - half, estimate + half), p, df)


def _independent_columns(x: np.ndarray) -> list[int]:
    """Indices of a maximal set of linearly independent columns, greedily from the left."""
    keep: list[int] = []
    for i in range(x.shape[1]):
        if np.linalg.matrix_rank(x[:, [*keep, i]]) == len(keep) + 1:
            keep.append(i)
    return keep


def _slope_r2(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray, residual_df: np.ndarray):
    """Batched OLS from sufficient statistics: (slope, partial R^2, ok); NaN where singular or saturated."""
    keep = [i for i in range(xtx.shape[1]) if i != 1]
    slope = np.full(len(xtx), np.nan)
    r2 = np.full(len(xtx), np.nan)
    with np.errstate(all="ignore"):
        ok = (np.linalg.cond(xtx) < 1e10) & (residual_df >= MIN_RESIDUAL_DF)
    if ok.any():
        full = np.linalg.solve(xtx[ok], xty[ok][..., None])[..., 0]
        sub_xtx = xtx[ok][:, keep][:, :, keep]
        reduced = np.linalg.solve(sub_xtx, xty[ok][:, keep][..., None])[..., 0]
        sse_full = yty[ok] - (full * xty[ok]).sum(axis=1)
        sse_reduced = yty[ok] - (reduced * xty[ok][:, keep]).sum(axis=1)
        slope[ok] = full[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2[ok] = np.where(sse_reduced > 0, 1.0 - sse_full / sse_reduced, np.nan)
    return slope, np.clip(r2, 0.0, 1.0), ok
