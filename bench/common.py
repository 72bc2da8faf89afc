"""What the bench scripts share: where results go, the machine line, --set parsing and the table writers.

Every script of bench/ takes these from here (none imports another script's helpers). Results go to
results/<measurement>/ (results/README.md: the layout): a README.md with the table, its machine and command, and
one CSV or JSON per measurement that the table cites.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (bench/ runs from a checkout, not from an installed wheel)."""
RESULTS = ROOT / "results"
"""Where benchmark results are written by default: one folder per measurement."""


def results_dir(name: str, root: str | Path | None = None) -> Path:
    """The folder of measurement `name` under `root` (default RESULTS), created if needed."""
    folder = Path(root) / name if root is not None else RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def parse_sets(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs -> dotted overrides (YAML-typed values), as the CLI parses them."""
    from study.cli import parse_overrides

    return parse_overrides(pairs)


def machine_line(t_start: float) -> str:
    """Host, CPUs, torch version and threads, device, seconds since `t_start` and load: the line every table cites."""
    import torch

    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, device {device}, "
        f"total {time.perf_counter() - t_start:.0f} s, load avg at end {os.getloadavg()[0]:.1f}"
    )


def summarise(runs, by: list[str], columns: list[str]):
    """Mean +- sample std (ddof=1) of `columns` per group of `by` (a pandas DataFrame in and out)."""
    import pandas as pd

    rows = []
    for key, group in runs.groupby(by, sort=True):
        entry = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=len(group))
        for col in columns:
            std = group[col].std(ddof=1) if len(group) > 1 else float("nan")
            entry[col] = f"{group[col].mean():.4f} +- {std:.4f}"
        rows.append(entry)
    return pd.DataFrame(rows)


def markdown(table) -> str:
    """A pipe table of a DataFrame (no tabulate dependency); floats to 4 decimals."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_report(folder: Path, title: str, lines: list[str], tables: dict[str, Any], csvs: dict[str, Any]) -> Path:
    """Write folder/README.md (`# title`, the `lines` as paragraphs, then one `## name` section per table) and each
    of `csvs` as folder/<name>.csv; returns the README's path.

    Args:
        folder: the measurement's results folder (see `results_dir`).
        title: the heading, by convention the command that made it (`python -m bench.NAME`).
        lines: paragraphs under the heading (what ran, the machine line).
        tables: section name -> DataFrame, rendered with `markdown`.
        csvs: file stem -> DataFrame, written beside the README (the rows the tables cite).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stem, frame in csvs.items():
        frame.to_csv(folder / f"{stem}.csv", index=False)
    body = [f"# {title}", *lines, *(f"## {name}\n\n{markdown(frame)}" for name, frame in tables.items())]
    path = folder / "README.md"
    path.write_text("\n\n".join(body) + "\n")
    return path


def write_json(path: Path, obj: Any, indent: int = 1) -> Path:
    """One measurement as JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent))
    return path
