"""Small-cluster inference (docs/science.md §7): between vs within slopes, saturated bootstrap resamples, t(G-2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import analysis.inference as inference
from analysis.cluster import cluster_fit
from analysis.inference import MIN_USABLE_SHARE, bootstrap_r2, build_design
from analysis.report import write_trials_report
from analysis.sweep import Reading

X, Y, K = "phase.cosine.within_sim", "r2_pooled.final", "raptor.k"


def split_store(n_teachers: int = 16, trials: int = 6, seed: int = 0) -> pd.DataFrame:
    """By hand: teacher means of x spread over [0.90, 0.98] and y = x_mean + noise (between slope 1); inside a
    teacher x moves by up to +-0.02 and y does not follow it (within slope 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_teachers):
        x_mean = 0.90 + 0.08 * g / (n_teachers - 1)
        y_mean = x_mean + rng.normal(0.0, 0.002)
        for t in range(trials):
            rows.append({"teacher.key": f"t{g:02d}", "teacher.sd_rate": [0.0, 0.3][g % 2], "sweep": "split",
                         "status": "finished", "run_id": f"r{g}-{t}", X: x_mean + rng.uniform(-0.02, 0.02),
                         Y: y_mean + rng.normal(0.0, 0.002), "r2_pooled.mean": y_mean + 0.03})  # fmt: skip
    return pd.DataFrame(rows)


def test_between_slope_one_and_within_slope_zero_are_both_reported(tmp_path):
    trials = split_store()
    fit = cluster_fit(trials, X, Y, n_resamples=199)
    assert fit.between.ci.lo < 1.0 < fit.between.ci.hi and abs(fit.between.estimate - 1.0) < 0.1
    assert fit.within.ci.lo < 0.0 < fit.within.ci.hi and abs(fit.within.estimate) < 0.1
    write_trials_report(trials, tmp_path, title="split", source="hand-built", n_resamples=199,
                        reading=Reading(predictor=X, target=Y, source="given"))  # fmt: skip
    primary = json.loads((tmp_path / "summary.json").read_text())["primary"]
    assert primary["slope_between"] == pytest.approx(fit.between.estimate)
    assert primary["slope_between_ci"][0] < 1.0 < primary["slope_between_ci"][1]
    assert primary["slope_within_ci"][0] < 0.0 < primary["slope_within_ci"][1]
    assert "the relation exists only between teachers" in (tmp_path / "report.md").read_text()


def five_teachers(trials_per_teacher: int, n_numeric: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(5):
        for t in range(trials_per_teacher):
            row = {"teacher.key": f"t{g}", K: 2 + t % 3, X: 0.9 + 0.01 * g + rng.normal(0, 0.003)}
            row |= {f"knob{i}": rng.uniform() for i in range(n_numeric)}
            rows.append(row | {Y: 0.8 + 0.5 * row[X] + rng.normal(0, 0.002)})
    return pd.DataFrame(rows)


def test_five_teachers_never_give_a_ci_bound_from_a_saturated_fit(monkeypatch):
    """3 trials per teacher and 6 parameters (const, x, 2 k dummies, 2 knobs): a resample of 2 distinct teachers
    has 6 distinct rows, fits exactly (R^2 = 1) and is dropped, about 10% of them."""
    trials = five_teachers(3, 2)
    covariates = [K, "knob0", "knob1"]
    fit = cluster_fit(trials, X, Y, covariates, n_resamples=2000)
    assert 0.05 < fit.r2_dropped / 2000 < 0.15 and fit.r2_resamples + fit.r2_dropped == 2000
    assert fit.r2_ci.defined and fit.r2_ci.hi < 1.0 - 1e-9
    assert f"{fit.r2_dropped} of 2000 resamples saturated or singular (dropped)" in fit.note
    # the premise: kept, those saturated resamples would put the upper bound at exactly 1
    monkeypatch.setattr(inference, "MIN_RESIDUAL_DF", -100)
    design = build_design(trials, X, Y, covariates, "teacher.key")
    kept = bootstrap_r2(design, 2000, np.random.default_rng(0))
    assert kept.dropped < fit.r2_dropped and kept.ci.hi == pytest.approx(1.0, abs=1e-9)


def test_ci_from_under_80_percent_usable_resamples_is_not_estimable():
    """2 trials per teacher and 6 parameters: 3 distinct teachers are saturated too, most resamples are dropped."""
    trials = five_teachers(2, 4)
    fit = cluster_fit(trials, X, Y, [f"knob{i}" for i in range(4)], n_resamples=1000)
    assert fit.r2_resamples < MIN_USABLE_SHARE * 1000
    assert not fit.r2_ci.defined and "R² CI not estimable" in fit.note and fit.summary()["r2_ci"] == [None, None]


def test_clustered_p_uses_t_with_g_minus_2_degrees_of_freedom():
    """G = 6 teachers: CI half-width = t_{0.975, 4} x SE = 2.776 x SE, p from t with 4 df (not the normal)."""
    rng = np.random.default_rng(3)
    teachers = np.repeat(np.arange(6), 5)
    x = 0.9 + 0.01 * teachers + rng.normal(0, 0.004, 30)
    trials = pd.DataFrame({"teacher.key": teachers.astype(str), X: x,
                           Y: 0.3 * x + rng.normal(0, 0.003, 6)[teachers] + rng.normal(0, 0.002, 30)})  # fmt: skip
    fit = cluster_fit(trials, X, Y, n_resamples=99)
    reference = sm.OLS(trials[Y], sm.add_constant(trials[X])).fit(cov_type="cluster", cov_kwds={"groups": teachers})
    se = reference.bse.iloc[1]
    assert fit.pooled.df == 4 and fit.pooled.se == pytest.approx(se)
    assert fit.slope_ci.half_width == pytest.approx(2.7764451 * se, rel=1e-6)
    assert fit.p == pytest.approx(2 * stats.t.sf(abs(fit.slope / se), 4))
    assert fit.p > 2 * stats.norm.sf(abs(fit.slope / se))  # the normal reference would be too small
    assert not fit.reliable and "p unreliable: 6 < 10 teachers" in fit.note
    assert math.isfinite(fit.between.p) and fit.between.df == 4
