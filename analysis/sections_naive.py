"""The report's naive and descriptive sections: trial-level fits (exploratory, labelled naive), trends, per-layer
curves, accuracy per k and importances. With fewer than `MIN_TEACHERS` teachers none of them prints an R², CI or p
(docs/science.md §7)."""

from __future__ import annotations

import pandas as pd

from analysis import figures
from analysis.document import Image, Note, Section, Table, format_cell
from analysis.fit import CONFIDENCE, mean_ci
from analysis.inference import MIN_TEACHERS
from analysis.sections import NO_STATISTICS, factored_notes
from analysis.sweep import SweepAnalysis
from study.contract import ACC_RATIO, K_PARAM

SLOPE_CI, BOOT_SLOPE_CI, BOOT_R_CI = "slope CI (OLS)", "slope CI (boot)", "r CI (boot)"
FIT_COLUMNS_SHOWN = [
    "y",
    "x",
    "n",
    "n_teachers",
    "n_dropped",
    "r2",
    "slope",
    SLOPE_CI,
    BOOT_SLOPE_CI,
    "slope_p_adj",
    "pearson_r",
    BOOT_R_CI,
    "spearman_rho",
    "spearman_p",
    "note",
]
GROUP_COLUMNS_SHOWN = [
    "level",
    "y",
    "x",
    "n",
    "n_teachers",
    "r2",
    "slope",
    SLOPE_CI,
    "pearson_r",
    BOOT_R_CI,
    "spearman_rho",
    "spearman_p",
    "note",
]
TREND_COLUMNS_SHOWN = [
    "y",
    "n",
    "n_trials",
    "n_levels",
    "slope",
    SLOPE_CI,
    "spearman_rho",
    "spearman_p",
    "kendall_tau",
    "kendall_p",
    "note",
]
STATISTICS = (
    "r2",
    "slope_lo",
    "slope_hi",
    "slope_p",
    "slope_p_adj",
    "pearson_p",
    "spearman_p",
    "kendall_p",
    "boot_slope_lo",
    "boot_slope_hi",
    "boot_r_lo",
    "boot_r_hi",
)
"""Columns of a naive table blanked in rows with fewer than `MIN_TEACHERS` teachers."""


def naive_sections(analysis: SweepAnalysis, layer_metrics: list[str], paper_acc: dict) -> list[Section]:
    """The naive and descriptive sections, or one section saying why they are withheld."""
    if analysis.n_teachers < MIN_TEACHERS:
        return [
            Section("Naive trial-level fits (withheld)", [Note(NO_STATISTICS)]),
            layer_section(analysis, layer_metrics, band=False),
            accuracy_section(analysis, paper_acc, False),
            importance_section(analysis),
        ]
    return [
        fidelity_section(analysis),
        group_section(analysis.by_sd, analysis.best, "Naive fits per SD rate"),
        group_section(analysis.by_k, analysis.best, "Naive fits per k"),
        trend_section(analysis),
        layer_section(analysis, layer_metrics),
        accuracy_section(analysis, paper_acc),
        importance_section(analysis),
    ]


def withhold(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a naive table with fewer than `MIN_TEACHERS` teachers lose their R², CIs and p-values."""
    if "n_teachers" not in table:
        return table
    few = table["n_teachers"].fillna(0) < MIN_TEACHERS
    table = table.copy()
    table.loc[few, [c for c in STATISTICS if c in table]] = float("nan")
    if few.any() and "note" in table:
        table.loc[few, "note"] = f"fewer than {MIN_TEACHERS} teachers: no R², CI or p"
    return table


def fidelity_section(analysis: SweepAnalysis) -> Section:
    blocks: list = [
        "Naive and exploratory: each fidelity metric regressed (OLS) on each phase-structure metric over the "
        "finished trials as if they were independent (they are not: trials share teachers), predictors ranked by "
        "R² after seeing the data. Not evidence for a relation; see the primary relation. CI (OLS): t-interval; "
        "CI (boot): BCa bootstrap interval over resampled trials; slope_p_adj: the slope's "
        "p-value, Benjamini-Hochberg adjusted over this table."
    ]
    best = analysis.ranking[(analysis.ranking["rank"] == 1) & analysis.ranking["r2"].notna()]
    if len(best):
        figure = figures.fidelity_scatter(analysis.trials, best)
        caption = (
            f"Each fidelity metric against its best predictor: OLS fit with {CONFIDENCE:.0%} band, coloured by SD rate"
        )
        blocks.append(Image("fidelity_vs_similarity", figures.to_png(figure), caption))
    else:
        blocks.append(Note("No fit is defined (too few trials or constant metrics); see the notes in the table."))
    top = analysis.ranking[analysis.ranking["rank"] <= 3]
    blocks += factored_notes(
        shown(top, ["rank", *FIT_COLUMNS_SHOWN]), "Naive: best predictors of each fidelity metric (by trial-level R²)"
    )
    blocks.append(Note("All trial-level fits (every fidelity x phase metric pair): tables/fits.csv."))
    return Section("Naive trial-level fits: fidelity vs phase structure (exploratory)", blocks)


def group_section(fits: pd.DataFrame, best: dict[str, str], title: str) -> Section:
    if fits.empty:
        return Section(title, [Note("The grouping parameter is absent from the trials.")])
    picked = pd.concat([fits[(fits["y"] == y) & (fits["x"] == x)] for y, x in best.items()] or [fits.iloc[:0]])
    intro = (
        "Naive: the pooled best predictor of each fidelity metric, refitted within each level over trials as "
        "if independent (all pairs in tables/); the teacher-level fits are in the per-level section above."
    )
    return Section(title, [intro, *factored_notes(shown(picked, GROUP_COLUMNS_SHOWN), title)])


def trend_section(analysis: SweepAnalysis) -> Section:
    return Section(
        "Effect of SD rate on similarity and fidelity (teacher x k units, exploratory)",
        [
            "Each metric against the SD rate, on one unit per (teacher, k): trials sharing both share their phase "
            "metrics, so they are averaged first. Kendall τ-b tests a monotone trend across the ordered SD rates.",
            *factored_notes(shown(analysis.trends, TREND_COLUMNS_SHOWN), "Trend with SD rate"),
        ],
    )


def layer_section(analysis: SweepAnalysis, layer_metrics: list[str], band: bool = True) -> Section:
    columns = [
        c for c in layer_metrics if c in analysis.trials and analysis.trials[c].map(lambda v: isinstance(v, list)).any()
    ]
    if not columns or K_PARAM not in analysis.trials:
        return Section("R² per layer by k", [Note("No per-layer R² history (r2.layer*) in the finished trials.")])
    figure = figures.layer_curves(analysis.trials, columns, band=band)
    caption = (
        "Per-layer R² of the Raptor rollout, mean over trials"
        + (f" with {CONFIDENCE:.0%} t-interval (naive: over trials)" if band else "")
        + ", by k"
    )
    return Section("R² per layer by k", [Image("r2_per_layer", figures.to_png(figure), caption)])


def accuracy_section(analysis: SweepAnalysis, paper_acc: dict, intervals: bool = True) -> Section:
    trials = analysis.trials
    if not {K_PARAM, ACC_RATIO} <= set(trials):
        return Section("Accuracy recovery vs k", [Note("No acc.ratio or raptor.k in the finished trials.")])
    rows = []
    for k, group in trials.dropna(subset=[K_PARAM]).groupby(K_PARAM, sort=True):
        mean, lo, hi, n = mean_ci(group[ACC_RATIO])
        row = {"k": k, "n": n, "mean": mean, "paper (other protocol)": paper_acc.get(int(k), float("nan"))}
        rows.append(row | ({"ci_lo": lo, "ci_hi": hi} if intervals else {}))
    figure = figures.accuracy_vs_k(trials, paper_acc, band=intervals)
    caption = (
        f"acc.ratio per k: mean and naive {CONFIDENCE:.0%} t-interval over trials (the teacher-level CI is in "
        "the per-k table above)"
        if intervals
        else "acc.ratio per k: mean over trials"
    )
    figure_caption = "acc.ratio per k beside the paper's k-table (a different probe protocol: see the comparison)"
    return Section(
        "Accuracy recovery vs k",
        [Image("accuracy_vs_k", figures.to_png(figure), figure_caption), Table(caption, pd.DataFrame(rows))],
    )


def importance_section(analysis: SweepAnalysis) -> Section:
    blocks: list = [
        "fANOVA importances (optuna) of the config params that vary across finished trials, per fidelity metric; "
        "seeds are included as a noise floor."
    ]
    missing = [imp for imp in analysis.importances if not imp.values]
    by_reason: dict[str, list[str]] = {}
    for imp in missing:
        by_reason.setdefault(imp.reason, []).append(imp.target)
    blocks += [Note(f"No importances for {', '.join(targets)}: {reason}.") for reason, targets in by_reason.items()]
    scored = [imp for imp in analysis.importances if imp.values]
    if scored:  # a table, not a figure: the same numbers, and results/ stays small (results/README.md)
        table = pd.DataFrame(
            [{"target": i.target, "param": p, "importance": v} for i in scored for p, v in i.values.items()]
        )
        blocks.append(Table("Importances", table))
    return Section("Hyperparameter importances", blocks)


def shown(fits: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` of a naive fit table for display (rows with too few teachers withheld), each CI (lo, hi) pair
    joined into one '[lo, hi]' column."""
    fits = withhold(fits)
    pairs = {
        SLOPE_CI: ("slope_lo", "slope_hi"),
        BOOT_SLOPE_CI: ("boot_slope_lo", "boot_slope_hi"),
        BOOT_R_CI: ("boot_r_lo", "boot_r_hi"),
    }
    intervals = {
        name: [
            f"[{format_cell(lo, lo_col)}, {format_cell(hi, hi_col)}]" if pd.notna(lo) else "–"
            for lo, hi in zip(fits[lo_col], fits[hi_col], strict=True)
        ]
        for name, (lo_col, hi_col) in pairs.items()
        if name in columns
    }
    return fits.assign(**intervals)[columns]
