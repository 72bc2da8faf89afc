"""The paper's figures (Jacobs et al., arXiv 2512.19941) and a table setting a sweep's findings beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fit import mean_ci
from analysis.sweep import SweepAnalysis
from study.contract import ACC_RATIO, K_PARAM, R2_FINAL, SD_PARAM

PAPER_FIT_R2 = {0.0: "0.88", 0.6: "~0.94"}
"""Regression R^2 of fidelity on similarity by SD rate."""
PAPER_FIT_SETTING = "small ViTs, CIFAR-100"
PAPER_ACC_RATIO = {2: 0.96, 3: 0.975, 4: 0.985}
"""Raptor / teacher linear-probe accuracy by k."""
PAPER_ACC_SETTING = "DINOv2 ViT-B/14, ImageNet linear probe"
SETTING_PARAMS = ("data.name", "teacher.source", "teacher.timm_name", "teacher.depth", "teacher.width")

COLUMNS = ["finding", "paper", "this sweep", "paper setting"]


def compare_with_paper(analysis: SweepAnalysis, fidelity: str = R2_FINAL) -> pd.DataFrame:
    """One row per comparable finding: fit R^2 per SD rate and its trend, SD effects, accuracy recovery per k.

    The fit rows use the phase metric that best predicts ``fidelity`` in this
    sweep (``analysis.best``); rows the sweep cannot fill say why.
    """
    trials = analysis.trials
    predictor = analysis.best.get(fidelity)
    rows = []
    if predictor is None:
        rows.append(
            [f"R² of {fidelity} ~ similarity", "0.88 → ~0.94", f"no defined fit of {fidelity}", PAPER_FIT_SETTING]
        )
    else:
        rows += _fit_rows(analysis, fidelity, predictor)
        rows += [
            _trend_row(analysis, metric, f"{label} rises with SD")
            for metric, label in ((predictor, f"similarity ({predictor})"), (fidelity, f"fidelity ({fidelity})"))
        ]
    levels = sorted({*PAPER_ACC_RATIO, *trials.get(K_PARAM, pd.Series(dtype=float)).dropna().astype(int)})
    for k in levels:
        group = (
            trials.loc[trials[K_PARAM] == k, ACC_RATIO]
            if {K_PARAM, ACC_RATIO} <= set(trials)
            else pd.Series(dtype=float)
        )
        mean, lo, hi, n = mean_ci(group)
        ours = (
            "not in sweep"
            if n == 0
            else f"{mean:.3f} [{lo:.3f}, {hi:.3f}], n={n}"
            if np.isfinite(lo)
            else f"{mean:.3f}, n={n}"
        )
        paper = f"{PAPER_ACC_RATIO[k]:.3f}" if k in PAPER_ACC_RATIO else "–"
        rows.append([f"acc.ratio (probe accuracy recovered) at k={k}", paper, ours, PAPER_ACC_SETTING])
    return pd.DataFrame(rows, columns=COLUMNS)


def _fit_rows(analysis: SweepAnalysis, fidelity: str, predictor: str) -> list[list[str]]:
    """Fit R^2 at each SD rate (the paper's and this sweep's), then how it changes from lowest to highest SD."""
    by_sd = analysis.by_sd
    fits = by_sd[(by_sd["y"] == fidelity) & (by_sd["x"] == predictor)].set_index("level") if len(by_sd) else by_sd
    rows = []
    for sd in sorted({*PAPER_FIT_R2, *fits.index}):
        fit = fits.loc[sd] if sd in fits.index else None
        ours = (
            "not in sweep"
            if fit is None
            else f"{fit['r2']:.3f} (n={fit['n']})"
            if np.isfinite(fit["r2"])
            else fit["note"]
        )
        rows.append([f"R² of {fidelity} ~ {predictor}, SD {sd:g}", PAPER_FIT_R2.get(sd, "–"), ours, PAPER_FIT_SETTING])
    defined = fits[fits["r2"].notna()] if len(fits) else fits
    if len(defined) >= 2:
        low, high = defined.index.min(), defined.index.max()
        ours = f"{defined.loc[low, 'r2']:.3f} (SD {low:g}) → {defined.loc[high, 'r2']:.3f} (SD {high:g})"
    else:
        ours = "needs fits at two SD rates"
    rows.append(["fit R² rises with SD", "0.88 (SD 0) → ~0.94 (SD 0.6)", ours, PAPER_FIT_SETTING])
    return rows


def _trend_row(analysis: SweepAnalysis, metric: str, finding: str) -> list[str]:
    trends = analysis.trends
    row = trends[trends["y"] == metric]
    if row.empty or not np.isfinite(row.iloc[0]["spearman_rho"]):
        ours = row.iloc[0]["note"] if len(row) else f"no {SD_PARAM} or no {metric}"
    else:
        t = row.iloc[0]
        ours = (
            f"Spearman ρ={t['spearman_rho']:.2f} (p={t['spearman_p']:.2g}), Kendall τ={t['kendall_tau']:.2f} "
            f"(p={t['kendall_p']:.2g}), n={t['n']} teacher×k units over {t['n_levels']} SD rates"
        )
    return [finding, "yes", ours, PAPER_FIT_SETTING]


def sweep_setting(trials: pd.DataFrame) -> str:
    """The observed values of the params that define the teachers and data, e.g. 'data.name=digits; teacher.depth=8'."""
    parts = []
    for name in SETTING_PARAMS:
        if name in trials and trials[name].notna().any():
            parts.append(f"{name}={'/'.join(sorted(map(str, trials[name].dropna().unique())))}")
    return "; ".join(parts) or "unknown"
