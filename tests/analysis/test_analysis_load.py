"""analysis.load against a real sqlite MLflow store populated through the client, following the schema."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.load import find_sweep_runs, load_results, load_trials
from study.sweep.synthetic import SyntheticSweep, write_synthetic_sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SyntheticSweep, dict[str, str]]:
    """A synthetic sweep (16 finished, 2 failed, 2 pruned) plus an experiment of hand-made edge-case runs."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = write_synthetic_sweep(
        uri, "sweep-a", sd_rates=(0.0, 0.6), ks=(2, 3), artifact_location=(root / "a").as_uri()
    )
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("edge", artifact_location=(root / "edge").as_uri())
    parent = client.create_run(experiment_id, tags={"raptor.role": "sweep"}).info.run_id
    now = int(time.time() * 1000)
    runs = {}
    # no raptor.status tag: the MLflow status decides (KILLED -> pruned); a hash that looks like a number
    killed = client.create_run(experiment_id, tags={"raptor.role": "trial", "mlflow.parentRunId": parent}).info.run_id
    client.log_batch(killed, params=[Param("teacher.key", "1234e567"), Param("raptor.k", "2")])
    client.set_terminated(killed, "KILLED")
    runs["killed"] = killed
    # per-layer history with a repeated step (the later value wins) and a missing layer 3; teacher.key as a tag
    tags = {"raptor.role": "trial", "raptor.status": "finished", "teacher.key": "from-tag"}
    layered = client.create_run(experiment_id, tags=tags).info.run_id
    history = [
        Metric("r2.layer", v, now + i, step) for i, (step, v) in enumerate([(1, 0.9), (2, 0.1), (2, 0.8), (4, 0.5)])
    ]
    client.log_batch(layered, metrics=[*history, Metric("r2.final", 0.5, now, 0)], params=[Param("raptor.k", "3")])
    client.set_terminated(layered, "FINISHED")
    runs["layered"] = layered
    # never ended (e.g. a killed worker): stays RUNNING, no status tag
    runs["running"] = client.create_run(experiment_id, tags={"raptor.role": "trial"}).info.run_id
    # not a trial: must be ignored
    client.create_run(experiment_id, tags={"raptor.role": "other"})
    return uri, sweep, runs


def test_one_row_per_trial_with_status(store) -> None:
    uri, sweep, _ = store
    trials = load_trials(["sweep-a"], uri)
    assert sorted(trials["run_id"]) == sorted(sweep.truth["run_id"])
    assert trials["status"].value_counts().to_dict() == {"finished": 16, "failed": 2, "pruned": 2}
    assert set(trials.loc[trials["status"] == "pruned", "mlflow_status"]) == {"KILLED", "FINISHED"}
    assert (trials["experiment"] == "sweep-a").all() and (trials["sweep"] == "sweep-a").all()
    assert (trials["parent_run_id"] == sweep.parent_run_id).all()
    assert trials["start_time"].is_monotonic_increasing


def test_params_are_typed(store) -> None:
    uri, _, _ = store
    trials = load_trials(["sweep-a"], uri)
    assert trials["teacher.sd_rate"].dtype == float and set(trials["teacher.sd_rate"]) == {0.0, 0.6}
    assert str(trials["raptor.k"].dtype) == "Int64" and set(trials["raptor.k"]) == {2, 3}
    assert str(trials["distill.stage1.enabled"].dtype) == "boolean" and trials["distill.stage1.enabled"].all()
    assert trials["raptor.layerscale_init"].iloc[0] == pytest.approx(1e-5)
    assert trials["data.path"].isna().all() and (trials["data.name"] == "digits").all()
    assert trials["teacher.key"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert "teacher.sd_rate" in trials.attrs["params"] and "r2.final" not in trials.attrs["params"]
    assert trials.attrs["layer_metrics"] == ["r2.layer", "r2.layer.cls", "r2.layer.patch"]


def test_metrics_and_layer_histories_match_what_was_logged(store) -> None:
    uri, sweep, _ = store
    trials = load_trials(["sweep-a"], uri).set_index("run_id")
    truth = sweep.truth.set_index("run_id")
    finished = truth.index[truth["status"] == "finished"]
    for column in ("r2.final", "r2.mean", "phase.cosine.within_sim", "phase.cka.contrast", "teacher.test_acc"):
        np.testing.assert_allclose(trials.loc[finished, column], truth.loc[finished, column])
    for run_id in finished:
        np.testing.assert_allclose(trials.loc[run_id, "r2.layer"], truth.loc[run_id, "r2.layer"])
        assert len(trials.loc[run_id, "r2.layer.cls"]) == 8
    assert trials.loc[finished, "acc.ratio"].isna().sum() == 1  # the synthetic sweep's first trial lacks it
    assert trials.loc[finished, "stage2.val_r2"].notna().all()  # training curves: their last value
    failed = truth.index[truth["status"] == "failed"]
    assert trials.loc[failed, "r2.final"].isna().all() and trials.loc[failed, "r2.layer"].isna().all()


def test_status_falls_back_to_mlflow_and_history_edge_cases(store) -> None:
    uri, _, runs = store
    trials = load_trials(["edge"], uri).set_index("run_id")
    assert len(trials) == 3
    assert trials.loc[runs["killed"], "status"] == "pruned"
    assert trials.loc[runs["running"], "status"] == "running"
    assert trials.loc[runs["killed"], "teacher.key"] == "1234e567"  # text, though it parses as a float
    assert trials.loc[runs["layered"], "teacher.key"] == "from-tag"
    layers = trials.loc[runs["layered"], "r2.layer"]
    assert layers[:2] == [0.9, 0.8] and np.isnan(layers[2]) and layers[3] == 0.5


def test_several_experiments_and_unknown_ones(store) -> None:
    uri, _, _ = store
    both = load_trials(["sweep-a", "edge"], uri)
    assert both.groupby("experiment").size().to_dict() == {"edge": 3, "sweep-a": 20}
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        load_trials(["nope"], uri)


def test_results_are_downloaded_and_missing_ones_skipped(store) -> None:
    uri, sweep, _ = store
    truth = sweep.truth
    finished = truth.loc[truth["status"] == "finished", "run_id"].tolist()[:2]
    failed = truth.loc[truth["status"] == "failed", "run_id"].tolist()[:1]
    results = load_results([*finished, *failed], uri)
    assert sorted(results) == sorted(finished)
    result = results[finished[0]]
    assert np.asarray(result["similarity"]["cosine"]).shape == (8, 8)
    assert np.asarray(result["similarity"]["cka"]).shape == (8, 8)
    bounds = result["partition"]["phase_bounds"]
    assert bounds[0][0] == 1 and bounds[-1][1] == 8
    assert result["config"]["teacher"]["depth"] == 8
    assert json.dumps(result)  # plain JSON types


def test_find_sweep_runs(store) -> None:
    uri, sweep, _ = store
    assert find_sweep_runs(["sweep-a"], uri) == [sweep.parent_run_id]


def test_empty_experiment(store, tmp_path: Path) -> None:
    uri, _, _ = store
    MlflowClient(uri).create_experiment("empty", artifact_location=tmp_path.as_uri())
    trials = load_trials(["empty"], uri)
    assert trials.empty and "status" in trials and trials.attrs["params"] == []
    assert isinstance(trials, pd.DataFrame)
