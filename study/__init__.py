"""raptor-study: Ray-distributed hyperparameter studies of the Block-Recurrent Hypothesis for Vision Transformers.

`run_sweep` and `report` are the Python API (`study.api`); they import Ray and MLflow only when called."""

from study.api import report, run_sweep

__all__ = ["report", "run_sweep"]
