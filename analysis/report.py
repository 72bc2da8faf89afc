"""`write_report`: a sweep's MLflow runs -> a self-contained report.html, report.md, PNGs, summary.json and CSV tables.

The sections live in `analysis.sections` (inference), `analysis.sections_teacher` (teacher-level figures),
`analysis.sections_naive` (naive and descriptive) and `analysis.paper` / `analysis.paper_rows` (the replication
table); this module assembles and writes them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.cluster import DEFAULT_RESAMPLES, DEFAULT_SEED
from analysis.document import Note, Section, Table, render_html, render_markdown, write_images
from analysis.emergence import emergence_table
from analysis.inference import MIN_TEACHERS
from analysis.load import find_sweep_runs, load_results, load_trials
from analysis.paper import PAPER_ACC_RATIO, compare_with_paper, sweep_setting
from analysis.paper_rows import paper_measurement_rows, raptor_r2_table
from analysis.sections import (
    NO_STATISTICS,
    exploratory_section,
    factored_notes,
    levels_section,
    methods_section,
    primary_section,
    summary_section,
)
from analysis.sections_naive import naive_sections
from analysis.sections_teacher import (
    dynamics_section,
    emergence_section,
    emergence_traces,
    layer_fidelity_section,
    one_trial_per_teacher,
    pick_teachers,
    similarity_section,
)
from analysis.sweep import Reading, SweepAnalysis, analyse_sweep
from study.contract import SPEC_ARTIFACT

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
SUMMARY_FILE = "summary.json"
PARAM_SECTIONS = (
    "data.",
    "teacher.",
    "raptor.",
    "distill.",
    "partition.",
    "similarity.",
    "dynamics.",
    "runtime.",
    "seed",
    "name",
)
TABLE_DIR = "tables"
N_TEACHERS_SHOWN = 3


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
    source = f"Experiments: {', '.join(experiments)}. Tracking URI: {_redact(MlflowClient(tracking_uri).tracking_uri)}."
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
    disclosures: Sequence[str] = (),
) -> list[Path]:
    """The report of a trial table (`analysis.load.load_trials` layout, all statuses); returns the written paths.

    ``results`` fetches result.json by run id for the similarity, emergence and dynamics figures (without it
    those sections say so). ``disclosures`` are printed beside the headline (how the design and the predictor were
    chosen). Used by `write_report` and for re-analysing an exported trials table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = trials.attrs.get("params") or [c for c in trials if c.startswith(PARAM_SECTIONS)]
    analysis = analyse_sweep(trials, params, reading=reading, n_resamples=n_resamples, seed=seed)
    sections = [summary_section(source, trials, analysis, disclosures)]
    tables: dict[str, pd.DataFrame] = {}
    comparison = pd.DataFrame()
    if analysis.counts.finished:
        comparison = pd.concat(
            [compare_with_paper(analysis), paper_measurement_rows(analysis.trials)], ignore_index=True
        )
        if analysis.n_teachers < MIN_TEACHERS:
            comparison = paper_measurement_rows(analysis.trials)  # means only (docs/science.md §7)
        chosen = pick_teachers(analysis.trials, N_TEACHERS_SHOWN)
        every = one_trial_per_teacher(analysis.trials)
        wanted = list(dict.fromkeys([*chosen["run_id"], *every["run_id"]]))
        fetched = results(wanted) if results else {}
        emergence = emergence_traces(every, fetched)
        r2_table = raptor_r2_table(analysis.trials)
        comparison_section = Section(
            "Comparison with the paper",
            [
                f"This sweep: {sweep_setting(analysis.trials)}. The paper's settings differ, so the rows compare "
                "directions and magnitudes. Fidelity rows show the final layer and the mean over layers. "
                "'evidence' says which rows are independent: SD moves similarity and fidelity together, so the "
                "first rows restate one fact and the fit within SD levels is the independent test of the relation.",
                Table("This sweep beside the paper's figures", comparison),
            ],
        )
        inferential = [comparison_section, primary_section(analysis)]
        if analysis.n_teachers < MIN_TEACHERS:
            blocks: list = [Note(NO_STATISTICS)]
            if len(comparison):
                blocks.append(Table("The paper's own measurements (means only)", comparison))
            inferential = [Section("Comparison with the paper and the primary relation", blocks)]
        sections += [
            *inferential,
            levels_section(analysis, PAPER_ACC_RATIO),
            raptor_r2_section(r2_table),
            layer_fidelity_section(analysis.trials),
            *([exploratory_section(analysis)] if analysis.n_teachers >= MIN_TEACHERS else []),
            similarity_section(chosen, fetched),
            emergence_section(emergence, len(every)),
            dynamics_section(analysis, chosen, fetched),
            *naive_sections(analysis, trials.attrs.get("layer_metrics", []), PAPER_ACC_RATIO),
        ]
        tables |= {
            "paper_comparison": comparison,
            **({"emergence": emergence_table(emergence)} if emergence else {}),
            **(
                {"raptor_r2_by_sd": r2_table.drop(columns=[c for c in r2_table if c.endswith(" record")])}
                if len(r2_table)
                else {}
            ),
        }
    else:
        sections.append(Section("Analysis", [Note("No finished trials: nothing to fit.")]))
    sections.append(methods_section(n_resamples, seed))
    written = [out_dir / "report.html", out_dir / "report.md", out_dir / SUMMARY_FILE]
    written[0].write_text(render_html(title, sections), encoding="utf-8")
    written[1].write_text(render_markdown(title, sections), encoding="utf-8")
    record = summary_record(analysis) | {"disclosures": list(disclosures), "replication": _records(comparison, {})}
    written[2].write_text(json.dumps(record, indent=2, allow_nan=False), encoding="utf-8")
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
        **tables,
    }
    written += _write_tables(tables, out_dir / TABLE_DIR)
    return written


def raptor_r2_section(table: pd.DataFrame) -> Section:
    """Per-SD Raptor R^2 (pooled and strict, all / cls / patch, final layer and mean over layers)."""
    title = "Raptor R² per SD rate (the paper's per-SD figure)"
    if table.empty:
        return Section(title, [Note("No per-SD Raptor R² (no SD rate or teacher key in the trials).")])
    shown = table.drop(columns=[c for c in table if c.endswith(" record")])
    return Section(
        title,
        [
            "The paper's ~0.88 (SD 0) and ~0.94 (SD 0.6) are most likely the Raptor's own reconstruction R² per SD "
            "level (docs/science.md §7): the mean of teacher means per SD rate, with a t-interval over teachers.",
            *factored_notes(shown, "Raptor R² per SD rate, final layer and mean over layers"),
        ],
    )


def summary_record(analysis: SweepAnalysis) -> dict:
    """summary.json: the primary relation (teacher as the unit; final layer and mean over layers), its naive numbers,
    per-SD and per-k tables, SD trends and power. The other targets per SD and the exploratory ranking are in
    tables/secondary_by_sd.csv and tables/exploratory.csv."""
    reading = analysis.reading
    primary = analysis.primary
    empty = {
        "predictor": reading.predictor,
        "target": reading.target,
        "method": "",
        "n_trials": 0,
        "n_teachers": 0,
        "slope": None,
        "slope_ci": [None, None],
        "r2": None,
        "r2_ci": [None, None],
        "p": None,
        "slope_between": None,
        "slope_between_ci": [None, None],
        "slope_within": None,
        "slope_within_ci": [None, None],
        "note": "; ".join(analysis.notes),
    }
    naive = primary.naive.summary() if primary is not None and primary.naive is not None else None
    return {
        "reading": {
            "predictor": reading.predictor,
            "target": reading.target,
            "purpose": reading.purpose,
            "scheduler": reading.scheduler,
            "source": reading.source,
        },
        "counts": {
            "finished": analysis.counts.finished,
            "failed": analysis.counts.failed,
            "pruned": analysis.counts.pruned,
            "running": analysis.counts.running,
        },
        "n_teachers": analysis.n_teachers,
        "notes": analysis.notes,
        "primary": primary.summary() if primary is not None else empty,
        "primary_mean": analysis.primary_mean.summary() if analysis.primary_mean is not None else None,
        "naive": naive,
        "unadjusted": analysis.primary_unadjusted.summary() if analysis.primary_unadjusted is not None else None,
        "per_sd": _records(analysis.per_sd, {"level": "sd"}),
        "per_k": _records(analysis.per_k, {"level": "k"}),
        "sd_trend": [fit.summary() for fit in analysis.sd_trends],
        "power": analysis.power.summary() if analysis.power is not None else None,
    }


def _records(table: pd.DataFrame, rename: dict[str, str]) -> list[dict]:
    """A table as JSON-safe records (NaN -> null)."""
    return [
        {key: _json_value(value) for key, value in row.items()}
        for row in table.rename(columns=rename).to_dict(orient="records")
    ]


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
