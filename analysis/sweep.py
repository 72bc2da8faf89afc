"""Every statistic of one sweep's trials, computed once: the numbers behind the report, without rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

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
from study.contract import (
    DYNAMICS_PREFIX,
    FIDELITY_METRICS,
    K_PARAM,
    PHASE_METRICS,
    PHASE_PREFIX,
    SD_PARAM,
    TEACHER_DYNAMICS_PREFIXES,
    TEACHER_KEY_PARAM,
)

DYNAMICS_COLUMNS = ["metric", "sd", "mean", "std", "n"]


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


def analyse_sweep(
    trials: pd.DataFrame,
    params: Sequence[str],
    *,
    fidelity: Sequence[str] = FIDELITY_METRICS,
    predictors: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> SweepAnalysis:
    """Split off the finished trials, then fit, rank, group, trend-test and score importances.

    ``trials`` is `analysis.load.load_trials` output (all statuses); ``params``
    the config-param columns scored for importance; ``predictors`` defaults to
    `PHASE_METRICS` plus any other ``phase.*`` metric the trials carry. Works on
    zero trials too (empty tables).
    """
    if predictors is None:
        predictors = [*PHASE_METRICS, *sorted(c for c in trials if c.startswith(PHASE_PREFIX) and c not in PHASE_METRICS)]
    finished, counts = split_by_status(trials)
    options = {"n_resamples": n_resamples, "seed": seed}
    fits = fit_table(finished, fidelity, predictors, **options)
    ranking = rank_predictors(fits)
    top = ranking[(ranking["rank"] == 1) & ranking["r2"].notna()]
    return SweepAnalysis(
        trials=finished,
        counts=counts,
        params=list(params),
        fits=fits,
        ranking=ranking,
        by_sd=fit_by(finished, SD_PARAM, fidelity, predictors, **options),
        by_k=fit_by(finished, K_PARAM, fidelity, predictors, **options),
        trends=sd_trend(finished, [*predictors, *fidelity], **options),
        importances=[param_importances(finished, target, params, seed=seed) for target in fidelity],
        best=dict(zip(top["y"], top["x"], strict=True)),
        dynamics=dynamics_by_sd(finished),
    )


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
