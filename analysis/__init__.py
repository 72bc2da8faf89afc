"""Sweep analysis: MLflow runs -> statistics -> report.

load (MLflow -> tidy DataFrame), fit (naive trial-level OLS / correlations / bootstrap / SD trend),
inference + cluster + power (teacher-as-unit fits, docs/science.md §7), importance (optuna fANOVA),
sweep (all statistics of one sweep), paper + paper_rows (the paper's figures beside ours), figures +
document + sections + report (`write_report`). Imports only `study.contract` and pure helpers
(tests/test_layout.py); the synthetic sweep writer lives in `study.sweep.synthetic`.
"""
