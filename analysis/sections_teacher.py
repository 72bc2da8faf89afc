"""The report's teacher-level sections: similarity matrices, emergence of the phases over training (all teachers),
per-layer fidelity by SD rate, and residual-stream dynamics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import figures
from analysis.document import Image, Note, Section, Table, format_cell
from analysis.emergence import EMERGENCE_ONSET, emergence_by_sd, emergence_table
from analysis.inference import mean_ci_teachers
from analysis.sections import ci_text, factored_notes
from analysis.sweep import SweepAnalysis
from study.contract import (
    DYNAMICS_KEY,
    DYNAMICS_PREFIX,
    EMERGENCE_KEY,
    K_PARAM,
    LAYER_METRIC_PREFIXES,
    PHASE_KINDS,
    R2_FINAL,
    SD_PARAM,
    SWAP_METRICS,
    TEACHER_DYNAMICS_PREFIXES,
    TEACHER_KEY_PARAM,
    layer_metric,
)

LAYER_PANELS = tuple(layer_metric(g, p) for p in reversed(LAYER_METRIC_PREFIXES) for g in ("all", "cls", "patch"))
"""Per-layer histories tabulated by SD rate: pooled then strict, all tokens, cls, patch."""
FIGURE_PANELS = (layer_metric("all", LAYER_METRIC_PREFIXES[1]), layer_metric("cls", LAYER_METRIC_PREFIXES[1]),
                 layer_metric("all", LAYER_METRIC_PREFIXES[0]))  # fmt: skip
"""The three drawn: pooled all tokens, pooled cls, strict all tokens (one row of panels)."""


def similarity_section(chosen: pd.DataFrame, results: dict[str, dict]) -> Section:
    """``chosen``: `_pick_teachers` rows; ``results``: their result.json by run id (missing ones absent)."""
    rows = []
    for kind in PHASE_KINDS:
        panels = []
        for row in chosen.itertuples(index=False):
            result = results.get(row.run_id, {})
            if kind in result.get("similarity", {}):
                title = f"{kind} · {trial_label(row)}"
                bounds = result.get("partition", {}).get("phase_bounds", [])
                panels.append(figures.SimilarityPanel(title, np.asarray(result["similarity"][kind], float), bounds))
        if panels:
            rows.append(panels)
    blocks: list = [
        "Layer-layer similarity of teachers spanning the SD rates, one column per teacher (result.json of its trial "
        "with the largest k), one row and colour scale per kind; white squares are the phases of that trial's "
        "partition."
    ]
    if len(results) < len(chosen):
        blocks.append(
            Note(f"result.json missing or unreadable for {len(chosen) - len(results)} of {len(chosen)} selected runs.")
        )
    if rows:
        figure = figures.similarity_grid(rows)
        blocks.append(Image("similarity", figures.to_png(figure), "Similarity matrices with phase boundaries"))
    return Section("Layer-layer similarity and phases", blocks)


def dynamics_section(analysis: SweepAnalysis, chosen: pd.DataFrame, results: dict[str, dict]) -> Section:
    """Curves of the ``chosen`` trials (those of the similarity section), swap accuracies and dyn.* means per SD."""
    traces = [
        figures.DynamicsTrace(trial_label(row), float(row.sd), dynamics["teacher"], dynamics["raptor"])
        for row in chosen.itertuples(index=False)
        if (dynamics := results.get(row.run_id, {}).get(DYNAMICS_KEY))
    ]
    summary = analysis.dynamics
    dyn_columns = [c for c in analysis.trials if c.startswith(DYNAMICS_PREFIX)]
    with_metrics = int(analysis.trials[dyn_columns].notna().any(axis=1).sum())
    if not traces and summary.empty:
        return Section(
            "Dynamics",
            [Note("No finished trial carries dynamics (older runs, or dynamics.enabled: false): nothing to show.")],
        )
    blocks: list = [
        f"Residual-stream dynamics (study/dynamics_report.py) of teacher and Raptor on a test subsample; "
        f"{with_metrics} of {analysis.counts.finished} finished trials carry dyn.* metrics. Teacher-only metrics "
        f"({', '.join(p + '*' for p in TEACHER_DYNAMICS_PREFIXES)}) are averaged per teacher first, so their n "
        "counts teachers; dyn.raptor.* counts trials."
    ]
    if len(traces) < len(chosen):
        blocks.append(Note(f"{len(chosen) - len(traces)} of {len(chosen)} selected trials have no dynamics curves."))
    if traces:
        caption = "γ_cls, cls angular speed and update stable rank per layer (teacher solid, Raptor dashed)"
        blocks.append(Image("dynamics", figures.to_png(figures.dynamics_curves(traces)), caption))
    swaps = summary[summary["metric"].isin(SWAP_METRICS)]
    if len(swaps):
        caption = "Teacher accuracy with adjacent layers swapped inside a phase vs across a boundary, mean ± std"
        blocks.append(Image("layer_swaps", figures.to_png(figures.swap_accuracy(swaps)), caption))
    else:
        blocks.append(Note("No layer-swap accuracies (dyn.swap.*) in the finished trials."))
    if len(summary):
        blocks.append(Table("dyn.* metrics per SD rate: mean ± std (n)", per_sd(summary)))
    return Section("Dynamics", blocks)


def one_trial_per_teacher(trials: pd.DataFrame) -> pd.DataFrame:
    """`pick_teachers` rows for every teacher (its trial with the largest k): whose snapshots to read. Snapshots
    belong to the teacher, so every trial of a teacher carries them or none does."""
    return pick_teachers(trials, len(trials))


def emergence_traces(per_teacher: pd.DataFrame, results: dict[str, dict]) -> list[figures.EmergenceTrace]:
    """Every teacher's snapshots across training (``teacher.track_phases``), where recorded."""
    return [
        figures.EmergenceTrace(trial_label(row).rsplit(" · k=", 1)[0], float(row.sd), records)
        for row in per_teacher.itertuples(index=False)
        if (records := results.get(row.run_id, {}).get("teacher", {}).get(EMERGENCE_KEY))
    ]


def emergence_section(traces: list[figures.EmergenceTrace], n_teachers: int) -> Section:
    """Emergence figure (every teacher), onset per SD rate over all its teachers with t-intervals."""
    title = "Emergence of the phases during teacher training"
    if not traces:
        return Section(
            title, [Note("No teacher's snapshots (teacher.track_phases) are readable here: nothing to show.")]
        )
    by_sd = emergence_by_sd(emergence_table(traces))
    shown = by_sd.assign(**{c: [ci_text(*v) if v else "–" for v in by_sd[c]] for c in by_sd if c.endswith(" CI")})
    blocks: list = [
        f"When does the block structure appear? For every teacher with snapshots ({len(traces)} of {n_teachers}), the "
        "layer-layer cosine similarity on a fixed validation subset and its exact DP partition, taken at init (epoch "
        "0) and during training (study/science/emergence.py). 'onset': the first snapshot at which a curve has "
        f"covered {EMERGENCE_ONSET:.0%} of its change from init to the end; per SD rate the mean over its teachers "
        "with a t-interval (the teacher is the unit).",
        Image("emergence", figures.to_png(figures.emergence_curves(traces)), "Phase structure across teacher training"),
        Table("Onset per SD rate (mean over teachers, 95% t-interval)", shown),
        Note("Per teacher: tables/emergence.csv."),
    ]
    return Section(title, blocks)


def layer_fidelity_section(trials: pd.DataFrame) -> Section:
    """Per-layer fidelity by SD rate (the whole trajectory, docs/science.md §7): a figure and first/last-layer rows."""
    title = "Fidelity per layer by SD rate"
    columns = [c for c in LAYER_PANELS if c in trials and trials[c].map(lambda v: isinstance(v, list)).any()]
    if not columns or SD_PARAM not in trials or TEACHER_KEY_PARAM not in trials:
        return Section(title, [Note("No per-layer R² history or no SD rate in the finished trials.")])
    rows = []
    for column in columns:
        for sd, group in trials.dropna(subset=[SD_PARAM]).groupby(SD_PARAM, sort=True):
            lists = group[column].map(lambda v: v if isinstance(v, list) else None).dropna()
            if lists.empty:
                continue
            frame = pd.DataFrame(lists.tolist(), index=group.loc[lists.index, TEACHER_KEY_PARAM].to_numpy())
            per_teacher = frame.groupby(level=0).mean()
            last = per_teacher.shape[1] - 1
            for layer in (0, last):
                mean, lo, hi, note = mean_ci_teachers(per_teacher[layer].to_numpy(float))
                rows.append(
                    {
                        "metric": column,
                        SD_PARAM: sd,
                        "layer": layer + 1,
                        "n_teachers": len(per_teacher),
                        "mean": mean,
                        "95% CI": ci_text(lo, hi),
                        "note": note,
                    }
                )
    caption = (
        "Raptor fidelity per teacher layer, mean over teachers (teacher means first) per SD rate; the claim "
        "concerns the whole trajectory, not only the last layer"
    )
    if trials[SD_PARAM].nunique() < 2:
        return Section(title, factored_notes(pd.DataFrame(rows), "First and last layer (one SD rate)"))
    drawn = [c for c in FIGURE_PANELS if c in columns] or columns[:3]
    figure = figures.layer_by_level(trials, drawn, SD_PARAM, TEACHER_KEY_PARAM)
    return Section(
        title,
        [
            Image("r2_per_layer_by_sd", figures.to_png(figure), caption),
            *factored_notes(pd.DataFrame(rows), "First and last layer per SD rate (t-interval over teachers)"),
        ],
    )


def per_sd(summary: pd.DataFrame) -> pd.DataFrame:
    """`dynamics_by_sd` rows as one row per metric, one 'mean ± std (n=..)' column per SD rate."""
    cells = summary.assign(
        cell=[
            f"{format_cell(mean, 'mean')}{'' if pd.isna(std) else ' ± ' + format_cell(std, 'std')} (n={n})"
            for mean, std, n in zip(summary["mean"], summary["std"], summary["n"], strict=True)
        ],
        column=[f"SD {sd:g}" for sd in summary["sd"]],
    )
    table = cells.pivot(index="metric", columns="column", values="cell")
    return table[[f"SD {sd:g}" for sd in sorted(summary["sd"].unique())]].reset_index()


def trial_label(row) -> str:
    """'SD · teacher · k' of a `_pick_teachers` row."""
    return f"SD {row.sd:g} · teacher {str(row.teacher)[:8]} · k={row.k}"


def pick_teachers(trials: pd.DataFrame, count: int) -> pd.DataFrame:
    """Up to ``count`` teachers evenly spread over the SD rates; per teacher, its trial with the largest k."""
    frame = pd.DataFrame(
        {
            "run_id": trials["run_id"],
            "teacher": trials.get(TEACHER_KEY_PARAM, trials["run_id"]),
            "sd": trials.get(SD_PARAM, np.nan),
            "k": trials.get(K_PARAM, pd.NA),
            "fidelity": trials.get(R2_FINAL, np.nan),
        }
    )
    per_teacher = frame.sort_values(["k", "fidelity"], ascending=False, na_position="last").groupby("teacher").head(1)
    per_teacher = per_teacher.sort_values(["sd", "teacher"], na_position="last").reset_index(drop=True)
    picks = np.unique(np.linspace(0, len(per_teacher) - 1, min(count, len(per_teacher))).round().astype(int))
    return per_teacher.iloc[picks]
