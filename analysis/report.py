"""`write_report`: a sweep's MLflow runs -> a self-contained report.html, report.md, PNGs and CSV tables."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.cluster import MIN_TEACHERS
from analysis.document import Image, Note, Section, Table, format_cell, render_html, render_markdown, write_images
from analysis.fit import CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, MIN_EXACT_N, MIN_FIT_N, mean_ci
from analysis.importance import MIN_TRIALS as MIN_IMPORTANCE_TRIALS
from analysis.load import find_sweep_runs, load_results, load_trials
from analysis.paper import PAPER_ACC_RATIO, PAPER_FIT_R2, PAPER_FIT_UNIT, compare_with_paper, sweep_setting
from analysis.sweep import Reading, SweepAnalysis, analyse_sweep
from study.contract import (
    ACC_RATIO,
    DYNAMICS_KEY,
    DYNAMICS_PREFIX,
    EMERGENCE_KEY,
    FIDELITY_METRICS,
    K_PARAM,
    PHASE_KINDS,
    R2_FINAL,
    SD_PARAM,
    SPEC_ARTIFACT,
    STATUSES,
    SWAP_METRICS,
    TEACHER_DYNAMICS_PREFIXES,
    TEACHER_KEY_PARAM,
    TEACHER_SEED_PARAM,
    emergence_metric,
)

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
SUMMARY_FILE = "summary.json"
PARAM_SECTIONS = ("data.", "teacher.", "raptor.", "distill.", "similarity.", "dynamics.", "runtime.", "seed", "name")
TABLE_DIR = "tables"
N_TEACHERS_SHOWN = 3
EMERGENCE_ONSET = 0.9
"""Fraction of a snapshot curve's change from init to end that defines its onset epoch."""
N_PARALLEL_PARAMS = 6
SLOPE_CI, BOOT_SLOPE_CI, BOOT_R_CI = "slope CI (OLS)", "slope CI (boot)", "r CI (boot)"
FIT_COLUMNS_SHOWN = ["y", "x", "n", "n_teachers", "n_dropped", "r2", "slope", SLOPE_CI, BOOT_SLOPE_CI, "slope_p_adj",
                     "pearson_r", BOOT_R_CI, "spearman_rho", "spearman_p", "note"]  # fmt: skip
GROUP_COLUMNS_SHOWN = ["level", "y", "x", "n", "n_teachers", "r2", "slope", SLOPE_CI, "pearson_r", BOOT_R_CI,
                       "spearman_rho", "spearman_p", "note"]  # fmt: skip
TREND_COLUMNS_SHOWN = ["y", "n", "n_trials", "n_levels", "slope", SLOPE_CI, "spearman_rho", "spearman_p", "kendall_tau",
                       "kendall_p", "note"]  # fmt: skip


def write_report(
    experiments: list[str],
    tracking_uri: str | None,
    out_dir: Path,
    log_to_mlflow: bool = False,
    *,
    reading: Reading | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Analyse the trials of ``experiments`` and write the report into ``out_dir``; returns report.html's path.

    Writes ``report.html`` (figures as base64 PNGs, inline CSS, no external
    URL), ``report.md`` with ``figures/*.png``, ``summary.json`` and ``tables/*.csv``.
    The primary relation, the purpose and the scheduler come from the sweep's saved
    spec (``sweep_spec.json`` of its parent run) unless ``reading`` is given. With
    ``log_to_mlflow`` the written files are logged under ``report/`` to every
    sweep parent run (tag ``raptor.role=sweep``) of the experiments; raises
    ``LookupError`` (after writing) when there is none.
    """
    trials = load_trials(experiments, tracking_uri)
    source = (f"Experiments: {', '.join(experiments)}. "
              f"Tracking URI: {_redact(MlflowClient(tracking_uri).tracking_uri)}.")  # fmt: skip
    written = write_trials_report(
        trials,
        out_dir,
        title=f"Raptor study report: {', '.join(experiments)}",
        source=source,
        reading=reading or Reading.from_spec(load_sweep_spec(experiments, tracking_uri)),
        results=lambda run_ids: load_results(run_ids, tracking_uri),
        n_resamples=n_resamples,
        seed=seed,
    )
    if log_to_mlflow:
        _log_to_mlflow(experiments, tracking_uri, Path(out_dir), written)
    return written[0]


def load_sweep_spec(experiments: list[str], tracking_uri: str | None) -> dict | None:
    """The saved spec (``sweep_spec.json``) of the first sweep parent run that has one; None if none has."""
    client = MlflowClient(tracking_uri)
    for run_id in find_sweep_runs(experiments, tracking_uri):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return json.loads(Path(client.download_artifacts(run_id, SPEC_ARTIFACT, tmp)).read_text())
        except (MlflowException, OSError, json.JSONDecodeError) as err:
            log.info("sweep run %s: no readable %s (%s)", run_id, SPEC_ARTIFACT, err)
    return None


def write_trials_report(
    trials: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    source: str,
    reading: Reading,
    results: Callable[[Iterable[str]], dict[str, dict]] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """The report of a trial table (`analysis.load.load_trials` layout, all statuses); returns the written paths.

    ``results`` fetches result.json by run id for the similarity and dynamics figures (without it
    those sections say so). Used by `write_report` and for re-analysing an exported trials table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = trials.attrs.get("params") or [c for c in trials if c.startswith(PARAM_SECTIONS)]
    analysis = analyse_sweep(trials, params, reading=reading, n_resamples=n_resamples, seed=seed)
    comparison = compare_with_paper(analysis) if analysis.counts.finished else None
    sections = [_summary(source, trials, analysis)]
    emergence: list[figures.EmergenceTrace] = []
    if comparison is not None:
        chosen = _pick_teachers(analysis.trials, N_TEACHERS_SHOWN)
        per_level = _one_teacher_per_sd(analysis.trials)
        wanted = list(dict.fromkeys([*chosen["run_id"], *per_level["run_id"]]))
        fetched = results(wanted) if results else {}
        emergence = _emergence_traces(per_level, fetched)
        sections += [
            _primary_section(analysis),
            _levels_section(analysis),
            Section(
                "Comparison with the paper",
                [
                    f"This sweep: {sweep_setting(analysis.trials)}. The paper's settings differ (last column), so the "
                    "rows compare directions and magnitudes, not replicate them.",
                    PAPER_FIT_UNIT,
                    Table("This sweep beside the paper's figures", comparison),
                ],
            ),
            _exploratory_section(analysis),
            _similarity_section(chosen, fetched),
            _emergence_section(emergence, len(per_level)),
            _dynamics_section(analysis, chosen, fetched),
            _fidelity_section(analysis),
            _group_section(analysis.by_sd, analysis.best, f"Naive fits per SD rate ({SD_PARAM})"),
            _group_section(analysis.by_k, analysis.best, f"Naive fits per k ({K_PARAM})"),
            _trend_section(analysis),
            _layer_section(analysis, trials.attrs.get("layer_metrics", [])),
            _accuracy_section(analysis),
            _importance_section(analysis),
        ]
    else:
        sections.append(Section("Analysis", [Note("No finished trials: nothing to fit.")]))
    sections.append(_methods(n_resamples, seed))
    written = [out_dir / "report.html", out_dir / "report.md", out_dir / SUMMARY_FILE]
    written[0].write_text(render_html(title, sections), encoding="utf-8")
    written[1].write_text(render_markdown(title, sections), encoding="utf-8")
    written[2].write_text(json.dumps(summary_record(analysis), indent=2, allow_nan=False), encoding="utf-8")
    written += write_images(sections, out_dir)
    tables = {
        "trials": trials,
        "fits": analysis.fits,
        "ranking": analysis.ranking,
        "fits_by_sd": analysis.by_sd,
        "fits_by_k": analysis.by_k,
        "sd_trend": analysis.trends,
        "dynamics_by_sd": analysis.dynamics,
        "primary_by_sd": analysis.per_sd,
        "primary_by_k": analysis.per_k,
        "secondary_by_sd": analysis.per_sd_secondary,
        "exploratory": analysis.exploratory,
        **({"emergence": emergence_table(emergence)} if emergence else {}),
        **({"paper_comparison": comparison} if comparison is not None else {}),
    }
    written += _write_tables(tables, out_dir / TABLE_DIR)
    return written


def summary_record(analysis: SweepAnalysis) -> dict:
    """summary.json: the primary relation (teacher as the unit), its naive numbers, per-SD and per-k tables, power."""
    reading = analysis.reading
    primary = analysis.primary
    empty = {"predictor": reading.predictor, "target": reading.target, "method": "", "n_trials": 0,
             "n_teachers": 0, "slope": None, "slope_ci": [None, None], "r2": None, "r2_ci": [None, None], "p": None,
             "note": "; ".join(analysis.notes)}  # fmt: skip
    naive = primary.naive.summary() if primary is not None and primary.naive is not None else None
    return {
        "reading": {
            "predictor": reading.predictor,
            "target": reading.target,
            "purpose": reading.purpose,
            "scheduler": reading.scheduler,
            "source": reading.source,
        },  # fmt: skip
        "counts": {
            "finished": analysis.counts.finished,
            "failed": analysis.counts.failed,
            "pruned": analysis.counts.pruned,
            "running": analysis.counts.running,
        },  # fmt: skip
        "notes": analysis.notes,
        "primary": primary.summary() if primary is not None else empty,
        "naive": naive,
        "unadjusted": analysis.primary_unadjusted.summary() if analysis.primary_unadjusted is not None else None,
        "per_sd": _records(analysis.per_sd, {"level": "sd"}, PAPER_FIT_R2),
        "per_k": _records(analysis.per_k, {"level": "k"}, PAPER_ACC_RATIO),
        "per_sd_secondary": _records(analysis.per_sd_secondary, {"level": "sd"}, None),
        "sd_trend": [fit.summary() for fit in analysis.sd_trends],
        "power": analysis.power.summary() if analysis.power is not None else None,
        "exploratory": _records(analysis.exploratory, {}, None),
    }


def _records(table: pd.DataFrame, rename: dict[str, str], paper: dict | None) -> list[dict]:
    """A table as JSON-safe records (NaN -> null); ``paper`` adds the paper's figure for the level."""
    records = []
    for row in table.rename(columns=rename).to_dict(orient="records"):
        clean = {key: _json_value(value) for key, value in row.items()}
        if paper is not None:
            level = clean.get("sd", clean.get("k"))
            figure = paper.get(level) if level is not None else None
            clean["paper"] = figure if figure is None or isinstance(figure, (int, float)) else str(figure)
        records.append(clean)
    return records


def _json_value(value):
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if value is pd.NA or value is None:
        return None
    return value


def _summary(source: str, trials: pd.DataFrame, analysis: SweepAnalysis) -> Section:
    counts = analysis.counts
    table = pd.crosstab(trials["sweep"], trials["status"]).reindex(columns=list(STATUSES), fill_value=0)
    table = table.assign(total=table.sum(axis=1)).reset_index()
    blocks: list = [
        f"{source} Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.",
        _headline(analysis),
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
    blocks += [Note(note) for note in analysis.notes]
    return Section("Summary", blocks)


def _headline(analysis: SweepAnalysis) -> str | Note:
    """One sentence on the pre-registered relation; a demo notice when the sweep has too few teachers."""
    reading, fit = analysis.reading, analysis.primary
    relation = f"{reading.target} ~ {reading.predictor}"
    if fit is None:
        return Note(f"Primary relation {relation}: not fitted ({'; '.join(analysis.notes)}).")
    counts = f"{fit.n_trials} trials from {fit.n_teachers} teachers"
    if not fit.defined:
        return Note(f"Demo, not a finding: primary relation {relation} over {counts}: {fit.note}. No R², CI or "
                    f"p-value is reported with fewer than {MIN_TEACHERS} teachers (docs/science.md §7).")  # fmt: skip
    adjusted = f", adjusted for {', '.join(fit.covariates)}" if fit.covariates else ""
    return (
        f"Primary relation (pre-registered, {reading.source}): {relation}{adjusted}, over {counts}. Slope "
        f"{fit.slope:.3g} [{fit.slope_ci.lo:.3g}, {fit.slope_ci.hi:.3g}] (95% cluster bootstrap over teachers), "
        f"partial R² {fit.r2:.3f} [{fit.r2_ci.lo:.3f}, {fit.r2_ci.hi:.3f}], p = {fit.p:.2g} ({fit.method})."
    )


def _primary_section(analysis: SweepAnalysis) -> Section:
    fit, reading = analysis.primary, analysis.reading
    title = "Primary relation (pre-registered; teacher as the unit)"
    if fit is None:
        return Section(title, [Note("; ".join(analysis.notes) or "not fitted")])
    blocks: list = [
        f"The sweep's declared relation {reading.target} ~ {reading.predictor} (docs/science.md §7). Trials "
        f"sharing a teacher share its similarity, so the teacher ({TEACHER_KEY_PARAM}) is the unit: CIs resample "
        "teachers (keeping all their trials), p comes from a mixed model with a random intercept per teacher (or "
        "OLS on teacher means when it does not converge). The naive column treats trials as independent and is "
        "shown only to make the difference visible.",
    ]
    rows = [_fit_row("teacher as the unit" + (", adjusted" if fit.covariates else ""), fit)]
    if fit.naive is not None:
        rows.append(_naive_row(fit))
    unadjusted = analysis.primary_unadjusted
    if unadjusted is not None and unadjusted is not fit:
        rows.append(_fit_row("teacher as the unit, no covariates", unadjusted))
    blocks.append(Table("Primary relation: cluster-level vs naive", pd.DataFrame(rows)))
    if fit.covariates:
        blocks.append(f"Covariates (the searched knobs that vary; {K_PARAM} as categories): "
                      f"{', '.join(fit.covariates)}. Slope and R² are partial: the predictor's relation with the "
                      "target at fixed covariates.")  # fmt: skip
    if fit.defined:
        scatter = pd.DataFrame(
            [
                {
                    "x": fit.predictor,
                    "y": fit.target,
                    "r2": fit.r2,
                    "slope": fit.slope,
                    "slope_lo": fit.slope_ci.lo,
                    "slope_hi": fit.slope_ci.hi,
                    "n": fit.n_trials,
                }
            ]
        )
        figure = figures.fidelity_scatter(analysis.trials, scatter, band=False)
        blocks.append(Image("primary_relation", figures.to_png(figure),
                            f"{fit.target} against {fit.predictor}, coloured by SD rate; title: cluster-level slope "
                            f"CI and partial R², n = trials"))  # fmt: skip
    if analysis.power is not None:
        blocks.append(analysis.power.statement())
    return Section(title, blocks)


def _fit_row(label: str, fit) -> dict:
    return {"fit": label, "method": fit.method or "–", "n_trials": fit.n_trials, "n_teachers": fit.n_teachers,
            "slope": fit.slope, "slope 95% CI": _ci(fit.slope_ci.lo, fit.slope_ci.hi), "R²": fit.r2,
            "R² 95% CI": _ci(fit.r2_ci.lo, fit.r2_ci.hi), "p": fit.p, "note": fit.note}  # fmt: skip


def _naive_row(fit) -> dict:
    naive = fit.naive
    return {"fit": "naive (trials as independent)", "method": naive.method, "n_trials": naive.n_trials,
            "n_teachers": fit.n_teachers, "slope": naive.slope,
            "slope 95% CI": _ci(naive.slope_ci.lo, naive.slope_ci.hi),
            "R²": naive.r2, "R² 95% CI": _ci(naive.r2_ci.lo, naive.r2_ci.hi), "p": naive.p,
            "note": "pseudo-replicated: CI and p too narrow"}  # fmt: skip


def _ci(lo, hi) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"[{format_cell(lo, 'lo')}, {format_cell(hi, 'hi')}]"


def _levels_section(analysis: SweepAnalysis) -> Section:
    """The primary relation within each SD rate and each k, and acc.ratio per k, teacher as the unit."""
    blocks: list = [
        f"The primary relation refitted within each level; fewer than {MIN_TEACHERS} teachers in a level: no R², "
        "CI or p, only the counts."
    ]
    for table, by, name in ((analysis.per_sd, SD_PARAM, "SD rate"), (analysis.per_k, K_PARAM, "k")):
        if table.empty:
            blocks.append(Note(f"No {by} in the trials: no per-{name} table."))
            continue
        shown = pd.DataFrame({
            by: table["level"], "n_trials": table["n_trials"], "n_teachers": table["n_teachers"],
            "slope": table["slope"], "slope 95% CI": [_ci(*c) for c in table["slope_ci"]],
            "R²": table["r2"], "R² 95% CI": [_ci(*c) for c in table["r2_ci"]], "p": table["p"],
            "note": table["note"],
        })  # fmt: skip
        if "acc_ratio" in table:
            shown["acc.ratio (cluster CI)"] = [
                f"{format_cell(m, 'mean')} {_ci(*c)}" if c[0] is not None else (note or "–")
                for m, c, note in zip(table["acc_ratio"], table["acc_ratio_ci"], table["acc_ratio_note"], strict=True)
            ]
            shown["paper acc.ratio"] = [PAPER_ACC_RATIO.get(int(k), np.nan) for k in table["level"]]
        blocks.append(Table(f"Primary relation per {name} ({by})", shown))
    secondary = analysis.per_sd_secondary
    if len(secondary):
        blocks.append(
            Table(
                f"Same predictor, other targets, per SD rate ({SD_PARAM}; same covariates, teacher as the unit)",
                pd.DataFrame(
                    {
                        "target": secondary["target"],
                        SD_PARAM: secondary["level"],
                        "n_teachers": secondary["n_teachers"],
                        "slope": secondary["slope"],
                        "slope 95% CI": [_ci(*c) for c in secondary["slope_ci"]],
                        "R²": secondary["r2"],
                        "R² 95% CI": [_ci(*c) for c in secondary["r2_ci"]],
                        "p": secondary["p"],
                        "note": secondary["note"],
                    }
                ),  # fmt: skip
            )
        )
    for fit in analysis.sd_trends:
        blocks.append(
            f"SD -> {fit.target} (cluster-level, {K_PARAM} adjusted): "
            + (
                f"slope {fit.slope:.3g} per unit SD [{fit.slope_ci.lo:.3g}, {fit.slope_ci.hi:.3g}], "
                f"p = {fit.p:.2g} ({fit.method}), {fit.n_trials} trials / {fit.n_teachers} teachers."
                if fit.defined
                else f"{fit.note}; {fit.n_trials} trials / {fit.n_teachers} teachers."
            )
        )
    return Section("Primary relation per SD rate and per k", blocks)


def _exploratory_section(analysis: SweepAnalysis) -> Section:
    title = "Exploratory: every phase metric as predictor (teacher as the unit)"
    table = analysis.exploratory
    if table.empty:
        return Section(title, [Note("No predictor could be fitted.")])
    shown = pd.DataFrame({
        "predictor": table["predictor"], "n_teachers": table["n_teachers"], "slope": table["slope"],
        "slope 95% CI": [_ci(*c) for c in table["slope_ci"]], "R²": table["r2"],
        "R² 95% CI": [_ci(*c) for c in table["r2_ci"]], "p": table["p"], "p (Holm)": table["p_holm"],
        "note": table["note"],
    })  # fmt: skip
    return Section(
        title,
        [
            f"Exploratory, not the pre-registered relation: picking the best of {len(table)} predictors "
            f"after seeing the "
            f"data inflates its apparent strength. Target {analysis.reading.target}; p-values Holm-adjusted over the "
            "table's defined fits.",
            Table("Predictors of the primary target, by partial R²", shown),
        ],
    )


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


def _one_teacher_per_sd(trials: pd.DataFrame) -> pd.DataFrame:
    """Per SD rate, one trial (`_pick_teachers` columns) of its lowest-seed teacher with emergence snapshots (else of
    its lowest-seed teacher): whose emergence curves to show. Snapshots belong to the teacher, so every trial of a
    teacher carries them or none does."""
    frame = _pick_teachers(trials, len(trials))
    by_run = trials.set_index("run_id")
    missing = pd.Series(np.nan, index=by_run.index)
    frame = frame.assign(
        untracked=frame["run_id"].map(by_run.get(emergence_metric("val_acc"), missing)).isna(),
        seed=frame["run_id"].map(by_run.get(TEACHER_SEED_PARAM, missing)),
    )
    frame = frame.sort_values(["sd", "untracked", "seed"], na_position="last")
    return frame.drop(columns="untracked").groupby("sd", dropna=False).head(1).reset_index(drop=True)


def emergence_table(traces: Iterable[figures.EmergenceTrace], fraction: float = EMERGENCE_ONSET) -> pd.DataFrame:
    """Per teacher: final validation accuracy and the epoch at which each `figures.EMERGENCE_PANELS` curve has covered
    `fraction` of its change from init to the end of training (`study.science.emergence.onset`)."""
    from study.science.emergence import onset  # here: the module imports torch, which a report rarely needs

    rows = []
    for trace in traces:
        frame = pd.DataFrame(trace.records).sort_values("epoch")
        row = {"teacher": trace.label, "sd": trace.sd, "epochs": int(frame["epoch"].max())}
        for key, _ in figures.EMERGENCE_PANELS:
            if key in frame:
                row[f"{key} init"] = float(frame[key].iloc[0])
                row[f"{key} end"] = float(frame[key].iloc[-1])
                row[f"{key} onset"] = onset(frame["epoch"], frame[key], fraction)
        rows.append(row)
    return pd.DataFrame(rows)


def _emergence_traces(per_level: pd.DataFrame, results: dict[str, dict]) -> list[figures.EmergenceTrace]:
    """The `_one_teacher_per_sd` teachers' snapshots across training (``teacher.track_phases``), where recorded."""
    return [
        figures.EmergenceTrace(_trial_label(row).rsplit(" · k=", 1)[0], float(row.sd), records)
        for row in per_level.itertuples(index=False)
        if (records := results.get(row.run_id, {}).get("teacher", {}).get(EMERGENCE_KEY))
    ]


def _emergence_section(traces: list[figures.EmergenceTrace], n_levels: int) -> Section:
    """Emergence figure and onset table of `_emergence_traces`."""
    if not traces:
        return Section(
            "Emergence of the phases during teacher training",
            [Note("No teacher of this sweep was trained with teacher.track_phases: nothing to show.")],
        )
    blocks: list = [
        f"When does the block structure appear? For one teacher per SD rate ({len(traces)} of {n_levels} "
        "carry snapshots), the layer-layer cosine similarity on a fixed validation subset and its exact DP partition, "
        f"taken at init (epoch 0) and during training (study/science/emergence.py). 'onset': the first snapshot at "
        f"which a curve has covered {EMERGENCE_ONSET:.0%} of its change from init to the end.",
        Image("emergence", figures.to_png(figures.emergence_curves(traces)), "Phase structure across teacher training"),
        Table("Emergence per teacher", emergence_table(traces)),
    ]
    return Section("Emergence of the phases during teacher training", blocks)


def _fidelity_section(analysis: SweepAnalysis) -> Section:
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
    blocks.append(
        Table(
            "Naive: best predictors of each fidelity metric (by trial-level R²)",
            _shown(top, ["rank", *FIT_COLUMNS_SHOWN]),
        )
    )
    blocks.append(
        Table("Naive: all trial-level fits (pooled over the sweep)", _shown(analysis.fits, FIT_COLUMNS_SHOWN))
    )
    return Section("Naive trial-level fits: fidelity vs phase structure (exploratory)", blocks)


def _group_section(fits: pd.DataFrame, best: dict[str, str], title: str) -> Section:
    if fits.empty:
        return Section(title, [Note("The grouping parameter is absent from the trials.")])
    shown = pd.concat([fits[(fits["y"] == y) & (fits["x"] == x)] for y, x in best.items()] or [fits.iloc[:0]])
    return Section(
        title,
        [
            "Naive: the pooled best predictor of each fidelity metric, refitted within each level over trials as "
            "if independent (all pairs in tables/); the teacher-level fits are in the per-level section above.",
            Table(title, _shown(shown, GROUP_COLUMNS_SHOWN)),
        ],
    )


def _trend_section(analysis: SweepAnalysis) -> Section:
    return Section(
        "Effect of SD rate on similarity and fidelity (teacher x k units, exploratory)",
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
            Table(
                f"acc.ratio per k: mean and naive {CONFIDENCE:.0%} t-interval over trials (the cluster-level "
                "CI is in the per-k table above)",
                pd.DataFrame(rows),
            ),
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
            "Unit of replication (docs/science.md §7): the teacher (teacher.key). The primary relation is declared in "
            "the sweep spec (analysis.primary) before the run; its slope and partial R² come from pooled OLS of the "
            "target on the predictor plus the varied searched knobs (raptor.k as categories; teacher params are not "
            f"adjusted for, they define the unit). CIs: percentile cluster bootstrap over teachers, {n_resamples} "
            f"resamples, seed {seed}. p: statsmodels MixedLM with a random intercept per teacher (REML, standardised "
            "columns); when it does not converge, OLS on per-teacher means, and the note says so. Fewer than "
            f"{MIN_TEACHERS} teachers in a group: no R², CI or p. Power: variance components from the pooled fit's "
            "residuals (within-teacher, and between-teacher beyond what the within part explains), the slope's "
            "standard error sqrt((s²_between + s²_within/m) / (G var_x)) with G teachers of m trials, 95% half-width "
            "t(G-2) times that.",
            f"Naive fits (labelled so) use complete (x, y) pairs only; with fewer than {MIN_FIT_N} pairs or a "
            "constant metric they are undefined. OLS via statsmodels (classical standard errors, "
            f"{CONFIDENCE:.0%} t-interval); Pearson and Spearman via scipy (Spearman p from the t approximation, "
            f"flagged when n < {MIN_EXACT_N}); bootstrap: scipy.stats.bootstrap over trials, BCa. They treat trials "
            "as independent, so their CIs and p-values are too narrow; they are exploratory only.",
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
