"""Sweep analysis: MLflow runs -> statistics -> report.

load (MLflow -> tidy DataFrame), fit (OLS / correlations / bootstrap / SD trend),
importance (optuna fANOVA), sweep (all statistics of one sweep), paper (the
paper's figures beside ours), figures + document + report (`write_report`),
synthetic (a schema-conformant fake sweep for tests and demos); schema names
the MLflow contract.
"""
