"""The report's inferential sections: summary and headline, the primary relation, per-level fits, the exploratory
ranking and the methods, all with the teacher as the unit (docs/science.md §7)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from analysis.cluster import ClusterFit
from analysis.document import Note, Section, Table, format_cell
from analysis.importance import MIN_TRIALS as MIN_IMPORTANCE_TRIALS
from analysis.inference import (
    MIN_RELIABLE_TEACHERS,
    MIN_RESIDUAL_DF,
    MIN_TEACHERS,
    MIN_USABLE_SHARE,
    Coefficient,
)
from analysis.sweep import SweepAnalysis
from study.contract import FIDELITY_METRICS, K_PARAM, SD_PARAM, STATUSES, TEACHER_KEY_PARAM

NO_STATISTICS = (
    f"Fewer than {MIN_TEACHERS} teachers: no R², CI or p-value is reported anywhere in this report, naive ones "
    "included (docs/science.md §7); tables show counts and means only."
)


def ci_text(lo, hi) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"[{format_cell(lo, 'lo')}, {format_cell(hi, 'hi')}]"


def coefficient_text(c: Coefficient, n_teachers: int | None = None) -> str:
    """'0.96 [0.79, 1.14], p = 2e-05' (p flagged below `MIN_RELIABLE_TEACHERS` teachers); '–' when undefined."""
    if not c.defined:
        return "–"
    text = f"{c.estimate:.3g} {ci_text(c.ci.lo, c.ci.hi)}"
    if math.isfinite(c.p):
        text += f", p = {c.p:.2g}"
        if n_teachers is not None and n_teachers < MIN_RELIABLE_TEACHERS:
            text += " (unreliable: < 10 teachers)"
    return text


def split_reading(fit: ClusterFit) -> str:
    """Where the relation lives: between teachers, within them, both, or neither (from the two slopes' CIs)."""
    between, within = fit.between, fit.within

    def shown(c: Coefficient) -> bool | None:
        return None if not c.ci.defined else (c.ci.lo > 0 or c.ci.hi < 0)

    b, w = shown(between), shown(within)
    if b is None and w is None:
        return "between/within split not estimable"
    if w is None:
        return "the predictor does not vary within teachers: only the between-teacher slope exists"
    sign = "negative" if within.estimate < 0 else "positive"
    if b and not w:
        return "the relation exists only between teachers (within-teacher slope's CI includes 0)"
    if w and not b:
        return f"only the within-teacher slope ({sign}) is distinguishable from 0; between teachers its CI includes 0"
    if b and w:
        return "the relation holds both between and within teachers"
    return "neither the between- nor the within-teacher slope is distinguishable from 0"


def fit_sentence(fit: ClusterFit) -> str:
    """Slope, between/within slopes, within-SD slope and partial R² of one relation, in words."""
    if not fit.defined:
        return f"{fit.target}: {fit.note}"
    parts = [f"{fit.target}: slope {coefficient_text(fit.pooled, fit.n_teachers)}"]
    if fit.within.defined:
        parts += [
            f"between teachers {coefficient_text(fit.between)}",
            f"within teachers {coefficient_text(fit.within)}",
        ]
    if fit.factor:
        parts.append(f"within {fit.factor} levels (teacher means) {coefficient_text(fit.within_factor)}")
    r2 = (
        f"partial R² {fit.r2:.3f} {ci_text(fit.r2_ci.lo, fit.r2_ci.hi)}"
        if fit.r2_ci.defined
        else "R² CI: " + (fit.note or "not estimable")
    )
    reading = (
        f" ({split_reading(fit)})" if fit.within.defined else " (a teacher-level predictor: between teachers only)"
    )
    return "; ".join(parts) + f"; {r2}{reading}"


def summary_section(
    source: str, trials: pd.DataFrame, analysis: SweepAnalysis, disclosures: Sequence[str] = ()
) -> Section:
    counts = analysis.counts
    table = pd.crosstab(trials["sweep"], trials["status"]).reindex(columns=list(STATUSES), fill_value=0)
    table = table.assign(total=table.sum(axis=1)).reset_index()
    blocks: list = [f"{source} Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.", headline(analysis)]
    if disclosures:
        blocks.append(Note("Disclosures beside the headline: " + " ".join(disclosures)))
    blocks += [
        Table("Trials per sweep and status", table),
        Note(
            f"{counts.total} trials: {counts.finished} finished, {counts.failed} failed, {counts.pruned} pruned, "
            f"{counts.running} never finished. Only the {counts.finished} finished trials enter the analysis; "
            f"the other {counts.excluded} are excluded."
        ),
    ]
    if counts.finished and analysis.n_teachers < MIN_TEACHERS:
        blocks.append(Note(NO_STATISTICS))
    missing = {m: int(analysis.trials[m].isna().sum()) for m in FIDELITY_METRICS if m in analysis.trials}
    if counts.finished and any(missing.values()):
        listed = ", ".join(f"{m} in {n}" for m, n in missing.items() if n)
        blocks.append(Note(f"Finished trials missing a fidelity metric ({listed}) are dropped from the fits using it."))
    absent = [m for m in FIDELITY_METRICS if m not in analysis.trials]
    if counts.finished and absent:
        blocks.append(Note(f"Not logged by this sweep (older runs or another protocol): {', '.join(absent)}."))
    blocks += [Note(note) for note in analysis.notes]
    return Section("Summary", blocks)


def headline(analysis: SweepAnalysis) -> str | Note:
    """The pre-registered relation, final layer and mean over layers; a demo notice with too few teachers."""
    reading, fit = analysis.reading, analysis.primary
    relation = f"{reading.target} ~ {reading.predictor}"
    if fit is None:
        return Note(f"Primary relation {relation}: not fitted ({'; '.join(analysis.notes)}).")
    counts = f"{fit.n_trials} trials from {fit.n_teachers} teacher{'s' if fit.n_teachers != 1 else ''}"
    if not fit.defined:
        return Note(f"Demo, not a finding: primary relation {relation} over {counts}: {fit.note}.")
    adjusted = f", adjusted for {', '.join(fit.covariates)}" if fit.covariates else ""
    text = (
        f"Primary relation (pre-registered, {reading.source}): {relation}{adjusted}, over {counts}; teacher-"
        f"clustered OLS, 95% CI and p from t({fit.n_teachers - 2}). Final layer: {fit_sentence(fit)}."
    )
    if analysis.primary_mean is not None:
        text += f" Mean over layers: {fit_sentence(analysis.primary_mean)}."
    return text


def primary_section(analysis: SweepAnalysis) -> Section:
    fit, reading = analysis.primary, analysis.reading
    title = "Primary relation (pre-registered; teacher as the unit)"
    if fit is None:
        return Section(title, [Note("; ".join(analysis.notes) or "not fitted")])
    blocks: list = [
        f"The sweep's declared relation {reading.target} ~ {reading.predictor} (docs/science.md §7), for the final "
        "layer and the mean over layers. Each slope, its CI and its p come from one model: OLS with a "
        f"teacher-clustered covariance ({TEACHER_KEY_PARAM}), t with G - 2 degrees of freedom. 'between' and "
        "'within' split the predictor into its teacher mean and the deviation from it (within-between model); "
        f"'within {SD_PARAM} levels' regresses teacher means on teacher means with the SD rate as a factor, the "
        "relation SD cannot confound. R²: partial, with a cluster-bootstrap CI. The naive row treats trials as "
        "independent and is shown only for contrast.",
    ]
    rows = []
    for relation in (fit, analysis.primary_mean):
        if relation is not None:
            rows += fit_rows(relation)
    unadjusted = analysis.primary_unadjusted
    if unadjusted is not None and unadjusted is not fit and unadjusted.defined:
        rows.append(_row("pooled, no covariates", unadjusted, unadjusted.pooled))
    blocks.append(Table("Primary relation: one model per row", pd.DataFrame(rows)))
    if fit.covariates:
        blocks.append(
            f"Covariates (the searched knobs that vary; {K_PARAM} as categories): "
            f"{', '.join(fit.covariates)}. Slopes and R² are partial."
        )
    if analysis.power is not None:
        blocks.append(analysis.power.statement())
    return Section(title, blocks)


def fit_rows(fit: ClusterFit) -> list[dict]:
    """One display row per estimator of a `ClusterFit`: pooled, between, within, within-factor, naive."""
    if not fit.defined:
        return [
            {
                "fit": "pooled",
                "target": fit.target,
                "n_trials": fit.n_trials,
                "n_teachers": fit.n_teachers,
                "note": fit.note,
            }
        ]
    rows = [
        _row("pooled", fit, fit.pooled, r2=True),
        _row("between teachers", fit, fit.between),
        _row("within teachers", fit, fit.within),
    ]
    if fit.factor:
        row = _row(f"within {fit.factor} levels (teacher means)", fit, fit.within_factor)
        rows.append(row | {"n_trials": fit.n_teachers, "note": "classical OLS on teacher means"})
    if fit.naive is not None:
        naive = fit.naive
        rows.append(
            {
                "fit": "naive (trials as independent)",
                "target": fit.target,
                "n_trials": naive.n_trials,
                "n_teachers": fit.n_teachers,
                "slope": naive.slope,
                "slope 95% CI": ci_text(naive.slope_ci.lo, naive.slope_ci.hi),
                "p": naive.p,
                "note": "pseudo-replicated: CI and p too narrow",
            }
        )
    return rows


def _row(label: str, fit: ClusterFit, c: Coefficient, r2: bool = False) -> dict:
    row = {
        "fit": label,
        "target": fit.target,
        "n_trials": fit.n_trials,
        "n_teachers": fit.n_teachers,
        "slope": c.estimate,
        "slope 95% CI": ci_text(c.ci.lo, c.ci.hi),
        "p": c.p,
        "df": c.df,
    }
    if r2:
        row |= {"R²": fit.r2, "R² 95% CI": ci_text(fit.r2_ci.lo, fit.r2_ci.hi), "note": fit.note}
    return row


def levels_section(analysis: SweepAnalysis, paper_acc: dict) -> Section:
    """The primary relation within each SD rate and each k, and the accuracy per k, teacher as the unit."""
    blocks: list = [
        f"The primary relation refitted within each level. Fewer than {MIN_TEACHERS} teachers in a level: no R², "
        f"CI or p. Fewer than {MIN_RELIABLE_TEACHERS}: the p is unreliable and the level's verdict is 'not "
        "testable'."
    ]
    for table, by, name in ((analysis.per_sd, SD_PARAM, "SD rate"), (analysis.per_k, K_PARAM, "k")):
        if table.empty:
            blocks.append(Note(f"No {by} in the trials: no per-{name} table."))
            continue
        shown = level_table(table, by)
        if "acc_ratio" in table:
            shown["acc.ratio (teacher CI)"] = [
                f"{format_cell(m, 'mean')} {ci_text(*c)}" if c[0] is not None else f"{format_cell(m, 'mean')} (no CI)"
                for m, c in zip(table["acc_ratio"], table["acc_ratio_ci"], strict=True)
            ]
            shown["paper (other protocol)"] = [paper_acc.get(int(k), np.nan) for k in table["level"]]
        blocks += factored_notes(shown, f"Primary relation per {name} ({by})")
    secondary = analysis.per_sd_secondary
    if len(secondary):
        shown = level_table(secondary, SD_PARAM).assign(target=secondary["target"])
        blocks += factored_notes(shown, f"Same predictor, other targets, per SD rate ({SD_PARAM})")
    for fit in analysis.sd_trends if analysis.n_teachers >= MIN_TEACHERS else ():
        blocks.append(
            f"SD -> {fit.target} ({K_PARAM} adjusted): {fit_sentence(fit) if fit.defined else fit.note}; "
            f"{fit.n_trials} trials / {fit.n_teachers} teachers."
        )
    return Section("Primary relation per SD rate and per k", blocks)


def level_table(table: pd.DataFrame, by: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            by: table["level"],
            "n_trials": table["n_trials"],
            "n_teachers": table["n_teachers"],
            "slope": table["slope"],
            "slope 95% CI": [ci_text(*c) for c in table["slope_ci"]],
            "p": table["p"],
            "R²": table["r2"],
            "R² 95% CI": [ci_text(*c) for c in table["r2_ci"]],
            "note": table["note"],
        }
    )


def drop_empty(table: pd.DataFrame) -> pd.DataFrame:
    """Without the columns no row fills (NaN, None or '–'): a table of undefined fits shows its counts only."""
    empty = [
        c
        for c in table
        if table[c].map(lambda v: v is None or v == "–" or (isinstance(v, float) and math.isnan(v))).all()
    ]
    return table.drop(columns=empty)


def factored_notes(table: pd.DataFrame, caption: str) -> list:
    """The table (`drop_empty`) with notes that repeat on several rows replaced by a pointer, plus one Note per
    repeated text."""
    table = drop_empty(table)
    if "note" not in table or table.empty:
        return [Table(caption, table)]
    parts = table["note"].fillna("").map(lambda n: [p for p in str(n).split("; ") if p])
    counts = pd.Series([p for ps in parts for p in ps]).value_counts()
    repeated = [text for text, n in counts.items() if n > 1]
    if not repeated:
        return [Table(caption, table)]
    keys = {text: f"({i + 1})" for i, text in enumerate(repeated)}
    table = table.assign(note=[" ".join(keys.get(p, p) for p in ps) for ps in parts])
    return [Table(caption, table), *(Note(f"{keys[t]} in {counts[t]} rows: {t}.") for t in repeated)]


def exploratory_section(analysis: SweepAnalysis) -> Section:
    title = "Exploratory: every phase metric as predictor (teacher as the unit)"
    table = analysis.exploratory
    if table.empty:
        return Section(title, [Note("No predictor could be fitted.")])
    shown = pd.DataFrame(
        {
            "predictor": table["predictor"],
            "n_teachers": table["n_teachers"],
            "slope": table["slope"],
            "slope 95% CI": [ci_text(*c) for c in table["slope_ci"]],
            "p": table["p"],
            "p (Holm)": table["p_holm"],
            "slope between": table["slope_between"],
            "slope within": table["slope_within"],
            "R²": table["r2"],
            "R² 95% CI": [ci_text(*c) for c in table["r2_ci"]],
            "note": table["note"],
        }
    )
    intro = (
        f"Exploratory, not the pre-registered relation: picking the best of {len(table)} predictors after seeing "
        f"the data inflates its apparent strength. Target {analysis.reading.target}; p-values Holm-adjusted "
        "over the table's defined fits."
    )
    return Section(title, [intro, *factored_notes(shown, "Predictors of the primary target, by partial R²")])


def methods_section(n_resamples: int, seed: int) -> Section:
    return Section(
        "Methods",
        [
            "Unit of replication (docs/science.md §7): the teacher (teacher.key). The primary relation is declared in "
            "the sweep spec before the run. Every teacher-level slope, its 95% CI and its p come from one model: "
            "statsmodels OLS with a teacher-clustered (CR1) covariance, the t reference with G - 2 degrees of "
            f"freedom (G teachers); with fewer than {MIN_RELIABLE_TEACHERS} teachers the p is flagged unreliable. "
            "Between- and within-teacher slopes: the predictor split into its teacher mean and the deviation from it, "
            "both in one clustered OLS with the covariates. Within SD levels: OLS on one row per teacher (teacher "
            "means) with the SD rate as a factor, classical t with its residual df. Covariates: the searched knobs "
            "that vary (raptor.k as categories); teacher params are not adjusted for, they define the unit. "
            f"Partial R²: percentile cluster bootstrap over teachers, {n_resamples} resamples, seed {seed}; a resample "
            f"whose distinct rows minus the design's rank leave fewer than {MIN_RESIDUAL_DF} residual degree of "
            "freedom fits exactly and is dropped (counted in the note), and with fewer than "
            f"{MIN_USABLE_SHARE:.0%} usable resamples the CI is 'not estimable'. Means over teachers: the mean of "
            "teacher means with a t(G - 1) interval. Fewer than "
            f"{MIN_TEACHERS} teachers in a group: no R², CI or p. Power: variance components from the pooled fit's "
            "residuals, the slope's standard error sqrt((s²_between + s²_within/m) / (G var_x)), 95% half-width "
            "t(G-2) times that.",
            "Naive fits (labelled so) treat trials as independent: statsmodels OLS with classical standard errors, "
            "Pearson and Spearman via scipy, BCa bootstrap over trials. Their CIs and p-values are too narrow; they "
            f"are exploratory and are not shown with fewer than {MIN_TEACHERS} teachers.",
            "Importances: the finished trials as an in-memory optuna study, fANOVA with seed "
            f"{seed}; computed only with at least {MIN_IMPORTANCE_TRIALS} finished trials carrying the target.",
        ],
    )
