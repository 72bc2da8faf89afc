"""Regenerate a study's report from its exported trial table (``tables/trials.csv``) when the MLflow store is gone.

    python -m analysis.reanalyse results/fashion_sd_study [--target r2_pooled.final] [--predictor ...]
        [--declared] [--title TEXT] [--resamples 1999]

Reads ``<folder>/tables/trials.csv`` (`analysis.load.read_trials_csv`) and writes report.md, figures/,
tables/ and summary.json back into the folder (report.html too; results/ does not commit it). The relation and the
title default to those of the folder's previous summary.json and report.md. Disclosures beside the headline are
read from ``<folder>/disclosures.md`` when present (one per paragraph). Figures that need each trial's result.json
(similarity matrices, emergence curves, dynamics curves) cannot be redrawn from the table: the previous edition's
PNGs of those are kept and listed at the end of the report; other PNGs the new report does not use are removed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from analysis.cluster import DEFAULT_RESAMPLES
from analysis.load import read_trials_csv
from analysis.report import write_trials_report
from analysis.sweep import Reading
from study.contract import PRIMARY_PREDICTOR, PRIMARY_TARGET

DISCLOSURES = "disclosures.md"
KEPT_FIGURES = ("similarity", "emergence", "dynamics", "layer_swaps")
"""Figures drawn from result.json: kept from the previous edition when the report is regenerated from the table."""
NO_RESULTS = ("Regenerated from tables/trials.csv: each trial's result.json stayed with the MLflow store, so the "
              "similarity, emergence and dynamics curves are not redrawn here.")  # fmt: skip


def reanalyse(folder: Path, reading: Reading, title: str, n_resamples: int = DEFAULT_RESAMPLES) -> list[Path]:
    """Write the report of ``folder/tables/trials.csv`` into ``folder``; returns the written paths."""
    table = folder / "tables" / "trials.csv"
    exported = table.read_bytes()  # the study's record: written back as it was, not re-serialised
    trials = read_trials_csv(table)
    disclosures = []
    if (folder / DISCLOSURES).is_file():
        disclosures = [p.strip().replace("\n", " ") for p in (folder / DISCLOSURES).read_text().split("\n\n")]
        disclosures = [p for p in disclosures if p and not p.startswith("#")]
    experiments = ", ".join(sorted(trials["experiment"].dropna().unique())) if "experiment" in trials else "?"
    source = f"Experiments: {experiments}. {NO_RESULTS}"
    written = write_trials_report(trials, folder, title=title, source=source, reading=reading,
                                  n_resamples=n_resamples, disclosures=disclosures)  # fmt: skip
    table.write_bytes(exported)
    report = folder / "report.md"
    page = report.read_text()
    kept = []
    for png in sorted((folder / "figures").glob("*.png")):
        if f"figures/{png.name}" in page:
            continue
        if png.stem in KEPT_FIGURES:
            kept.append(f"![{png.stem} (previous edition)](figures/{png.name})")
        else:
            png.unlink()
    if kept:
        intro = (
            "## Figures of the previous edition\n\nDrawn from each trial's result.json when the report was "
            "first written; not redrawn from the table (their statistics, if any, follow the previous methods)."
        )
        report.write_text(page.rstrip("\n") + "\n\n" + intro + "\n\n" + "\n\n".join(kept) + "\n")
    return written


def previous(folder: Path) -> tuple[Reading | None, str | None]:
    """The relation of the folder's previous summary.json and the title of its report.md, where present."""
    reading = title = None
    if (folder / "summary.json").is_file():
        fields = json.loads((folder / "summary.json").read_text()).get("reading") or {}
        reading = Reading(**{k: v for k, v in fields.items() if k in Reading.__dataclass_fields__})
    if (folder / "report.md").is_file():
        first = (folder / "report.md").read_text().splitlines()[:1]
        title = first[0].removeprefix("# ").strip() if first and first[0].startswith("# ") else None
    return reading, title  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder with tables/trials.csv")
    parser.add_argument("--target", help=f"primary target (default: the previous summary's, else {PRIMARY_TARGET})")
    parser.add_argument("--predictor", help=f"default: the previous summary's, else {PRIMARY_PREDICTOR}")
    parser.add_argument("--declared", action="store_true", help="the sweep's spec declared this relation")
    parser.add_argument("--title", help="report title (default: the folder's name)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    args = parser.parse_args(argv)
    if not (args.folder / "tables" / "trials.csv").is_file():
        parser.error(f"folder: no tables/trials.csv in {args.folder}")
    before, title = previous(args.folder)
    if before is None or args.target or args.predictor or args.declared:
        reading = Reading(predictor=args.predictor or PRIMARY_PREDICTOR, target=args.target or PRIMARY_TARGET,
                          source="spec" if args.declared else "given")  # fmt: skip
    else:
        reading = before
    reanalyse(args.folder, reading, args.title or title or f"Raptor study report: {args.folder.name}", args.resamples)
    print(f"wrote {args.folder}/report.md, summary.json, figures/, tables/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
