"""Benchmarks of the study, each runnable as `python -m bench.<name>` from the repository root (bench/README.md).

They import the project's public API and `bench.common` (the shared helpers) only; their results are written to
results/<measurement>/ (`RESULTS`; results/README.md describes the layout).
"""

from __future__ import annotations

from bench.common import RESULTS, ROOT

__all__ = ["RESULTS", "ROOT"]
