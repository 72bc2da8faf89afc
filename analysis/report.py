"""`write_report`: a sweep's MLflow runs -> a self-contained report.html, report.md, PNGs and CSV tables."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.document import Image, Note, Section, Table, format_cell, render_html, render_markdown, write_images
from analysis.fit import CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, MIN_EXACT_N, MIN_FIT_N, mean_ci
from analysis.importance import MIN_TRIALS as MIN_IMPORTANCE_TRIALS
from analysis.load import find_sweep_runs, load_results, load_trials
from analysis.paper import PAPER_ACC_RATIO, compare_with_paper, sweep_setting
from analysis.sweep import SweepAnalysis, analyse_sweep
from study.contract import (
    ACC_RATIO,
    DYNAMICS_KEY,
    DYNAMICS_PREFIX,
    FIDELITY_METRICS,
    K_PARAM,
    PHASE_KINDS,
    R2_FINAL,
    SD_PARAM,
    STATUSES,
    SWAP_METRICS,
    TEACHER_DYNAMICS_PREFIXES,
    TEACHER_KEY_PARAM,
)

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
TABLE_DIR = "tables"
N_TEACHERS_SHOWN = 3
N_PARALLEL_PARAMS = 6
SLOPE_CI, BOOT_SLOPE_CI, BOOT_R_CI = "slope CI (OLS)", "slope CI (boot)", "r CI (boot)"
FIT_COLUMNS_SHOWN = ["y", "x", "n", "n_dropped", "r2", "slope", SLOPE_CI, BOOT_SLOPE_CI, "slope_p_adj", "pearson_r",
                     BOOT_R_CI, "spearman_rho", "spearman_p", "note"]  # fmt: skip
GROUP_COLUMNS_SHOWN = ["level", "y", "x", "n", "r2", "slope", SLOPE_CI, "pearson_r", BOOT_R_CI, "spearman_rho",
                       "spearman_p", "note"]  # fmt: skip
TREND_COLUMNS_SHOWN = ["y", "n", "n_trials", "n_levels", "slope", SLOPE_CI, "spearman_rho", "spearman_p", "kendall_tau",
                       "kendall_p", "note"]  # fmt: skip


def write_report(
    experiments: list[str],
    tracking_uri: str | None,
    out_dir: Path,
    log_to_mlflow: bool = False,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Analyse the trials of ``experiments`` and write the report into ``out_dir``; returns report.html's path.

    Writes ``report.html`` (figures as base64 PNGs, inline CSS, no external
    URL), ``report.md`` with ``figures/*.png``, and ``tables/*.csv``. With
    ``log_to_mlflow`` the written files are logged under ``report/`` to every
    sweep parent run (tag ``raptor.role=sweep``) of the experiments; raises
    ``LookupError`` (after writing) when there is none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = load_trials(experiments, tracking_uri)
    analysis = analyse_sweep(trials, trials.attrs["params"], n_resamples=n_resamples, seed=seed)
    comparison = compare_with_paper(analysis) if analysis.counts.finished else None
    sections = [_summary(experiments, tracking_uri, trials, analysis)]
    if comparison is not None:
        chosen = _pick_teachers(analysis.trials, N_TEACHERS_SHOWN)
        results = load_results(chosen["run_id"], tracking_uri)
        sections += [
            _similarity_section(chosen, results),
            _dynamics_section(analysis, chosen, results),
            _fidelity_section(analysis),
            _group_section(analysis.by_sd, analysis.best, f"Fits per SD rate ({SD_PARAM})"),
            _group_section(analysis.by_k, analysis.best, f"Fits per k ({K_PARAM})"),
            _trend_section(analysis),
            _layer_section(analysis, trials.attrs["layer_metrics"]),
            _accuracy_section(analysis),
            _importance_section(analysis),
            Section(
                "Comparison with the paper",
                [
                    f"This sweep: {sweep_setting(analysis.trials)}. The paper's settings differ (last column), so the "
                    "rows compare directions and magnitudes, not replicate them.",
                    Table("This sweep beside the paper's figures", comparison),
                ],
            ),
        ]
    else:
        sections.append(Section("Analysis", [Note("No finished trials: nothing to fit.")]))
    sections.append(_methods(n_resamples, seed))
    title = f"Raptor study report: {', '.join(experiments)}"
    written = [out_dir / "report.html", out_dir / "report.md"]
    written[0].write_text(render_html(title, sections), encoding="utf-8")
    written[1].write_text(render_markdown(title, sections), encoding="utf-8")
    written += write_images(sections, out_dir)
    tables = {
        "trials": trials,
        "fits": analysis.fits,
        "ranking": analysis.ranking,
        "fits_by_sd": analysis.by_sd,
        "fits_by_k": analysis.by_k,
        "sd_trend": analysis.trends,
        "dynamics_by_sd": analysis.dynamics,
        **({"paper_comparison": comparison} if comparison is not None else {}),
    }
    written += _write_tables(tables, out_dir / TABLE_DIR)
    if log_to_mlflow:
        _log_to_mlflow(experiments, tracking_uri, out_dir, written)
    return written[0]


def _summary(
    experiments: list[str], tracking_uri: str | None, trials: pd.DataFrame, analysis: SweepAnalysis
) -> Section:
    counts = analysis.counts
    table = pd.crosstab(trials["sweep"], trials["status"]).reindex(columns=list(STATUSES), fill_value=0)
    table = table.assign(total=table.sum(axis=1)).reset_index()
    blocks: list = [
        f"Experiments: {', '.join(experiments)}. Tracking URI: {_redact(MlflowClient(tracking_uri).tracking_uri)}. "
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.",
        Table("Trials per sweep and status", table),
        Note(
            f"{counts.total} trials: {counts.finished} finished, {counts.failed} failed, {counts.pruned} pruned, "
            f"{counts.running} never finished. Only the {counts.finished} finished trials enter the analysis; "
            f"the other {counts.excluded} are excluded."
        ),
    ]
    missing = {m: int(analysis.trials[m].isna().sum()) for m in FIDELITY_METRICS if m in analysis.trials}
    missing |= {m: counts.finished for m in FIDELITY_METRICS if m not in analysis.trials}
    if counts.finished and any(missing.values()):
        listed = ", ".join(f"{m} in {n}" for m, n in missing.items() if n)
        blocks.append(
            Note(f"Finished trials missing a fidelity metric ({listed}) are dropped from the fits that use it.")
        )
    return Section("Summary", blocks)


def _similarity_section(chosen: pd.DataFrame, results: dict[str, dict]) -> Section:
    """``chosen``: `_pick_teachers` rows; ``results``: their result.json by run id (missing ones absent)."""
    rows = []
    for kind in PHASE_KINDS:
        panels = []
        for row in chosen.itertuples(index=False):
            result = results.get(row.run_id, {})
            if kind in result.get("similarity", {}):
                title = f"{kind} · {_trial_label(row)}"
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


def _dynamics_section(analysis: SweepAnalysis, chosen: pd.DataFrame, results: dict[str, dict]) -> Section:
    """Curves of the ``chosen`` trials (those of the similarity section), swap accuracies and dyn.* means per SD."""
    traces = [
        figures.DynamicsTrace(_trial_label(row), float(row.sd), dynamics["teacher"], dynamics["raptor"])
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
        blocks.append(Table("dyn.* metrics per SD rate: mean ± std (n)", _per_sd(summary)))
    return Section("Dynamics", blocks)


def _fidelity_section(analysis: SweepAnalysis) -> Section:
    blocks: list = [
        "Each fidelity metric regressed (OLS) on each phase-structure metric over the finished trials. "
        "CI (OLS): t-interval; CI (boot): BCa bootstrap interval over resampled trials; slope_p_adj: the slope's "
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
    blocks.append(
        Table("Best predictors of each fidelity metric (by regression R²)", _shown(top, ["rank", *FIT_COLUMNS_SHOWN]))
    )
    blocks.append(Table("All fits (pooled over the sweep)", _shown(analysis.fits, FIT_COLUMNS_SHOWN)))
    return Section("Fidelity vs phase structure", blocks)


def _group_section(fits: pd.DataFrame, best: dict[str, str], title: str) -> Section:
    if fits.empty:
        return Section(title, [Note("The grouping parameter is absent from the trials.")])
    shown = pd.concat([fits[(fits["y"] == y) & (fits["x"] == x)] for y, x in best.items()] or [fits.iloc[:0]])
    return Section(
        title,
        [
            "The pooled best predictor of each fidelity metric, refitted within each level (all pairs in tables/).",
            Table(title, _shown(shown, GROUP_COLUMNS_SHOWN)),
        ],
    )


def _trend_section(analysis: SweepAnalysis) -> Section:
    return Section(
        "Effect of SD rate on similarity and fidelity",
        [
            "Each metric against the SD rate, on one unit per (teacher, k): trials sharing both share their phase "
            "metrics, so they are averaged first. Kendall τ-b tests a monotone trend across the ordered SD rates.",
            Table("Trend with SD rate", _shown(analysis.trends, TREND_COLUMNS_SHOWN)),
        ],
    )


def _layer_section(analysis: SweepAnalysis, layer_metrics: list[str]) -> Section:
    columns = [c for c in layer_metrics if analysis.trials[c].map(lambda v: isinstance(v, list)).any()]
    if not columns or K_PARAM not in analysis.trials:
        return Section("R² per layer by k", [Note("No per-layer R² history (r2.layer*) in the finished trials.")])
    figure = figures.layer_curves(analysis.trials, columns)
    caption = f"Per-layer R² of the Raptor rollout, mean over trials with {CONFIDENCE:.0%} t-interval, by k"
    return Section("R² per layer by k", [Image("r2_per_layer", figures.to_png(figure), caption)])


def _accuracy_section(analysis: SweepAnalysis) -> Section:
    trials = analysis.trials
    if not {K_PARAM, ACC_RATIO} <= set(trials):
        return Section("Accuracy recovery vs k", [Note("No acc.ratio or raptor.k in the finished trials.")])
    rows = []
    for k, group in trials.dropna(subset=[K_PARAM]).groupby(K_PARAM, sort=True):
        mean, lo, hi, n = mean_ci(group[ACC_RATIO])
        rows.append(
            {"k": k, "n": n, "mean": mean, "ci_lo": lo, "ci_hi": hi, "paper": PAPER_ACC_RATIO.get(int(k), np.nan)}
        )
    figure = figures.accuracy_vs_k(trials, PAPER_ACC_RATIO)
    return Section(
        "Accuracy recovery vs k",
        [
            Image("accuracy_vs_k", figures.to_png(figure), "acc.ratio per k with the paper's DINOv2 ViT-B anchors"),
            Table(f"acc.ratio per k: mean and {CONFIDENCE:.0%} t-interval", pd.DataFrame(rows)),
        ],
    )


def _importance_section(analysis: SweepAnalysis) -> Section:
    blocks: list = [
        "fANOVA importances (optuna) of the config params that vary across finished trials, per fidelity metric; "
        "seeds are included as a noise floor."
    ]
    blocks += [Note(f"{imp.target}: no importances ({imp.reason}).") for imp in analysis.importances if not imp.values]
    scored = [imp for imp in analysis.importances if imp.values]
    if scored:
        blocks.append(
            Image("importances", figures.to_png(figures.importance_bars(analysis.importances)), "Importances")
        )
        table = pd.DataFrame(
            [{"target": i.target, "param": p, "importance": v} for i in scored for p, v in i.values.items()]
        )
        blocks.append(Table("Importances", table))
        target = scored[0]
        params = list(target.values)[:N_PARALLEL_PARAMS]
        figure = figures.parallel_coordinates(analysis.trials, params, target.target)
        caption = f"Parallel coordinates of the {len(params)} most important params, coloured by {target.target}"
        blocks.append(Image("parallel_coordinates", figures.to_png(figure), caption))
    return Section("Hyperparameter importances", blocks)


def _methods(n_resamples: int, seed: int) -> Section:
    return Section(
        "Methods",
        [
            f"Fits use complete (x, y) pairs only (n_dropped counts the rest); with fewer than {MIN_FIT_N} pairs or "
            "a constant metric the statistics are undefined and the note says why. OLS via statsmodels (classical "
            f"standard errors, {CONFIDENCE:.0%} t-interval); Pearson and Spearman via scipy (Spearman p from the t "
            f"approximation, flagged when n < {MIN_EXACT_N}); bootstrap: scipy.stats.bootstrap, paired resampling "
            f"of trials, BCa, {n_resamples} resamples, seed {seed}. Trials sharing a teacher share its similarity "
            "structure, so pooled p-values treat them as more independent than they are; the SD trend tests average "
            "them first.",
            "Importances: the finished trials as an in-memory optuna study, distributions inferred from the observed "
            f"ranges, fANOVA with seed {seed}; computed only with at least {MIN_IMPORTANCE_TRIALS} trials.",
        ],
    )


def _shown(fits: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` of a fit table for display, each CI (lo, hi) pair joined into one '[lo, hi]' column."""
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


def _per_sd(summary: pd.DataFrame) -> pd.DataFrame:
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


def _trial_label(row) -> str:
    """'SD · teacher · k' of a `_pick_teachers` row."""
    return f"SD {row.sd:g} · teacher {str(row.teacher)[:8]} · k={row.k}"


def _pick_teachers(trials: pd.DataFrame, count: int) -> pd.DataFrame:
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


def _write_tables(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    """Each table as ``folder/<name>.csv``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = folder / f"{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def _log_to_mlflow(experiments: list[str], tracking_uri: str | None, out_dir: Path, written: list[Path]) -> None:
    run_ids = find_sweep_runs(experiments, tracking_uri)
    if not run_ids:
        raise LookupError(f"report written to {out_dir}, but no sweep parent run (raptor.role=sweep) in {experiments}")
    client = MlflowClient(tracking_uri)
    for run_id in run_ids:
        for path in written:
            folder = path.parent.relative_to(out_dir).as_posix()
            client.log_artifact(
                run_id, str(path), REPORT_ARTIFACT_DIR if folder == "." else f"{REPORT_ARTIFACT_DIR}/{folder}"
            )
        log.info("logged the report to run %s under %s/", run_id, REPORT_ARTIFACT_DIR)


def _redact(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
