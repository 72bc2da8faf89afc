"""Statistics of analysis/: planted correlations are recovered, edge cases give NaN with a reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.document import Note, Section, Table, format_cell, render_html, render_markdown
from analysis.fit import (
    FIT_COLUMNS,
    fit_by,
    fit_pair,
    fit_table,
    mean_ci,
    ols_band,
    rank_predictors,
    sd_trend,
    split_by_status,
)
from analysis.importance import infer_distributions, param_importances
from analysis.sweep import analyse_sweep

RESAMPLES = 300


def planted(n: int = 80, slope: float = 0.8, noise: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """x ~ U(0.4, 0.9); r2.final = 0.1 + slope * x + N(0, noise); a second, unrelated predictor."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.4, 0.9, n)
    return pd.DataFrame(
        {
            "status": "finished",
            "phase.cosine.within_sim": x,
            "phase.cosine.mean_sim": rng.uniform(0.2, 0.6, n),
            "r2.final": 0.1 + slope * x + rng.normal(0.0, noise, n),
        }
    )


def expected_r2(slope: float, noise: float) -> float:
    """Population R^2 of y = slope * x + e for x ~ U(0.4, 0.9)."""
    signal = slope**2 * 0.5**2 / 12
    return signal / (signal + noise**2)


def test_fit_recovers_planted_slope_and_r2() -> None:
    frame = planted(slope=0.8, noise=0.03)
    fit = fit_pair(frame["phase.cosine.within_sim"], frame["r2.final"], n_resamples=RESAMPLES)
    assert fit.slope_lo < 0.8 < fit.slope_hi
    assert fit.boot_slope_lo < 0.8 < fit.boot_slope_hi
    assert fit.r2 == pytest.approx(expected_r2(0.8, 0.03), abs=0.05)
    assert fit.pearson_r**2 == pytest.approx(fit.r2)
    assert fit.boot_r_lo < fit.pearson_r < fit.boot_r_hi
    assert fit.spearman_rho > 0.8 and fit.spearman_p < 1e-6
    assert (fit.n, fit.n_dropped, fit.note) == (80, 0, "")


def test_fit_is_deterministic_with_fixed_seed() -> None:
    frame = planted()
    a = fit_pair(frame["phase.cosine.within_sim"], frame["r2.final"], n_resamples=RESAMPLES, seed=3)
    b = fit_pair(frame["phase.cosine.within_sim"], frame["r2.final"], n_resamples=RESAMPLES, seed=3)
    assert a == b


def test_table_ranks_the_planted_predictor_first_and_adjusts_p() -> None:
    fits = fit_table(
        planted(), ["r2.final"], ["phase.cosine.mean_sim", "phase.cosine.within_sim", "absent"], n_resamples=RESAMPLES
    )
    assert list(fits["x"]) == ["phase.cosine.mean_sim", "phase.cosine.within_sim"]
    assert (fits["slope_p_adj"] >= fits["slope_p"] - 1e-15).all()
    ranking = rank_predictors(fits)
    assert ranking.iloc[0]["x"] == "phase.cosine.within_sim"
    assert list(ranking["rank"]) == [1, 2]


def test_grouped_fits_follow_the_planted_noise() -> None:
    low = planted(noise=0.05, seed=1).assign(**{"teacher.sd_rate": 0.0})
    high = planted(noise=0.01, seed=2).assign(**{"teacher.sd_rate": 0.6})
    fits = fit_by(
        pd.concat([low, high]), "teacher.sd_rate", ["r2.final"], ["phase.cosine.within_sim"], n_resamples=RESAMPLES
    )
    r2 = fits.set_index("level")["r2"]
    assert r2[0.0] == pytest.approx(expected_r2(0.8, 0.05), abs=0.06)
    assert r2[0.6] == pytest.approx(expected_r2(0.8, 0.01), abs=0.02)
    assert r2[0.6] > r2[0.0]
    assert set(fits["by"]) == {"teacher.sd_rate"}


def test_one_and_two_trials_give_nan_with_reason() -> None:
    frame = planted(n=2)
    fit = fit_pair(frame["phase.cosine.within_sim"], frame["r2.final"])
    assert np.isnan([fit.slope, fit.r2, fit.pearson_r, fit.spearman_rho, fit.boot_slope_lo]).all()
    assert "n=2 < 3" in fit.note
    one = fit_table(planted(n=1), ["r2.final"], ["phase.cosine.within_sim"])
    assert one.loc[0, "n"] == 1 and "n=1" in one.loc[0, "note"]


def test_constant_metric_gives_nan_with_reason() -> None:
    frame = planted().assign(**{"phase.cka.cut_norm": 0.5})
    fit = fit_pair(frame["phase.cka.cut_norm"], frame["r2.final"])
    assert np.isnan(fit.slope) and np.isnan(fit.pearson_r)
    assert fit.note == "constant phase.cka.cut_norm: correlation undefined"
    assert ols_band(frame["phase.cka.cut_norm"], frame["r2.final"]) is None


def test_missing_values_are_dropped_per_pair_and_counted() -> None:
    frame = planted(n=40)
    frame.loc[:4, "r2.final"] = np.nan
    frame.loc[10:11, "phase.cosine.mean_sim"] = np.nan
    fits = fit_table(frame, ["r2.final"], ["phase.cosine.within_sim", "phase.cosine.mean_sim"], n_resamples=RESAMPLES)
    assert fits.set_index("x")["n_dropped"].to_dict() == {"phase.cosine.within_sim": 5, "phase.cosine.mean_sim": 7}
    assert fits.set_index("x")["n"].to_dict() == {"phase.cosine.within_sim": 35, "phase.cosine.mean_sim": 33}


def test_small_n_flags_rough_spearman_p() -> None:
    frame = planted(n=4)
    fit = fit_pair(frame["phase.cosine.within_sim"], frame["r2.final"], n_resamples=RESAMPLES)
    assert np.isfinite(fit.slope)
    assert "Spearman p from the t approximation" in fit.note


def test_failed_and_pruned_are_counted_and_excluded() -> None:
    frame = planted(n=10)
    frame.loc[:2, "status"] = "failed"
    frame.loc[3, "status"] = "pruned"
    frame.loc[4, "status"] = "running"
    finished, counts = split_by_status(frame)
    assert (counts.finished, counts.failed, counts.pruned, counts.running) == (5, 3, 1, 1)
    assert (counts.total, counts.excluded) == (10, 5)
    assert (finished["status"] == "finished").all() and len(finished) == 5
    with pytest.raises(ValueError, match="unknown trial status"):
        split_by_status(frame.assign(status="exploded"))


def test_zero_finished_trials() -> None:
    frame = planted(n=3).assign(status="failed")
    finished, counts = split_by_status(frame)
    assert finished.empty and counts.failed == 3 and counts.finished == 0
    fits = fit_table(finished, ["r2.final"], ["phase.cosine.within_sim"])
    assert fits.loc[0, "n"] == 0 and "n=0" in fits.loc[0, "note"]
    assert fit_by(finished, "teacher.sd_rate").empty
    analysis = analyse_sweep(frame, params=[], n_resamples=RESAMPLES)
    assert analysis.counts.finished == 0 and analysis.best == {}
    assert all(imp.reason for imp in analysis.importances)


def test_sd_trend_averages_repeated_units() -> None:
    rows = []
    for sd in (0.0, 0.2, 0.4, 0.6):
        for seed in range(3):
            for _ in range(4):  # 4 trials share one (teacher, k): one unit
                rows.append({"teacher.sd_rate": sd, "teacher.key": f"t{sd}-{seed}", "raptor.k": 2,
                             "phase.cosine.mean_sim": 0.5 + 0.4 * sd + 0.01 * seed, "flat": 1.0})  # fmt: skip
    trend = sd_trend(pd.DataFrame(rows), ["phase.cosine.mean_sim", "flat"], n_resamples=RESAMPLES).set_index("y")
    rising = trend.loc["phase.cosine.mean_sim"]
    assert (rising["n"], rising["n_trials"], rising["n_levels"]) == (12, 48, 4)
    assert rising["slope"] == pytest.approx(0.4)
    assert rising["spearman_rho"] > 0.9 and rising["kendall_tau"] > 0.8 and rising["kendall_p"] < 0.01
    assert np.isnan(trend.loc["flat", "kendall_tau"]) and "constant flat" in trend.loc["flat", "note"]
    per_trial = sd_trend(pd.DataFrame(rows).drop(columns="teacher.key"), ["phase.cosine.mean_sim"], n_resamples=50)
    assert per_trial.loc[0, "n"] == 48  # without a teacher key every trial is its own unit


def test_ols_band_covers_the_fit() -> None:
    frame = planted()
    band = ols_band(frame["phase.cosine.within_sim"], frame["r2.final"], points=20)
    assert len(band) == 20 and (band["lo"] <= band["fit"]).all() and (band["fit"] <= band["hi"]).all()


def test_mean_ci() -> None:
    mean, lo, hi, n = mean_ci(pd.Series([0.9, 0.92, 0.94, np.nan]))
    assert (mean, n) == (pytest.approx(0.92), 3) and lo < mean < hi
    assert np.isnan(mean_ci(pd.Series([0.9]))[1]) and mean_ci(pd.Series([], dtype=float))[3] == 0


def test_importances_find_the_planted_param() -> None:
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame(
        {
            "teacher.sd_rate": rng.choice([0.0, 0.2, 0.4, 0.6], n),
            "raptor.k": pd.array(rng.integers(2, 5, n), dtype="Int64"),
            "distill.stage2.enabled": pd.array(rng.random(n) > 0.5, dtype="boolean"),
            "raptor.init": rng.choice(["teacher", "random"], n),
            "teacher.key": [f"{i:016x}" for i in range(n)],
            "runtime.device": rng.choice(["cpu", "cuda"], n),
            "name": [f"trial-{i}" for i in range(n)],
        }
    )
    frame["r2.final"] = 0.5 + frame["teacher.sd_rate"] + rng.normal(0, 0.01, n)
    imp = param_importances(frame, "r2.final", list(frame.columns[:-1]))
    assert imp.reason == "" and imp.n_trials == n
    assert max(imp.values, key=imp.values.get) == "teacher.sd_rate"
    assert set(imp.values) == {"teacher.sd_rate", "raptor.k", "distill.stage2.enabled", "raptor.init"}
    assert sum(imp.values.values()) == pytest.approx(1.0)
    few = param_importances(frame.head(5), "r2.final", list(frame.columns[:-1]))
    assert few.values == {} and few.reason == "only 5 finished trials carry it; fANOVA needs at least 10"
    same = param_importances(frame.assign(**{"teacher.sd_rate": 0.1}), "r2.final", ["teacher.sd_rate"])
    assert same.values == {} and "no parameter varies" in same.reason


def test_infer_distributions() -> None:
    frame = pd.DataFrame(
        {
            "lr": [1e-5, 1e-4, 1e-2, 1e-3],
            "sd": [0.0, 0.3, 0.6, 0.3],
            "k": pd.array([2, 3, 4, 2], dtype="Int64"),
            "flag": pd.array([True, False, True, True], dtype="boolean"),
            "kind": ["a", "b", "a", "a"],
            "name": ["t0", "t1", "t2", "t3"],
            "fixed": [1.0, 1.0, 1.0, 1.0],
        }
    )
    dists = infer_distributions(frame)
    assert dists["lr"].log and not dists["sd"].log
    assert (dists["k"].low, dists["k"].high) == (2, 4)
    assert dists["flag"].choices == (False, True) and dists["kind"].choices == ("a", "b")
    assert "fixed" not in dists and "name" not in dists  # constant; an identifier


def test_document_renders_tables_notes_and_no_external_urls() -> None:
    frame = pd.DataFrame({"y": ["r2.final"], "r2": [0.91234], "slope_p": [0.000123], "lo": [np.nan]})
    sections = [Section("Fits", ["text & more", Note("excluded 2"), Table("cap", frame)])]
    page = render_html("T", sections)
    assert "<td>0.912</td>" in page and "<td>0.00012</td>" in page and "<td>–</td>" in page
    assert "text &amp; more" in page and "http" not in page
    markdown = render_markdown("T", sections)
    assert "| r2.final | 0.912 | 0.00012 | – |" in markdown and "> **Note:** excluded 2" in markdown
    assert format_cell(3, "n") == "3" and format_cell(None, "x") == "–"
    assert list(FIT_COLUMNS[:4]) == ["x", "y", "n", "n_dropped"]
