"""Hyperparameter importances: the finished trials as an in-memory optuna study, scored by fANOVA.

Each varying config param becomes an optuna distribution inferred from its
observed values (bool and text -> categorical; int -> IntDistribution; float ->
FloatDistribution, log-scaled when positive and spanning >= 3 decades), each
trial an optuna ``FrozenTrial`` whose value is the target metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from study.contract import TEACHER_KEY_PARAM

MIN_TRIALS = 10
"""Fewest trials with a defined target for importances to mean anything."""
DERIVED_PARAMS = frozenset({TEACHER_KEY_PARAM})
"""Params that are functions of other params (a hash), never knobs."""
IGNORED_PREFIXES = ("runtime.",)
"""Config sections that do not change the science (where and how fast)."""
LOG_SPAN = 1000.0


@dataclass(frozen=True)
class Importances:
    """Normalised importances of the params for one target (empty, with ``reason``, when not computable)."""

    target: str
    n_trials: int
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def infer_distributions(params: pd.DataFrame) -> dict[str, BaseDistribution]:
    """An optuna distribution per column that takes at least two values.

    Complete bool columns -> categorical; complete int / float columns -> an
    Int / FloatDistribution over the observed range (log-scaled when positive
    and spanning >= 3 decades); anything else (text, missing values) ->
    categorical over the string forms, unless it has more levels than half the
    rows: then it identifies trials (e.g. their names) and is skipped.
    """
    distributions: dict[str, BaseDistribution] = {}
    for name, column in params.items():
        if column.nunique(dropna=False) < 2:
            continue
        if column.notna().all() and pd.api.types.is_bool_dtype(column):
            distributions[name] = CategoricalDistribution([False, True])
        elif column.notna().all() and pd.api.types.is_integer_dtype(column):
            low, high = int(column.min()), int(column.max())
            distributions[name] = IntDistribution(low, high, log=low >= 1 and round(high / low, 6) >= LOG_SPAN)
        elif column.notna().all() and pd.api.types.is_float_dtype(column):
            low, high = float(column.min()), float(column.max())
            distributions[name] = FloatDistribution(low, high, log=low > 0 and round(high / low, 6) >= LOG_SPAN)
        elif column.nunique(dropna=False) <= len(column) / 2:
            distributions[name] = CategoricalDistribution(sorted(column.map(str).unique()))
    return distributions


def param_importances(
    trials: pd.DataFrame,
    target: str,
    params: Sequence[str],
    *,
    min_trials: int = MIN_TRIALS,
    seed: int = 0,
) -> Importances:
    """fANOVA importances (`optuna.importance.get_param_importances`, fixed seed) of ``params`` for ``target``.

    Trials with a missing target are left out; ``runtime.*`` and derived params
    are never scored. Too few trials or no varying param gives an empty result
    with the reason.
    """
    if target not in trials:
        return Importances(target, 0, reason="the metric is not logged by these trials")
    usable = trials[trials[target].notna()]
    candidates = [p for p in params if p in usable and p not in DERIVED_PARAMS and not p.startswith(IGNORED_PREFIXES)]
    distributions = infer_distributions(usable[candidates])
    n = len(usable)
    if n < min_trials:
        return Importances(target, n, reason=f"only {n} finished trials carry it; fANOVA needs at least {min_trials}")
    if not distributions:
        return Importances(target, n, reason="no parameter varies across trials")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line per target
    study = optuna.create_study(direction="maximize", study_name=f"importance-{target}")
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={name: _optuna_value(row[name], dist) for name, dist in distributions.items()},
                distributions=distributions,
                value=float(row[target]),
            )
            for _, row in usable.iterrows()
        ]
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return Importances(target, n, values={k: float(v) for k, v in values.items()})


def _optuna_value(value: object, distribution: BaseDistribution) -> object:
    if isinstance(distribution, CategoricalDistribution):
        return bool(value) if distribution.choices == (False, True) else str(value)
    if isinstance(distribution, IntDistribution):
        return int(value)
    return float(value)
