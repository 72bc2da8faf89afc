"""Teacher-as-unit inference for a similarity-fidelity relation (docs/science.md §7).

Trials that share a teacher share its similarity structure, so they are not independent
replicates: the unit of replication is the teacher (``teacher.key``). Every relation
``target ~ predictor + covariates`` is estimated by pooled OLS over the trials (the partial
slope of the predictor), with

- a cluster bootstrap: resample teachers with replacement, keep all their trials, refit;
  percentile intervals of the slope and of the partial R^2;
- a p-value from statsmodels MixedLM with a random intercept per teacher; when it does not
  converge, from OLS on per-teacher means (the fit says which in ``method`` and ``note``);
- the same point estimates labelled "naive": trial-level OLS t-interval and p, and a
  bootstrap over trials, which treat trials as independent and are shown only for contrast.

Fewer than `MIN_TEACHERS` teachers: no slope, R^2, CI or p at all, only the counts and
"too few teachers (n = ...)". Covariates: ``raptor.k`` enters as a categorical covariate
(dummies); other varied searched knobs as numeric ones; a covariate constant in the fitted
rows is left out. The partial R^2 of the predictor is (SSE without it - SSE with it) / SSE
without it, which is the plain R^2 when there are no covariates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from study.contract import K_PARAM, TEACHER_KEY_PARAM

MIN_TEACHERS = 5
"""Fewest teachers in a group for any R^2, CI or p (docs/science.md §7)."""
CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1999
DEFAULT_SEED = 0
TARGET_HALF_WIDTH = 0.05
"""Half-width of the 95% slope CI the power statement plans for."""
MIXEDLM = "mixedlm"
TEACHER_MEANS = "ols_teacher_means"
BOOTSTRAP = "cluster_bootstrap"
NAIVE = "naive trial-level OLS"
CATEGORICAL = frozenset({K_PARAM})
"""Covariates entered as categories (one dummy per level but the first)."""
NOT_COVARIATES = ("teacher.", "name", "seed", "runtime.", "data.")
"""Params never used as covariates: teacher params define the unit (the SD rate drives similarity, so
adjusting for it would remove the relation under study); names, trial seeds, runtime and data paths are not knobs."""


def too_few(n_teachers: int) -> str:
    return f"too few teachers (n = {n_teachers})"


@dataclass(frozen=True)
class Interval:
    lo: float = math.nan
    hi: float = math.nan

    def as_list(self) -> list[float | None]:
        return [_json_number(self.lo), _json_number(self.hi)]

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


@dataclass(frozen=True)
class NaiveFit:
    """Trial-level numbers that treat every trial as independent: shown only labelled "naive"."""

    n_trials: int
    slope: float = math.nan
    slope_ci: Interval = Interval()
    r2: float = math.nan
    r2_ci: Interval = Interval()
    p: float = math.nan
    method: str = NAIVE

    def summary(self) -> dict:
        return {"method": self.method, "n_trials": self.n_trials, "slope": _json_number(self.slope),
                "slope_ci": self.slope_ci.as_list(), "r2": _json_number(self.r2), "r2_ci": self.r2_ci.as_list(),
                "p": _json_number(self.p)}  # fmt: skip


@dataclass(frozen=True)
class ClusterFit:
    """``target ~ predictor + covariates`` with the teacher as the unit; NaN fields + ``note`` when undefined."""

    predictor: str
    target: str
    covariates: tuple[str, ...]
    n_trials: int
    n_teachers: int
    method: str = ""
    slope: float = math.nan
    slope_ci: Interval = Interval()
    r2: float = math.nan
    r2_ci: Interval = Interval()
    p: float = math.nan
    model_slope: float = math.nan
    model_se: float = math.nan
    n_resamples: int = 0
    naive: NaiveFit | None = None
    note: str = ""

    @property
    def defined(self) -> bool:
        return math.isfinite(self.slope)

    def summary(self) -> dict:
        """The machine-readable record (summary.json); NaN as null."""
        return {
            "predictor": self.predictor,
            "target": self.target,
            "method": self.method,
            "covariates": list(self.covariates),
            "n_trials": self.n_trials,
            "n_teachers": self.n_teachers,
            "slope": _json_number(self.slope),
            "slope_ci": self.slope_ci.as_list(),
            "r2": _json_number(self.r2),
            "r2_ci": self.r2_ci.as_list(),
            "p": _json_number(self.p),
            "model_slope": _json_number(self.model_slope),
            "model_se": _json_number(self.model_se),
            "n_resamples": self.n_resamples,
            "note": self.note,
        }


@dataclass(frozen=True)
class Power:
    """What the observed variance buys and what a target CI half-width on the slope needs.

    Variance components come from the residuals of the pooled fit: ``sigma2_within`` the pooled
    within-teacher residual variance, ``sigma2_between`` the variance of teacher-mean residuals
    minus ``sigma2_within / m`` (floored at 0), with ``m`` the mean trials per teacher;
    ``var_x_between`` the variance across teachers of the predictor's teacher means after the
    covariates are partialled out. The slope's standard error with G teachers of m trials is then
    sqrt((sigma2_between + sigma2_within / m) / (G var_x_between)) and the 95% half-width
    t_{G-2} times that.
    """

    n_teachers: int
    trials_per_teacher: float
    sigma2_between: float = math.nan
    sigma2_within: float = math.nan
    var_x_between: float = math.nan
    half_width_bootstrap: float = math.nan
    half_width_model: float = math.nan
    target_half_width: float = TARGET_HALF_WIDTH
    teachers_needed: int | None = None
    teachers_needed_many_trials: int | None = None
    note: str = ""

    @property
    def icc(self) -> float:
        total = self.sigma2_between + self.sigma2_within
        return self.sigma2_between / total if total > 0 else math.nan

    def statement(self) -> str:
        if not math.isfinite(self.half_width_model):
            return f"Power: not computable ({self.note or too_few(self.n_teachers)})."
        needed = f"about {self.teachers_needed} teachers" if self.teachers_needed else "more teachers than planned"
        floor = f"{self.teachers_needed_many_trials}" if self.teachers_needed_many_trials else "unbounded"
        return (
            f"With {self.n_teachers} teachers x {self.trials_per_teacher:.1f} trials each, the 95% CI half-width of "
            f"the slope is {self.half_width_bootstrap:.3g} (cluster bootstrap; {self.half_width_model:.3g} from the "
            f"variance components: between-teacher residual variance {self.sigma2_between:.3g}, within-teacher "
            f"{self.sigma2_within:.3g}, ICC {self.icc:.2f}). A half-width of {self.target_half_width:g} needs "
            f"{needed} at {self.trials_per_teacher:.1f} trials each; even with unlimited trials per teacher it needs "
            f"{floor} teachers."
        )

    def summary(self) -> dict:
        return {
            "n_teachers": self.n_teachers,
            "trials_per_teacher": _json_number(self.trials_per_teacher),
            "sigma2_between": _json_number(self.sigma2_between),
            "sigma2_within": _json_number(self.sigma2_within),
            "icc": _json_number(self.icc),
            "var_x_between": _json_number(self.var_x_between),
            "half_width_bootstrap": _json_number(self.half_width_bootstrap),
            "half_width_model": _json_number(self.half_width_model),
            "target_half_width": self.target_half_width,
            "teachers_needed": self.teachers_needed,
            "teachers_needed_many_trials": self.teachers_needed_many_trials,
            "statement": self.statement(),
        }


@dataclass
class _Design:
    """Complete rows of one relation: X = [1, predictor, covariate columns], y, teacher index per row."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    covariates: tuple[str, ...]
    n_teachers: int
    names: list[str] = field(default_factory=list)


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
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    mixed: bool = True,
    min_teachers: int = MIN_TEACHERS,
) -> ClusterFit:
    """``target ~ predictor + covariates`` over ``trials`` with ``unit`` (the teacher) as the cluster.

    Rows missing the predictor, target, a covariate or the unit are dropped. ``mixed=False``
    skips MixedLM and takes p from OLS on teacher means (faster; used in simulations).
    """
    design = _design(trials, predictor, target, covariates, unit)
    base = {"predictor": predictor, "target": target, "covariates": design.covariates,
            "n_trials": len(design.y), "n_teachers": design.n_teachers}  # fmt: skip
    if design.n_teachers < min_teachers:
        return ClusterFit(**base, note=too_few(design.n_teachers))
    if np.ptp(design.x[:, 1]) == 0 or np.ptp(design.y) == 0:
        return ClusterFit(**base, note=f"constant {predictor if np.ptp(design.x[:, 1]) == 0 else target}")
    stats_by_teacher = _sufficient(design.x, design.y, design.groups, design.n_teachers)
    slope, r2 = _slope_r2(*(s.sum(axis=0)[None] for s in stats_by_teacher))
    if not np.isfinite(slope[0]):
        return ClusterFit(**base, note=f"{predictor} is collinear with the covariates")
    rng = np.random.default_rng(seed)
    boot_slope, boot_r2 = _resample(stats_by_teacher, n_resamples, rng)
    valid = np.isfinite(boot_slope)
    notes = []
    if (~valid).sum():
        notes.append(f"{int((~valid).sum())} of {n_resamples} resamples degenerate (dropped)")
    method, model_slope, model_se, p, model_note = _model_p(design, mixed)
    if model_note:
        notes.append(model_note)
    naive = _naive(design, n_resamples, np.random.default_rng(seed + 1))
    return ClusterFit(
        **base,
        method=f"{BOOTSTRAP}+{method}",
        slope=float(slope[0]),
        slope_ci=_percentile(boot_slope[valid]),
        r2=float(r2[0]),
        r2_ci=_percentile(boot_r2[valid]),
        p=p,
        model_slope=model_slope,
        model_se=model_se,
        n_resamples=int(valid.sum()),
        naive=naive,
        note="; ".join(notes),
    )


def cluster_mean(
    values: pd.Series,
    units: pd.Series,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    min_teachers: int = MIN_TEACHERS,
) -> dict:
    """Mean of ``values`` over trials, cluster-bootstrap CI over ``units``: {mean, ci, n_trials, n_teachers, note}."""
    frame = pd.DataFrame({"v": pd.to_numeric(values, errors="coerce"), "u": units}).dropna()
    n_teachers = int(frame["u"].nunique())
    out = {"mean": math.nan, "ci": Interval(), "n_trials": len(frame), "n_teachers": n_teachers, "note": ""}
    if n_teachers < min_teachers:
        return out | {"note": too_few(n_teachers)}
    codes = pd.factorize(frame["u"])[0]
    sums = np.bincount(codes, weights=frame["v"].to_numpy(float), minlength=n_teachers)
    counts = np.bincount(codes, minlength=n_teachers).astype(float)
    draws = _counts(np.random.default_rng(seed), n_resamples, n_teachers)
    means = (draws @ sums) / (draws @ counts)
    return out | {"mean": float(sums.sum() / counts.sum()), "ci": _percentile(means)}


def power(fit: ClusterFit, trials: pd.DataFrame, *, unit: str = TEACHER_KEY_PARAM,
          target_half_width: float = TARGET_HALF_WIDTH) -> Power:  # fmt: skip
    """Half-width reached and teachers needed for ``target_half_width`` on the slope of ``fit`` (see `Power`)."""
    design = _design(trials, fit.predictor, fit.target, fit.covariates, unit)
    m = len(design.y) / design.n_teachers if design.n_teachers else math.nan
    base = {"n_teachers": design.n_teachers, "trials_per_teacher": m, "target_half_width": target_half_width}
    if not fit.defined:
        return Power(**base, note=fit.note)
    beta, *_ = np.linalg.lstsq(design.x, design.y, rcond=None)
    resid = design.y - design.x @ beta
    others = np.delete(design.x, 1, axis=1)
    gamma, *_ = np.linalg.lstsq(others, design.x[:, 1], rcond=None)
    x_resid = design.x[:, 1] - others @ gamma
    counts = np.bincount(design.groups).astype(float)
    resid_means = np.bincount(design.groups, weights=resid) / counts
    x_means = np.bincount(design.groups, weights=x_resid) / counts
    within_df = len(resid) - design.n_teachers
    sigma2_within = float(((resid - resid_means[design.groups]) ** 2).sum() / within_df) if within_df > 0 else 0.0
    sigma2_between = max(0.0, float(np.var(resid_means, ddof=1)) - sigma2_within / m)
    var_x = float(np.var(x_means, ddof=1))
    if var_x <= 0:
        return Power(**base, sigma2_between=sigma2_between, sigma2_within=sigma2_within,
                     note="the predictor does not vary between teachers")  # fmt: skip

    def half_width(teachers: int, per_teacher: float) -> float:
        if teachers < 3:
            return math.inf
        unit_var = sigma2_between + (sigma2_within / per_teacher if math.isfinite(per_teacher) else 0.0)
        return float(stats.t.ppf(0.5 + CONFIDENCE / 2, teachers - 2) * math.sqrt(unit_var / (teachers * var_x)))

    def needed(per_teacher: float) -> int | None:
        for teachers in range(3, 100_001):
            if half_width(teachers, per_teacher) <= target_half_width:
                return teachers
        return None

    return Power(
        **base,
        sigma2_between=sigma2_between,
        sigma2_within=sigma2_within,
        var_x_between=var_x,
        half_width_bootstrap=fit.slope_ci.half_width,
        half_width_model=half_width(design.n_teachers, m),
        teachers_needed=needed(m),
        teachers_needed_many_trials=needed(math.inf) if sigma2_between > 0 else 3,
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
        rows.append({**fit.summary(), "slope_ci": fit.slope_ci.as_list(), "r2_ci": fit.r2_ci.as_list()})
    table = pd.DataFrame(rows, columns=[*ClusterFit.__dataclass_fields__] if not rows else None)
    if table.empty:
        return table.assign(p_holm=pd.Series(dtype=float))
    p = pd.to_numeric(table["p"], errors="coerce")
    table["p_holm"] = np.nan
    if p.notna().any():
        table.loc[p.notna(), "p_holm"] = multipletests(p[p.notna()].to_numpy(float), method="holm")[1]
    return table.sort_values("r2", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


# -- internals ---------------------------------------------------------------------------------------------


def _design(trials: pd.DataFrame, predictor: str, target: str, covariates: Sequence[str], unit: str) -> _Design:
    needed = [predictor, target, unit, *covariates]
    if not set(needed) <= set(trials):
        missing = [c for c in needed if c not in trials]
        raise KeyError(f"columns not in the trials: {missing}")
    frame = trials[needed].copy()
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
    return _Design(np.column_stack(columns), frame[target].to_numpy(float), groups, tuple(used), len(keys), names)


def _sufficient(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per teacher: X'X (G, p, p), X'y (G, p), y'y (G,); every OLS of a resample is a sum of these."""
    xtx = np.zeros((n_groups, x.shape[1], x.shape[1]))
    np.add.at(xtx, groups, x[:, :, None] * x[:, None, :])
    xty = np.zeros((n_groups, x.shape[1]))
    np.add.at(xty, groups, x * y[:, None])
    yty = np.bincount(groups, weights=y * y, minlength=n_groups)
    return xtx, xty, yty


def _slope_r2(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched OLS from sufficient statistics: predictor slope and partial R^2 (NaN where singular)."""
    keep = [i for i in range(xtx.shape[1]) if i != 1]
    slope = np.full(len(xtx), np.nan)
    r2 = np.full(len(xtx), np.nan)
    with np.errstate(all="ignore"):
        ok = np.linalg.cond(xtx) < 1e10
    if not ok.any():
        return slope, r2
    full = np.linalg.solve(xtx[ok], xty[ok][..., None])[..., 0]
    sub_xtx = xtx[ok][:, keep][:, :, keep]
    reduced = np.linalg.solve(sub_xtx, xty[ok][:, keep][..., None])[..., 0]
    sse_full = yty[ok] - (full * xty[ok]).sum(axis=1)
    sse_reduced = yty[ok] - (reduced * xty[ok][:, keep]).sum(axis=1)
    slope[ok] = full[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r2[ok] = np.where(sse_reduced > 0, 1.0 - sse_full / sse_reduced, np.nan)
    return slope, np.clip(r2, 0.0, 1.0)


def _counts(rng: np.random.Generator, n_resamples: int, n_units: int) -> np.ndarray:
    """How often each unit is drawn in each resample (n_resamples, n_units)."""
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    counts = np.zeros((n_resamples, n_units))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts


def _resample(sufficient: tuple[np.ndarray, ...], n_resamples: int, rng: np.random.Generator):
    """Slope and partial R^2 of ``n_resamples`` cluster resamples, in chunks that bound memory."""
    xtx, xty, yty = sufficient
    chunk = max(1, int(4e6 // max(1, xtx.size)))
    slopes, r2s = [], []
    for start in range(0, n_resamples, chunk):
        counts = _counts(rng, min(chunk, n_resamples - start), len(yty))
        slope, r2 = _slope_r2(np.einsum("bg,gij->bij", counts, xtx), counts @ xty, counts @ yty)
        slopes.append(slope)
        r2s.append(r2)
    return np.concatenate(slopes), np.concatenate(r2s)


def _percentile(values: np.ndarray) -> Interval:
    if len(values) < 2:
        return Interval()
    lo, hi = np.percentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return Interval(float(lo), float(hi))


def _model_p(design: _Design, mixed: bool) -> tuple[str, float, float, float, str]:
    """(method, slope, se, p, note): MixedLM with a random intercept per teacher, else OLS on teacher means."""
    reason = "MixedLM skipped"
    if mixed:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # standardised columns: fidelity metrics vary by ~1e-3, a scale the optimiser handles badly
                x_scale = design.x[:, 1:].std(axis=0)
                x = np.column_stack([design.x[:, 0], (design.x[:, 1:] - design.x[:, 1:].mean(axis=0)) / x_scale])
                y_scale = design.y.std()
                result = MixedLM((design.y - design.y.mean()) / y_scale, x, groups=design.groups).fit(reml=True)
                converged = bool(result.converged) and not any(
                    issubclass(w.category, ConvergenceWarning) for w in caught
                )
                unscale = y_scale / x_scale[0]
                slope, se = float(result.fe_params[1]) * unscale, float(result.bse_fe[1]) * unscale
                p = float(result.pvalues[1])
            except (np.linalg.LinAlgError, ValueError) as err:
                converged, slope, se, p = False, math.nan, math.nan, math.nan
                caught.append(warnings.WarningMessage(str(err), ConvergenceWarning, "", 0))
        if converged and all(map(math.isfinite, (slope, se, p))):
            return MIXEDLM, slope, se, p, ""
        detail = next((str(w.message).split("\n")[0] for w in caught if issubclass(w.category, ConvergenceWarning)), "")
        reason = "MixedLM did not converge" + (f" ({detail})" if detail else "")
    counts = np.bincount(design.groups).astype(float)
    means_x = np.stack([np.bincount(design.groups, weights=c) / counts for c in design.x.T], axis=1)
    means_y = np.bincount(design.groups, weights=design.y) / counts
    keep = [0, 1] + [i for i in range(2, means_x.shape[1]) if np.ptp(means_x[:, i]) > 0]
    if design.n_teachers - len(keep) < 1:
        keep = [0, 1]  # too few teachers for the covariates at the teacher level
    ols = OLS(means_y, means_x[:, keep]).fit()
    note = f"{reason}: p from OLS on {design.n_teachers} teacher means"
    return TEACHER_MEANS, float(ols.params[1]), float(ols.bse[1]), float(ols.pvalues[1]), note


def _naive(design: _Design, n_resamples: int, rng: np.random.Generator) -> NaiveFit:
    """The same estimate with trials as independent units: OLS t-interval and p, bootstrap over trials for R^2."""
    ols = OLS(design.y, design.x).fit()
    lo, hi = ols.conf_int(alpha=1 - CONFIDENCE)[1]
    singles = _sufficient(design.x, design.y, np.arange(len(design.y)), len(design.y))
    slope, r2 = _slope_r2(*(s.sum(axis=0)[None] for s in singles))
    _, boot_r2 = _resample(singles, n_resamples, rng)
    return NaiveFit(
        n_trials=len(design.y),
        slope=float(slope[0]),
        slope_ci=Interval(float(lo), float(hi)),
        r2=float(r2[0]),
        r2_ci=_percentile(boot_r2[np.isfinite(boot_r2)]),
        p=float(ols.pvalues[1]),
    )


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
