"""The causes study (docs/science.md, "Beyond the paper: what causes block recurrence"): per factor, the effect of each
level against the base level on every outcome, with the teacher as the unit and adjusted for teacher test accuracy.

A trial belongs to factor F when every other factor is at its base level; trials with every factor at base (the base
teachers, shared by all specs) are the base level of every factor; trials with two factors off base are left out.
Per factor, level, k and SD stratum, each outcome is averaged over a teacher's trials (one row per teacher), and

    outcome ~ 1 + [level] + teacher test accuracy (+ [SD 0.4] when both SD rates are pooled)

is fitted by OLS over those teacher means: the coefficient of [level] is the effect, with a t-based 95% CI and
two-sided p on n_teachers - parameters degrees of freedom. The teacher's accuracy is itself an outcome (unadjusted).
`mediation` gives the descriptive factor -> similarity -> fidelity split. Used by a later session on a trial table
(analysis.load.load_trials over the causes_* sweeps):

    from analysis.causes import write_causes
    from analysis.load import load_results, load_trials
    trials = load_trials(names, uri)
    write_causes(trials, "results/causes", load_results(trials["run_id"], uri))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analysis.emergence import onset
from study.contract import (
    ACC_HEAD_RATIO,
    AUGMENT_PARAM,
    DEPTH_PARAM,
    EMERGENCE_KEY,
    FINISHED,
    K_PARAM,
    LAYERSCALE_PARAM,
    R2_FINAL,
    R2_MEAN,
    R2_POOLED_FINAL,
    R2_POOLED_MEAN,
    RESIDUAL_SCALE_PARAM,
    SD_PARAM,
    SD_SCHEDULE_PARAM,
    TEACHER_KEY_PARAM,
    TEACHER_TEST_ACC,
    WEIGHT_DECAY_PARAM,
    phase_metric,
)

FACTORS = {
    "layerscale": (LAYERSCALE_PARAM, 0.1),
    "depth": (DEPTH_PARAM, 12),
    "residual_scale": (RESIDUAL_SCALE_PARAM, 1.0),
    "weight_decay": (WEIGHT_DECAY_PARAM, 0.05),
    "sd_schedule": (SD_SCHEDULE_PARAM, "uniform"),
    "augmentation": (AUGMENT_PARAM, True),
}
"""Factor -> (param, base level): the base teacher of search_spaces/fashion_sd_study_v2.yaml and causes_*.yaml."""

WITHIN_SIM = phase_metric("cosine", "within_sim")
CONTRAST = phase_metric("cosine", "contrast")
OUTCOMES = (R2_POOLED_FINAL, R2_POOLED_MEAN, R2_FINAL, R2_MEAN, ACC_HEAD_RATIO, WITHIN_SIM, CONTRAST, TEACHER_TEST_ACC)
"""Recurrent compressibility (Raptor fidelity, pooled and strict; the head ratio), the teacher's phase structure, and
its test accuracy (the covariate, itself an outcome without adjustment)."""
PRIMARY = (R2_POOLED_FINAL, 3, "pooled")
"""The declared primary test (search_spaces/causes_*.yaml): outcome, k, SD stratum."""
POOLED = "pooled"
MIN_TEACHERS = 5
"""Fewer teachers than this in either arm: effect only, no CI or p (docs/science.md §7)."""
ALPHA = 0.05


def level_label(value) -> str:
    """One spelling per level whatever the column type: missing -> 'none', numbers as '%g', else the text."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "none"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def assign_factors(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, factor) it informs, with columns `factor` and `level` (labels, `level_label`); unfinished
    trials and trials with two factors off base are dropped. A missing value is the base level (a run from before
    the knob existed) except for LayerScale, where it means no LayerScale."""
    if "status" in trials:
        trials = trials[trials["status"] == FINISHED]
    off = pd.DataFrame(index=trials.index)
    labels = {}
    for factor, (param, base) in FACTORS.items():
        column = trials[param].astype(object) if param in trials else pd.Series(base, index=trials.index, dtype=object)
        if factor != "layerscale":
            column = column.where(column.notna(), base)
        labels[factor] = column.map(level_label)
        off[factor] = labels[factor] != level_label(base)
    n_off = off.sum(axis=1)
    parts = []
    for factor in FACTORS:
        mine = trials[(n_off == 0) | (off[factor] & (n_off == 1))]
        parts.append(mine.assign(factor=factor, level=labels[factor].loc[mine.index]))
    return pd.concat(parts, ignore_index=True)


def teacher_means(rows: pd.DataFrame, outcomes: tuple[str, ...] = OUTCOMES) -> pd.DataFrame:
    """`assign_factors` rows -> one row per (factor, level, SD rate, k, teacher): the mean of each outcome over the
    teacher's trials (the teacher is the unit, docs/science.md §7)."""
    present = [name for name in dict.fromkeys((*outcomes, TEACHER_TEST_ACC)) if name in rows]
    keys = ["factor", "level", SD_PARAM, K_PARAM, TEACHER_KEY_PARAM]
    return rows.groupby(keys, dropna=False)[present].mean().reset_index()


def _ols(y: np.ndarray, design: pd.DataFrame) -> dict:
    """OLS of y on the design (first column: the level indicator, after the intercept): its coefficient, t CI, p."""
    X = sm.add_constant(design.astype(float), has_constant="add")
    while np.linalg.matrix_rank(X.to_numpy()) < X.shape[1] and X.shape[1] > 2:
        X = X.iloc[:, :-1]  # a covariate constant within the fit (or collinear with the level): left out
    fit = sm.OLS(y, X).fit()
    name = design.columns[0]
    low, high = fit.conf_int(ALPHA).loc[name]
    return {
        "effect": float(fit.params[name]),
        "se": float(fit.bse[name]),
        "ci_low": float(low),
        "ci_high": float(high),
        "p": float(fit.pvalues[name]),
        "df": int(fit.df_resid),
        "covariates": ",".join(X.columns[2:]),
    }


def _fit(data: pd.DataFrame, level: str, outcome: str, covariates: list[str], pooled: bool) -> dict:
    data = data.dropna(subset=[outcome, *covariates])
    is_level = (data["level"] == level).astype(float).rename("level_effect")
    design = pd.concat([is_level, data[covariates]], axis=1)
    if pooled:
        sd = data[SD_PARAM].astype(float)
        design = design.assign(sd_stratum=(sd != sd.min()).astype(float))
    n_level, n_base = int(is_level.sum()), int((1 - is_level).sum())
    row = {
        "n_teachers": len(data),
        "n_level": n_level,
        "n_base": n_base,
        "raw_difference": float(data.loc[is_level == 1, outcome].mean() - data.loc[is_level == 0, outcome].mean()),
    }
    empty = dict.fromkeys(("effect", "se", "ci_low", "ci_high", "p"), np.nan) | {"df": 0, "covariates": ""}
    if min(n_level, n_base) < 1 or len(data) <= design.shape[1] + 1:
        return row | empty
    fitted = _ols(data[outcome].to_numpy(float), design)
    if min(n_level, n_base) < MIN_TEACHERS:
        fitted |= dict.fromkeys(("se", "ci_low", "ci_high", "p"), np.nan)
    return row | fitted


EFFECT_COLUMNS = ["factor", "level", "base", "k", "sd", "outcome", "n_teachers", "n_level", "n_base", "raw_difference",
                  "effect", "se", "ci_low", "ci_high", "p", "df", "covariates", "primary"]  # fmt: skip


def factor_effects(trials: pd.DataFrame, outcomes: tuple[str, ...] = OUTCOMES) -> pd.DataFrame:
    """Per factor, non-base level, k, SD stratum (each SD rate, and 'pooled' with SD as a covariate) and outcome: the
    effect against the base level on teacher means, adjusted for teacher test accuracy (not for the accuracy itself).
    Columns: factor, level, base, k, sd, outcome, effect, se, ci_low, ci_high, p, df, n_teachers, n_level, n_base,
    raw_difference (level mean - base mean), covariates, primary."""
    means = teacher_means(assign_factors(trials), outcomes)
    present = [name for name in outcomes if name in means]
    records = []
    for (factor, k), group in means.groupby(["factor", K_PARAM], sort=False):
        base = level_label(FACTORS[factor][1])
        strata = [(sd, group[group[SD_PARAM] == sd], False) for sd in sorted(group[SD_PARAM].unique())]
        strata.append((POOLED, group, group[SD_PARAM].nunique() > 1))
        for level in sorted(set(group["level"]) - {base}):
            for sd, data, pooled in strata:
                arms = data[data["level"].isin([base, level])]
                for outcome in present:
                    covariates = [] if outcome == TEACHER_TEST_ACC else [TEACHER_TEST_ACC]
                    fitted = _fit(arms, level, outcome, covariates, pooled)
                    key = {"factor": factor, "level": level, "base": base, "k": int(k), "sd": sd, "outcome": outcome}
                    records.append(key | fitted | {"primary": (outcome, int(k), sd) == PRIMARY})
    return pd.DataFrame(records, columns=EFFECT_COLUMNS)


def mediation(trials: pd.DataFrame, outcome: str = R2_POOLED_FINAL, mediator: str = WITHIN_SIM) -> pd.DataFrame:
    """The descriptive factor -> similarity -> fidelity view (docs/science.md): per factor, level and k (SD pooled),
    the effect on `outcome` adjusted for accuracy (total) and for accuracy and `mediator` (direct), and the share
    1 - direct / total. Only the factor is randomised: the split is a description, not a causal decomposition."""
    means = teacher_means(assign_factors(trials), (outcome, mediator))
    records = []
    for (factor, k), group in means.groupby(["factor", K_PARAM], sort=False):
        base = level_label(FACTORS[factor][1])
        pooled = group[SD_PARAM].nunique() > 1
        for level in sorted(set(group["level"]) - {base}):
            arms = group[group["level"].isin([base, level])]
            total = _fit(arms, level, outcome, [TEACHER_TEST_ACC], pooled)
            direct = _fit(arms, level, outcome, [TEACHER_TEST_ACC, mediator], pooled)
            records.append(
                {
                    "factor": factor,
                    "level": level,
                    "k": int(k),
                    "total": total["effect"],
                    "direct": direct["effect"],
                    "mediated_share": 1 - direct["effect"] / total["effect"] if total["effect"] else np.nan,
                    "n_teachers": total["n_teachers"],
                }
            )
    return pd.DataFrame(records)


def forest_plot(effects: pd.DataFrame, path: str | Path, sd=POOLED, outcomes: tuple[str, ...] | None = None) -> Path:
    """Effects (points) with their 95% CIs (bars) per factor level (rows) and outcome (panels), one colour per k, at
    the SD stratum `sd`; the primary test's row is drawn in bold. Written as a PNG to `path`."""
    from matplotlib.figure import Figure

    shown = effects[effects["sd"].astype(str) == str(sd)]
    outcomes = [o for o in (outcomes or OUTCOMES) if o in set(shown["outcome"])]
    rows = list(dict.fromkeys(zip(shown["factor"], shown["level"])))
    ks = sorted(shown["k"].unique())
    fig = Figure(figsize=(2.6 * max(1, len(outcomes)) + 1.5, 0.35 * max(1, len(rows)) + 1.2))
    axes = fig.subplots(1, max(1, len(outcomes)), sharey=True, squeeze=False)[0]
    colours = dict(zip(ks, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for ax, outcome in zip(axes, outcomes):
        for j, k in enumerate(ks):
            part = shown[(shown["outcome"] == outcome) & (shown["k"] == k)]
            for index, r in part.iterrows():
                y = rows.index((r["factor"], r["level"])) + (j - (len(ks) - 1) / 2) * 0.25
                ax.errorbar(
                    r["effect"],
                    y,
                    xerr=[[r["effect"] - r["ci_low"]], [r["ci_high"] - r["effect"]]] if np.isfinite(r["se"]) else None,
                    fmt="o",
                    ms=4,
                    color=colours[k],
                    lw=2.5 if r["primary"] else 1.0,
                    label=f"k = {k}" if (ax is axes[0] and index == part.index[0]) else None,
                )
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_title(outcome, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(len(rows)), [f"{f}: {lvl}" for f, lvl in rows])
    axes[0].invert_yaxis()
    if ks:
        axes[0].legend(fontsize=7, loc="best")
    title = "effect vs base level on teacher means, adjusted for test accuracy (but accuracy itself)"
    fig.suptitle(f"{title}; SD {sd}; 95% t CI", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


EMERGENCE_CURVES = ("val_acc", "mean_sim", "k3.within_sim", "k3.contrast")
"""Snapshot curves of a teacher's training (study/science/emergence.py `phase_snapshot`) read per factor level."""
EMERGENCE_ONSET = 0.9
"""Onset: the first snapshot that has covered this share of the curve's change from init to the end (docs/science.md
§7, "Emergence")."""


def emergence_by_level(trials: pd.DataFrame, results: dict[str, dict]) -> pd.DataFrame:
    """One row per (factor, level, SD rate, teacher, epoch) with the `EMERGENCE_CURVES` of the teacher's snapshots
    (result.json ``teacher.emergence`` of any of its trials, `results`: run id -> result) and, per curve, the teacher's
    onset epoch (`<curve> onset`)."""
    rows = assign_factors(trials).drop_duplicates(["factor", TEACHER_KEY_PARAM])
    frames = []
    for row in rows.to_dict("records"):
        records = results.get(row["run_id"], {}).get("teacher", {}).get(EMERGENCE_KEY)
        if not records:
            continue
        frame = pd.DataFrame(records).sort_values("epoch")
        curves = [c for c in EMERGENCE_CURVES if c in frame]
        frame = frame[["epoch", *curves]].assign(
            factor=row["factor"], level=row["level"], sd=row[SD_PARAM], teacher=row[TEACHER_KEY_PARAM]
        )
        for curve in curves:
            frame[f"{curve} onset"] = onset(frame["epoch"], frame[curve], EMERGENCE_ONSET)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def emergence_figure(table: pd.DataFrame, path: str | Path, curve: str = "k3.within_sim") -> Path:
    """One panel per varied factor: the mean of `curve` over each level's teachers against epochs of training (solid:
    the lowest SD rate, dashed: the other), from `emergence_by_level`. Written as a PNG to `path`."""
    from matplotlib.figure import Figure

    varied = table.groupby("factor", sort=False)["level"].nunique()
    factors = list(varied[varied > 1].index) or list(varied.index)  # a factor with its base level only: not shown
    fig = Figure(figsize=(3.4 * max(1, len(factors)), 3.2))
    axes = fig.subplots(1, max(1, len(factors)), squeeze=False)[0]
    low = table["sd"].min() if len(table) else 0.0
    for ax, factor in zip(axes, factors):
        part = table[table["factor"] == factor]
        for i, (level, by_level) in enumerate(part.groupby("level", sort=False)):
            for sd, curves in by_level.groupby("sd"):
                mean = curves.groupby("epoch")[curve].mean()
                label = f"{level}, SD {sd:g}"
                ax.plot(mean.index, mean.to_numpy(), color=f"C{i}", ls="-" if sd == low else "--", label=label)
        ax.set_title(factor, fontsize=9)
        ax.set_xlabel("epochs of teacher training", fontsize=8)
        ax.legend(fontsize=6)
    axes[0].set_ylabel(f"{curve} (mean over teachers)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_causes(trials: pd.DataFrame, out_dir: str | Path, results: dict[str, dict] | None = None) -> dict:
    """effects.csv, mediation.csv, forest.png (SD pooled) and summary.json (trial and teacher counts, the primary test
    per factor level) into `out_dir`; with `results` (run id -> result.json) also emergence.csv and emergence.png.
    Returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emergence = emergence_by_level(trials, results or {})
    if len(emergence):
        emergence.to_csv(out / "emergence.csv", index=False)
        emergence_figure(emergence, out / "emergence.png")
    effects = factor_effects(trials)
    effects.to_csv(out / "effects.csv", index=False)
    mediation(trials).to_csv(out / "mediation.csv", index=False)
    forest_plot(effects, out / "forest.png")
    primary = effects[effects["primary"].astype(bool)]
    used = assign_factors(trials)
    summary = {
        "primary": {"outcome": PRIMARY[0], "k": PRIMARY[1], "sd": PRIMARY[2], "adjusted_for": TEACHER_TEST_ACC},
        "n_trials": len(trials),
        "n_trials_used": int(used["run_id"].nunique()) if "run_id" in used else len(used.drop_duplicates()),
        "n_teachers_used": int(used[TEACHER_KEY_PARAM].nunique()) if TEACHER_KEY_PARAM in used else 0,
        "effects": [
            {key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in row.items()}
            for row in primary.drop(columns=["primary"]).to_dict("records")
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
