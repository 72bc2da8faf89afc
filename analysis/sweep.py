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
from analysis.schema import FIDELITY_METRICS, K_PARAM, PHASE_METRICS, SD_PARAM


@dataclass(frozen=True)
class SweepAnalysis:
    """The finished trials and everything fitted on them.

    ``best`` maps each fidelity metric to the phase metric with the highest
    pooled regression R^2 (only fidelity metrics with a defined fit appear).
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
        predictors = [*PHASE_METRICS, *sorted(c for c in trials if c.startswith("phase.") and c not in PHASE_METRICS)]
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
    )
