"""Regenerate a study's report from its exported trial table (``tables/trials.csv``) when the MLflow store is gone.

    python -m analysis.reanalyse results/fashion_sd_study [--target r2_pooled.final] [--predictor ...]
        [--declared] [--title TEXT] [--resamples 1999]

Reads ``<folder>/tables/trials.csv`` (`analysis.load.read_trials_csv`) and writes report.md, figures/,
tables/ and summary.json back into the folder (report.html too; results/ does not commit it). Disclosures beside
the headline are read from ``<folder>/disclosures.md`` when present (one per paragraph). Figures that need each
trial's result.json (similarity matrices, emergence curves, dynamics curves) cannot be redrawn from the table;
their sections say so, and the report notes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from analysis.cluster import DEFAULT_RESAMPLES
from analysis.load import read_trials_csv
from analysis.report import write_trials_report
from analysis.sweep import Reading
from study.contract import PRIMARY_PREDICTOR, PRIMARY_TARGET

DISCLOSURES = "disclosures.md"
NO_RESULTS = ("Regenerated from tables/trials.csv: each trial's result.json stayed with the MLflow store, so the "
              "similarity, emergence and dynamics curves are not redrawn here.")  # fmt: skip


def reanalyse(folder: Path, reading: Reading, title: str, n_resamples: int = DEFAULT_RESAMPLES) -> list[Path]:
    """Write the report of ``folder/tables/trials.csv`` into ``folder``; returns the written paths."""
    trials = read_trials_csv(folder / "tables" / "trials.csv")
    disclosures = []
    if (folder / DISCLOSURES).is_file():
        disclosures = [p.strip().replace("\n", " ") for p in (folder / DISCLOSURES).read_text().split("\n\n")]
        disclosures = [p for p in disclosures if p and not p.startswith("#")]
    experiments = ", ".join(sorted(trials["experiment"].dropna().unique())) if "experiment" in trials else "?"
    source = f"Experiments: {experiments}. {NO_RESULTS}"
    return write_trials_report(trials, folder, title=title, source=source, reading=reading, n_resamples=n_resamples,
                               disclosures=disclosures)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder with tables/trials.csv")
    parser.add_argument("--target", default=PRIMARY_TARGET)
    parser.add_argument("--predictor", default=PRIMARY_PREDICTOR)
    parser.add_argument("--declared", action="store_true", help="the sweep's spec declared this relation")
    parser.add_argument("--title", help="report title (default: the folder's name)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    args = parser.parse_args(argv)
    if not (args.folder / "tables" / "trials.csv").is_file():
        parser.error(f"folder: no tables/trials.csv in {args.folder}")
    reading = Reading(predictor=args.predictor, target=args.target, source="spec" if args.declared else "given")
    reanalyse(args.folder, reading, args.title or f"Raptor study report: {args.folder.name}", args.resamples)
    print(f"wrote {args.folder}/report.md, summary.json, figures/, tables/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
