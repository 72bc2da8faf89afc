"""What the observed variance buys: the slope CI half-width a design reaches and the teachers a target needs
(docs/science.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.cluster import ClusterFit
from analysis.inference import CONFIDENCE, build_design, json_number, too_few
from study.contract import TEACHER_KEY_PARAM

TARGET_HALF_WIDTH = 0.05
"""Half-width of the 95% slope CI the power statement plans for."""


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
    half_width_observed: float = math.nan
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
            f"the slope is {self.half_width_observed:.3g} (clustered t(G-2); {self.half_width_model:.3g} from the "
            f"variance components: between-teacher residual variance {self.sigma2_between:.3g}, within-teacher "
            f"{self.sigma2_within:.3g}, ICC {self.icc:.2f}). A half-width of {self.target_half_width:g} needs "
            f"{needed} at {self.trials_per_teacher:.1f} trials each; even with unlimited trials per teacher it needs "
            f"{floor} teachers."
        )

    def summary(self) -> dict:
        return {
            "n_teachers": self.n_teachers,
            "trials_per_teacher": json_number(self.trials_per_teacher),
            "sigma2_between": json_number(self.sigma2_between),
            "sigma2_within": json_number(self.sigma2_within),
            "icc": json_number(self.icc),
            "var_x_between": json_number(self.var_x_between),
            "half_width_observed": json_number(self.half_width_observed),
            "half_width_model": json_number(self.half_width_model),
            "target_half_width": self.target_half_width,
            "teachers_needed": self.teachers_needed,
            "teachers_needed_many_trials": self.teachers_needed_many_trials,
            "statement": self.statement(),
        }


def power(fit: ClusterFit, trials: pd.DataFrame, *, unit: str = TEACHER_KEY_PARAM,
          target_half_width: float = TARGET_HALF_WIDTH) -> Power:  # fmt: skip
    """Half-width reached and teachers needed for ``target_half_width`` on the slope of ``fit`` (see `Power`)."""
    design = build_design(trials, fit.predictor, fit.target, fit.covariates, unit)
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
        half_width_observed=fit.slope_ci.half_width,
        half_width_model=half_width(design.n_teachers, m),
        teachers_needed=needed(m),
        teachers_needed_many_trials=needed(math.inf) if sigma2_between > 0 else 3,
    )
