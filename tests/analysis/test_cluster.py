"""Teacher-as-unit inference (docs/science.md §7): clustered OLS with t(G-2), small n, power, the report's record."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from analysis.cluster import cluster_fit, exploratory_ranking, searched_covariates
from analysis.inference import CLUSTERED, MIN_TEACHERS, cluster_mean, too_few
from analysis.load import load_trials
from analysis.power import power
from analysis.report import write_report
from analysis.sweep import SECONDARY_TARGETS
from study.sweep.simulate import simulate_clustered
from study.sweep.space import SweepSpec
from study.sweep.synthetic import write_clustered_sweep

X, Y = "phase.cosine.within_sim", "r2_pooled.final"
COVARIATES = ["raptor.k", "distill.stage2.lambda_cls"]
NULL_SEED = 23
"""A draw of 6 teachers x 8 trials whose teacher effects happen to line up with similarity (as a reviewer found)."""


@pytest.fixture(scope="module")
def null_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    """6 teachers x 8 trials through the study's MLflow writer: no teacher-level slope, tiny within-teacher noise."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = SweepSpec(name="null")  # the defaults: correlation, within_sim -> r2_pooled.final
    write_clustered_sweep(uri, "null", n_teachers=6, trials_per_teacher=8, teacher_slope=0.0, between_sd=0.02,
                          within_sd=0.001, seed=NULL_SEED, artifact_location=(root / "art").as_uri(),
                          spec=spec)  # fmt: skip
    return uri, load_trials(["null"], uri)


def test_null_store_cluster_ci_covers_zero_naive_does_not(null_store):
    _, trials = null_store
    assert trials["teacher.key"].nunique() == 6 and len(trials) == 48
    # the premise: at the teacher level there is no evidence of a relation
    means = trials.groupby("teacher.key")[[X, Y]].mean()
    assert sm.OLS(means[Y], sm.add_constant(means[X])).fit().pvalues.iloc[1] > 0.2
    covariates = searched_covariates(trials, trials.attrs["params"])
    assert covariates[0] == "raptor.k" and "distill.stage2.lambda_cls" in covariates
    fit = cluster_fit(trials, X, Y, covariates, n_resamples=999)
    assert (fit.n_trials, fit.n_teachers) == (48, 6)
    assert fit.slope_ci.lo < 0 < fit.slope_ci.hi
    assert fit.p > 0.05
    naive = fit.naive
    assert naive.slope == pytest.approx(fit.slope) and naive.n_trials == 48
    assert not naive.slope_ci.lo < 0 < naive.slope_ci.hi and naive.p < 0.001
    assert fit.slope_ci.half_width > 3 * naive.slope_ci.half_width


def test_planted_teacher_slope_is_covered_in_at_least_90_percent_of_sweeps():
    """60 simulated sweeps of 20 teachers x 4 trials: the 95% clustered t(G-2) CI covers the planted slope."""
    planted, covered = 0.5, []
    for sweep in range(60):
        trials = simulate_clustered(20, 4, teacher_slope=planted, between_sd=0.02, within_sd=0.01,
                                    rng=np.random.default_rng(1000 + sweep))  # fmt: skip
        fit = cluster_fit(trials, X, Y, COVARIATES, n_resamples=99, seed=sweep)
        covered.append(fit.slope_ci.lo <= planted <= fit.slope_ci.hi)
    assert np.mean(covered) >= 0.9


def test_fewer_than_five_teachers_give_no_r2_no_ci():
    trials = simulate_clustered(MIN_TEACHERS - 1, 10, teacher_slope=0.5, between_sd=0.01, within_sd=0.001,
                                rng=np.random.default_rng(0))  # fmt: skip
    fit = cluster_fit(trials, X, Y, COVARIATES)
    assert (fit.n_trials, fit.n_teachers) == (40, 4)
    assert fit.note == too_few(4)
    assert math.isnan(fit.r2) and math.isnan(fit.slope_ci.lo) and math.isnan(fit.p) and fit.naive is None
    summary = fit.summary()
    assert summary["r2"] is None and summary["slope_ci"] == [None, None]
    json.dumps(summary)
    assert cluster_mean(trials["acc.ratio"] if "acc.ratio" in trials else trials[Y], trials["teacher.key"])[
        "note"
    ] == too_few(4)
    assert too_few(4) in power(fit, trials).statement()


def test_covariate_k_removes_its_confounding():
    """k raises both similarity and fidelity; with no teacher-level slope, only the k-adjusted fit says so."""
    trials = simulate_clustered(30, 6, teacher_slope=0.0, between_sd=0.002, within_sd=0.001,
                                rng=np.random.default_rng(3))  # fmt: skip
    raw = cluster_fit(trials, X, Y, n_resamples=499)
    adjusted = cluster_fit(trials, X, Y, COVARIATES, n_resamples=499)
    assert raw.slope_ci.lo > 0  # confounded by k
    assert adjusted.slope_ci.lo < 0 < adjusted.slope_ci.hi
    assert adjusted.covariates == tuple(COVARIATES)


def test_cluster_mean_ci_is_wider_than_a_trial_level_one():
    rng = np.random.default_rng(1)
    teachers = np.repeat(np.arange(8), 10)
    values = pd.Series(0.95 + rng.normal(0, 0.01, 8)[teachers] + rng.normal(0, 0.001, 80))
    out = cluster_mean(values, pd.Series(teachers))
    assert (out["n_trials"], out["n_teachers"]) == (80, 8) and out["ci"].lo < out["mean"] < out["ci"].hi
    trial_level = 1.96 * values.std() / math.sqrt(80)
    assert out["ci"].half_width > 2 * trial_level


def test_power_statement_plans_teachers():
    trials = simulate_clustered(10, 4, teacher_slope=0.5, between_sd=0.01, within_sd=0.01,
                                rng=np.random.default_rng(2))  # fmt: skip
    fit = cluster_fit(trials, X, Y, COVARIATES, n_resamples=499)
    plan = power(fit, trials, target_half_width=0.05)
    assert plan.n_teachers == 10 and plan.trials_per_teacher == 4
    assert plan.sigma2_between > 0 and plan.sigma2_within > 0
    assert math.isfinite(plan.half_width_model) and math.isfinite(plan.half_width_observed)
    if plan.half_width_model > 0.05:
        assert plan.teachers_needed > 10
    assert plan.teachers_needed_many_trials <= plan.teachers_needed
    text = plan.statement()
    assert "10 teachers" in text and f"about {plan.teachers_needed} teachers" in text
    # the model's half-width shrinks like 1/sqrt(teachers): 4x the teachers, about half the width
    bigger = simulate_clustered(40, 4, teacher_slope=0.5, between_sd=0.01, within_sd=0.01,
                                rng=np.random.default_rng(2))  # fmt: skip
    big_plan = power(cluster_fit(bigger, X, Y, COVARIATES, n_resamples=199), bigger)
    assert big_plan.half_width_model < 0.75 * plan.half_width_model


def test_exploratory_ranking_is_holm_adjusted():
    trials = simulate_clustered(12, 4, teacher_slope=0.5, between_sd=0.01, within_sd=0.005,
                                rng=np.random.default_rng(4))  # fmt: skip
    predictors = [c for c in trials if c.startswith("phase.")]
    table = exploratory_ranking(trials, Y, predictors, COVARIATES, n_resamples=199)
    assert len(table) == len(predictors)
    defined = table.dropna(subset=["p"])
    assert (defined["p_holm"] >= defined["p"] - 1e-12).all()
    assert (defined["p_holm"] <= 1).all()
    r2 = table["r2"].dropna().to_numpy()
    assert (np.diff(r2) <= 1e-12).all()


def test_report_summary_json_of_the_null_store(null_store, tmp_path):
    """The report's summary.json: the spec's primary relation with the teacher as the unit, naive numbers apart."""
    uri, _ = null_store
    write_report(["null"], uri, tmp_path, n_resamples=499)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reading"] == {"predictor": X, "target": Y, "purpose": "correlation", "scheduler": "none",
                                  "source": "spec"}  # fmt: skip
    primary = summary["primary"]
    assert {"predictor", "target", "method", "n_trials", "n_teachers", "slope", "slope_ci", "r2", "r2_ci", "p"} <= set(
        primary
    )
    assert (primary["predictor"], primary["target"], primary["n_trials"], primary["n_teachers"]) == (X, Y, 48, 6)
    assert primary["method"] == CLUSTERED and primary["df"] == 4 and primary["p_reliable"] is False
    assert {"slope_between", "slope_between_ci", "slope_within", "slope_within_ci"} <= set(primary)
    assert primary["slope_ci"][0] < 0 < primary["slope_ci"][1]
    naive = summary["naive"]
    assert naive["method"] == "naive trial-level OLS" and naive["n_trials"] == 48
    assert not naive["slope_ci"][0] < 0 < naive["slope_ci"][1] and naive["p"] < 0.001
    assert [row["sd"] for row in summary["per_sd"]] == [0.0, 0.2, 0.4, 0.6]
    assert all(row["r2"] is None and row["note"].startswith("too few teachers") for row in summary["per_sd"])
    assert [row["k"] for row in summary["per_k"]] == [2, 3, 4]
    tables = tmp_path / "tables"
    secondary = set(pd.read_csv(tables / "secondary_by_sd.csv")[["target", "level"]].itertuples(index=False, name=None))
    assert "r2.final" in SECONDARY_TARGETS and "acc.ratio" in SECONDARY_TARGETS  # the clustered store has no acc.*
    assert secondary == {("r2.final", sd) for sd in (0.0, 0.2, 0.4, 0.6)}
    assert summary["power"]["statement"].startswith("With 6 teachers")
    exploratory = pd.read_csv(tables / "exploratory.csv")
    assert set(exploratory["predictor"]) >= {X} and "p_holm" in exploratory
    page = (tmp_path / "report.md").read_text()
    assert "Primary relation (pre-registered, spec)" in page and "naive (trials as independent)" in page


def test_tuning_sweep_report_warns_and_small_sweep_reads_as_demo(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec(name="tune", purpose="tuning", scheduler={"type": "asha"})
    write_clustered_sweep(uri, "tune", n_teachers=3, trials_per_teacher=3, teacher_slope=0.5, spec=spec,
                          artifact_location=(tmp_path / "art").as_uri())  # fmt: skip
    write_report(["tune"], uri, tmp_path / "report", n_resamples=99)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["reading"]["purpose"] == "tuning"
    assert any("conditional on surviving" in note or "survived it" in note for note in summary["notes"])
    assert summary["primary"]["note"] == too_few(3) and summary["primary"]["r2"] is None
    assert summary["naive"] is None
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Demo, not a finding" in page and "Tuning sweep (scheduler asha)" in page
