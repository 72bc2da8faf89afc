"""The runs table `raptor-study ui` opens: a saved view of MLflow 3.x's experiment page, preset per sweep.

MLflow's UI keeps a shareable view of an experiment's runs table (what its "Share" button saves) as an experiment
tag ``mlflow.sharedViewState.<key>`` holding the view as JSON, and opens it from the URL's ``viewStateShareKey``.
The sweep saves one (`save_runs_view`): the searched params and the primary metrics as visible columns, trials
ordered by the objective. ``workflowType=machine_learning`` in the URL opens the model-training layout, not the
GenAI one. What the view cannot carry (MLflow drops it from shared views: which parent runs are expanded) is
said in the README ("Using it")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from study.contract import ACC_RATIO, R2_POOLED_FINAL, RUNS_VIEW_KEY, SHARED_VIEW_TAG_PREFIX, VAL_R2
from study.sweep.space import SweepSpec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

COLUMN_WIDTH = 84
"""Pixels per param or metric column: all of them visible in a 1600 px wide window (MLflow's default is wider)."""
SOURCE_WIDTH = 170
"""The Source column shows the entry point and spec (``raptor-study sweep smoke.yaml``)."""


def column(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it: ``params.`teacher.sd_rate```."""
    return f"{kind}.`{key}`"


def runs_view(spec: SweepSpec) -> dict:
    """The view: the searched params, the objective and the primary metrics, then Source and Models; trials sorted
    by the objective."""
    metrics = dict.fromkeys((spec.search.metric, VAL_R2, spec.analysis.primary.target, R2_POOLED_FINAL, ACC_RATIO,
                             spec.analysis.primary.predictor))  # fmt: skip
    columns = [
        *(column("params", key) for key in spec.space),
        *(column("metrics", key) for key in metrics),
        column("attributes", "Source"),
        column("attributes", "Models"),
    ]
    return {
        "searchFilter": "",
        "orderByKey": column("metrics", spec.search.metric),
        "orderByAsc": spec.search.mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {name: COLUMN_WIDTH for name in columns} | {column("attributes", "Source"): SOURCE_WIDTH},
        "hideEmptyCharts": True,
    }


def save_runs_view(client: MlflowClient, experiment_id: str, spec: SweepSpec) -> None:
    """One view per experiment: a later launch in the experiment rewrites it (study/sweep/browse.py opens it)."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY, json.dumps(runs_view(spec)))
