"""Benchmarks of the study, each runnable as `python -m bench.<name>` from the repository root.

They import the project's public API only; their results are written to results/<measurement>/ (`RESULTS`; results/README.md describes the layout).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (bench/ runs from a checkout, not from an installed wheel)."""
RESULTS = ROOT / "results"
"""Where benchmark results are written by default."""
