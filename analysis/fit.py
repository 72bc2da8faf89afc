"""Fidelity against phase structure: OLS, correlations, bootstrap CIs, per-group fits, SD trends.

Every fit drops rows with a missing value in its own (x, y) pair and reports how
many it dropped; every undefined quantity is NaN with a ``note`` saying why. Only
finished trials enter a fit: `split_by_status` separates them and counts the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.tools import add_constant

from study.contract import FIDELITY_METRICS, FINISHED, K_PARAM, PHASE_METRICS, SD_PARAM, STATUSES, TEACHER_KEY_PARAM

MIN_FIT_N = 3
"""Fewest complete (x, y) pairs for a fit: OLS needs a residual degree of freedom."""
MIN_EXACT_N = 10
"""Below this n, the Spearman p-value (t approximation) is flagged as rough in ``note``."""
CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 4999
DEFAULT_SEED = 0


@dataclass(frozen=True)
class StatusCounts:
    """How many trials ended in each status; only ``finished`` ones are analysed."""

    finished: int
    failed: int
    pruned: int
    running: int

    @property
    def total(self) -> int:
        return self.finished + self.failed + self.pruned + self.running

    @property
    def excluded(self) -> int:
        return self.total - self.finished


@dataclass(frozen=True)
class PairFit:
    """y ~ x over the complete pairs: OLS, Pearson, Spearman and bootstrap CIs (NaN + note if undefined)."""

    x: str
    y: str
    n: int
    n_dropped: int
    slope: float = np.nan
    slope_lo: float = np.nan
    slope_hi: float = np.nan
    slope_p: float = np.nan
    intercept: float = np.nan
    r2: float = np.nan
    pearson_r: float = np.nan
    pearson_p: float = np.nan
    spearman_rho: float = np.nan
    spearman_p: float = np.nan
    boot_slope_lo: float = np.nan
    boot_slope_hi: float = np.nan
    boot_r_lo: float = np.nan
    boot_r_hi: float = np.nan
    note: str = ""


FIT_COLUMNS = [f.name for f in fields(PairFit)]


def split_by_status(trials: pd.DataFrame) -> tuple[pd.DataFrame, StatusCounts]:
    """The finished trials, and the count of trials in every status (the others are excluded)."""
    counts = trials["status"].value_counts() if len(trials) else pd.Series(dtype=int)
    unknown = set(counts.index) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown trial status {sorted(unknown)}; expected one of {STATUSES}")
    finished = trials[trials["status"] == FINISHED].reset_index(drop=True)
    return finished, StatusCounts(**{status: int(counts.get(status, 0)) for status in STATUSES})


def fit_pair(
    x: pd.Series,
    y: pd.Series,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairFit:
    """Fit ``y ~ x``: OLS slope with its 95% CI and p, regression R^2, Pearson and Spearman.

    Rows where either value is missing are dropped (counted in ``n_dropped``).
    Bootstrap CIs are BCa intervals from `scipy.stats.bootstrap` over resampled
    (x, y) pairs, with a fixed seed. Fewer than `MIN_FIT_N` pairs, or a constant
    x or y, leave the statistics NaN and say why in ``note``.
    """
    xs = pd.to_numeric(x, errors="coerce").astype(float)
    ys = pd.to_numeric(y, errors="coerce").astype(float)
    keep = xs.notna().to_numpy() & ys.notna().to_numpy()
    xv, yv = xs.to_numpy()[keep], ys.to_numpy()[keep]
    base = {"x": str(x.name), "y": str(y.name), "n": int(keep.sum()), "n_dropped": int((~keep).sum())}
    if base["n"] < MIN_FIT_N:
        return PairFit(**base, note=f"n={base['n']} < {MIN_FIT_N} complete pairs")
    constant = [name for name, v in ((base["x"], xv), (base["y"], yv)) if np.ptp(v) == 0]
    if constant:
        return PairFit(**base, note=f"constant {' and '.join(constant)}: correlation undefined")
    ols = OLS(yv, add_constant(xv)).fit()
    lo, hi = ols.conf_int(alpha=1 - CONFIDENCE)[1]
    pearson = stats.pearsonr(xv, yv)
    spearman = stats.spearmanr(xv, yv)
    boot_lo, boot_hi = _bootstrap(xv, yv, n_resamples, seed)
    notes = [] if np.isfinite([*boot_lo, *boot_hi]).all() else ["bootstrap CI undefined (degenerate resamples)"]
    if base["n"] < MIN_EXACT_N:
        notes.append(f"n < {MIN_EXACT_N}: Spearman p from the t approximation")
    return PairFit(
        **base,
        slope=float(ols.params[1]),
        slope_lo=float(lo),
        slope_hi=float(hi),
        slope_p=float(ols.pvalues[1]),
        intercept=float(ols.params[0]),
        r2=float(ols.rsquared),
        pearson_r=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        spearman_rho=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
        boot_slope_lo=float(boot_lo[0]),
        boot_slope_hi=float(boot_hi[0]),
        boot_r_lo=float(boot_lo[1]),
        boot_r_hi=float(boot_hi[1]),
        note="; ".join(notes),
    )


def fit_table(
    trials: pd.DataFrame,
    fidelity: Sequence[str] = FIDELITY_METRICS,
    predictors: Sequence[str] = PHASE_METRICS,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One `PairFit` row per (fidelity, predictor) present in ``trials``.

    ``slope_p_adj`` is the OLS slope p-value adjusted over the table's family of
    tests (Benjamini-Hochberg). Columns missing from ``trials`` are skipped.
    """
    rows = [
        asdict(fit_pair(trials[x], trials[y], n_resamples=n_resamples, seed=seed))
        for y in fidelity
        if y in trials
        for x in predictors
        if x in trials
    ]
    table = pd.DataFrame(rows, columns=FIT_COLUMNS)
    table["slope_p_adj"] = _bh_adjust(table["slope_p"])
    return table


def fit_by(
    trials: pd.DataFrame,
    by: str,
    fidelity: Sequence[str] = FIDELITY_METRICS,
    predictors: Sequence[str] = PHASE_METRICS,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """`fit_table` within each level of ``by`` (e.g. ``teacher.sd_rate``, ``raptor.k``).

    Adds columns ``by`` and ``level``; each level is its own family for ``slope_p_adj``.
    Trials with a missing ``by`` value are left out.
    """
    if by not in trials or trials[by].isna().all():
        return pd.DataFrame(columns=["by", "level", *FIT_COLUMNS, "slope_p_adj"])
    tables = []
    for level, group in trials.dropna(subset=[by]).groupby(by, sort=True):
        table = fit_table(group, fidelity, predictors, n_resamples=n_resamples, seed=seed)
        tables.append(table.assign(by=by, level=level))
    combined = pd.concat(tables, ignore_index=True)
    return combined[["by", "level", *FIT_COLUMNS, "slope_p_adj"]]


def rank_predictors(fits: pd.DataFrame) -> pd.DataFrame:
    """For each fidelity metric, predictors ordered by regression R^2 (best first; undefined last).

    Fidelity metrics keep their order in ``fits``; ties in R^2 break on
    |Spearman rho|. Adds a 1-based ``rank`` column.
    """
    order = {y: i for i, y in enumerate(pd.unique(fits["y"]))}
    ordered = fits.assign(_y=fits["y"].map(order), _abs_rho=fits["spearman_rho"].abs()).sort_values(
        ["_y", "r2", "_abs_rho"], ascending=[True, False, False], na_position="last", kind="stable"
    )
    ordered["rank"] = ordered.groupby("_y").cumcount() + 1
    return ordered.drop(columns=["_y", "_abs_rho"]).reset_index(drop=True)


def ols_band(x: pd.Series, y: pd.Series, points: int = 100) -> pd.DataFrame | None:
    """The OLS line of ``y ~ x`` on a grid over x's range with its 95% confidence band for the mean.

    Columns ``x``, ``fit``, ``lo``, ``hi``; ``None`` when the fit is undefined (see `fit_pair`).
    """
    frame = pd.DataFrame({"x": pd.to_numeric(x, errors="coerce"), "y": pd.to_numeric(y, errors="coerce")}).dropna()
    if len(frame) < MIN_FIT_N or np.ptp(frame["x"]) == 0 or np.ptp(frame["y"]) == 0:
        return None
    ols = OLS(frame["y"].to_numpy(float), add_constant(frame["x"].to_numpy(float))).fit()
    grid = np.linspace(frame["x"].min(), frame["x"].max(), points)
    band = ols.get_prediction(add_constant(grid)).summary_frame(alpha=1 - CONFIDENCE)
    return pd.DataFrame({"x": grid, "fit": band["mean"], "lo": band["mean_ci_lower"], "hi": band["mean_ci_upper"]})


def sd_trend(
    trials: pd.DataFrame,
    metrics: Sequence[str],
    sd: str = SD_PARAM,
    unit: Sequence[str] = (TEACHER_KEY_PARAM, K_PARAM),
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Does each metric rise with the SD rate? One row per metric.

    Trials sharing a teacher and k share their phase metrics, so they are first
    averaged into one unit per ``unit`` combination, which keeps repeated trials
    from inflating n; without all ``unit`` columns each trial is its own unit.
    On the units: `fit_pair` of metric ~ SD (OLS slope and CI, Pearson,
    Spearman, bootstrap) plus Kendall's tau-b with its p-value, a rank trend
    test across ordered SD levels that handles ties (the Jonckheere-Terpstra
    statistic is a linear function of Kendall's S between level and value).
    Columns ``n_trials`` and ``n_levels`` give the raw trial count and the
    number of distinct SD rates.
    """
    rows = []
    grouped = all(c in trials for c in unit)
    for metric in metrics:
        if metric not in trials or sd not in trials:
            continue
        units = (
            trials.dropna(subset=[sd, *unit]).groupby([sd, *unit], as_index=False)[metric].mean() if grouped else trials
        )
        fit = asdict(fit_pair(units[sd], units[metric], n_resamples=n_resamples, seed=seed))
        complete = units.dropna(subset=[metric])
        tau, tau_p = np.nan, np.nan
        if np.isfinite(fit["slope"]):
            kendall = stats.kendalltau(complete[sd], complete[metric])
            tau, tau_p = float(kendall.statistic), float(kendall.pvalue)
        rows.append(
            {
                **fit,
                "kendall_tau": tau,
                "kendall_p": tau_p,
                "n_trials": int(trials[metric].notna().sum()),
                "n_levels": int(complete[sd].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=[*FIT_COLUMNS, "kendall_tau", "kendall_p", "n_trials", "n_levels"])


def mean_ci(values: pd.Series) -> tuple[float, float, float, int]:
    """Mean of the non-missing values with its 95% t-interval: (mean, lo, hi, n); CI NaN when n < 2."""
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    if len(v) == 0:
        return np.nan, np.nan, np.nan, 0
    if len(v) < 2 or np.ptp(v) == 0:
        return float(v.mean()), np.nan, np.nan, len(v)
    ci = stats.ttest_1samp(v, popmean=0.0).confidence_interval(CONFIDENCE)
    return float(v.mean()), float(ci.low), float(ci.high), len(v)


def _slope_and_r(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """OLS slope and Pearson r along ``axis`` (vectorised for the bootstrap); NaN when x or y is constant."""
    xm = x - x.mean(axis=axis, keepdims=True)
    ym = y - y.mean(axis=axis, keepdims=True)
    sxx, syy, sxy = (xm * xm).sum(axis=axis), (ym * ym).sum(axis=axis), (xm * ym).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack(
            [np.where(sxx > 0, sxy / sxx, np.nan), np.where(sxx * syy > 0, sxy / np.sqrt(sxx * syy), np.nan)]
        )


def _bootstrap(x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired BCa bootstrap CIs (low, high) of [slope, r]; NaN where resamples are degenerate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = stats.bootstrap(
                (x, y),
                _slope_and_r,
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                confidence_level=CONFIDENCE,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
    return np.asarray(result.confidence_interval.low, float), np.asarray(result.confidence_interval.high, float)


def _bh_adjust(pvalues: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values over the defined ones (NaN stays NaN)."""
    adjusted = pd.Series(np.nan, index=pvalues.index)
    defined = pvalues.notna()
    if defined.any():
        adjusted[defined] = multipletests(pvalues[defined].to_numpy(float), method="fdr_bh")[1]
    return adjusted
