"""Grouped tables of a sweep's finished trials: mean ± sample std over the rest (seeds), and n, as Markdown.

For sweeps whose rows are not a correlation over teachers (one pretrained teacher, an ablation grid): the report
(analysis/report.py) fits relations; these tables only summarise. Per-layer R^2 comes from each trial's result.json.

    python -m analysis.tables EXPERIMENT --by raptor.k partition.method --metrics acc.ratio r2_pooled.final \
        [--tracking-uri URI] [--layers]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.document import markdown_table
from analysis.fit import split_by_status
from analysis.load import load_results, load_trials


def group_table(trials: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per level of `by`: n and, per metric, 'mean ± std' (sample std; '–' where no trial has it)."""
    rows = []
    for level, group in trials.groupby(list(by), sort=True, dropna=False):
        level = level if isinstance(level, tuple) else (level,)
        row = dict(zip(by, level, strict=True)) | {"n": len(group)}
        for metric in metrics:
            values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
            row[metric] = _mean_std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def layer_table(results: Sequence[dict], by: Sequence[str], entry: str = "r2_per_layer") -> pd.DataFrame:
    """Mean per-layer R^2 of each token group over the trials of each level of `by` (config keys, dotted)."""
    rows = []
    for result in results:
        flat = pd.json_normalize(result["config"]).iloc[0]
        for group, values in (result.get(entry) or {}).items():
            for layer, value in enumerate(values, start=1):
                rows.append({**{key: flat[key] for key in by}, "group": group, "layer": layer, "r2": value})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).groupby([*by, "group", "layer"], sort=True)["r2"].mean().unstack("layer")
    frame.columns = [f"L{c}" for c in frame.columns]
    return frame.reset_index()


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """`document.markdown_table` of `table` with floats to `digits` significant digits (NaN: '–')."""
    return markdown_table(table.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) and not math.isnan(v) else v))


def _mean_std(values: pd.Series) -> str:
    if values.empty:
        return "–"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{values.mean():.4g} ± {std:.2g}" if not math.isnan(std) else f"{values.mean():.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--by", nargs="+", required=True, help="config params to group by, e.g. raptor.k")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--layers", action="store_true", help="also per-layer R^2 (strict and pooled) per group")
    args = parser.parse_args(argv)
    trials, _ = split_by_status(load_trials(args.experiments, args.tracking_uri))
    missing = [c for c in args.by if c not in trials]
    if missing:
        parser.error(f"--by: no param {', '.join(missing)} in the trials of {', '.join(args.experiments)}")
    print(to_markdown(group_table(trials, args.by, args.metrics)))
    if args.layers:
        results = list(load_results(trials["run_id"], args.tracking_uri).values())
        for entry in ("r2_per_layer", "r2_pooled_per_layer"):
            print(f"\n{entry} (mean over {len(results)} trials' result.json)\n")
            print(to_markdown(layer_table(results, args.by, entry)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
