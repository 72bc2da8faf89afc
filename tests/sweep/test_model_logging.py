"""The Raptor as an MLflow PyTorch model (the spec's `record.log_model`, optionally `record.register_as`): a tiny
trial run for real, then written by the sweep's Tune callback and by a replay (`record.log_trial`), both through
study/sweep/record.py, into a local SQLite store; the model loads back, has a signature and gives the Raptor's
outputs."""

import dataclasses
import json
from types import SimpleNamespace

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from study.config import ConfigError
from study.contract import (
    FINISHED,
    MODEL_ARTIFACT,
    RAPTOR_EXAMPLE_KEY,
    RAPTOR_FILE,
    RAPTOR_MODULE_KEY,
    RESULT_ARTIFACT,
    TRIAL_ID_TAG,
)
from study.sweep.record import TrialRecord, log_trial
from study.sweep.runs import ensure_experiment
from study.sweep.space import as_sweep_spec, spec_hash
from study.sweep.tracking import MlflowTrialCallback
from study.trial.pipeline import MODEL_EXAMPLE_ROWS, run_trial

pytestmark = pytest.mark.timeout(600)
REGISTERED = "raptor-digits"


@pytest.fixture(scope="module")
def trial_dir(tiny_cfg, prepared, tmp_path_factory):
    """One tiny trial that keeps its Raptor module and input example (what a sweep with record.log_model runs)."""
    out = tmp_path_factory.mktemp("model-trial")
    run_trial(tiny_cfg, out, keep_model=True)
    return out


def logged_model_of(client: MlflowClient, run_id: str):
    outputs = client.get_run(run_id).outputs
    assert outputs is not None and len(outputs.model_outputs) == 1  # one model per run
    return client.get_logged_model(outputs.model_outputs[0].model_id)


def check_model(client: MlflowClient, run_id: str, trial_dir, token_shape: tuple[int, int]) -> None:
    """The run's model: logged once, with a signature [-1, T, D] -> [-1, T, D] and its input example; loaded back
    it holds the trial's weights and maps x_0 to the Raptor's final tokens."""
    saved = torch.load(trial_dir / RAPTOR_FILE, map_location="cpu", weights_only=False)
    raptor, example = saved[RAPTOR_MODULE_KEY].eval(), saved[RAPTOR_EXAMPLE_KEY]
    assert example.dtype == torch.float32 and tuple(example.shape) == (MODEL_EXAMPLE_ROWS, *token_shape)
    logged = logged_model_of(client, run_id)
    assert logged.name == MODEL_ARTIFACT and logged.source_run_id == run_id
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    info = Model.load(uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert [spec.shape for spec in info.signature.inputs.inputs] == [(-1, *example.shape[1:])]
    assert [spec.shape for spec in info.signature.outputs.inputs] == [(-1, *example.shape[1:])]
    loaded = mlflow.pytorch.load_model(uri).eval()
    fresh = torch.randn(3, *example.shape[1:])  # rows the example never showed it
    with torch.no_grad():
        for x in (example, fresh):
            np.testing.assert_allclose(loaded(x).numpy(), raptor.rollout(x)[:, -1].numpy(), rtol=1e-5, atol=1e-6)
    state = loaded.raptor.state_dict()
    assert state.keys() == saved["state_dict"].keys()
    assert all(torch.equal(state[k], saved["state_dict"][k]) for k in state)  # the trial's weights, unchanged
    assert info.load_input_example(mlflow.artifacts.download_artifacts(uri)).shape == tuple(example.shape)


def test_sweep_callback_and_replay_log_the_raptor_as_a_registered_pytorch_model(
    tmp_path, trial_dir, prepared, monkeypatch
):
    token_shape = tuple(prepared.states["test"].shape[2:])  # x_0's tokens and width: [T, D]
    spec = as_sweep_spec(
        {
            "name": "model",
            "space": {"raptor.k": {"choice": [2]}},
            "record": {"log_model": True, "register_as": REGISTERED},
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where this test's `runs:/` and `models:/` URIs resolve
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, spec.name, tmp_path / "artifacts")
    parent = client.create_run(experiment_id).info.run_id

    # the sweep's path: the Tune callback, as Tune calls it for a finished trial
    callback = MlflowTrialCallback(uri, experiment_id, parent, spec)
    trial = SimpleNamespace(trial_id="abc_00001", config={"raptor.k": 2}, last_result=None)
    callback.on_trial_start(0, [], trial)
    result = json.loads((trial_dir / RESULT_ARTIFACT).read_text())
    trial.last_result = {**result["metrics"], "out_dir": str(trial_dir)}
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    (run,) = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = 'abc_00001'")
    assert run.info.status == "FINISHED"
    check_model(client, run.info.run_id, trial_dir, token_shape)

    # a trial replayed after a crash completes again in the same run: its model is not logged twice
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    logged_model_of(client, run.info.run_id)

    # a replay of the whole trial (record.log_trial, e.g. study.sweep.synthetic) takes the same path
    replayed = log_trial(
        client,
        experiment_id,
        TrialRecord(
            sweep=spec.name,
            sweep_id="",
            trial_id="replay_00002",
            parent_run_id=parent,
            run_name="replay",
            teacher_key=result["teacher"]["key"],
            params={"raptor.k": 2},
            history=result["history"],
            result=result,
            status=FINISHED,
            out_dir=trial_dir,
        ),
        model=True,
        register_as=REGISTERED,
    )
    check_model(client, replayed, trial_dir, token_shape)

    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert sorted(v.run_id for v in versions) == sorted([run.info.run_id, replayed])  # one version per trial
    registered = mlflow.pytorch.load_model(f"models:/{REGISTERED}/1")
    assert isinstance(registered, torch.nn.Module)


def test_without_log_model_the_run_has_no_model_and_the_weights_file_stays_weights_only(tmp_path, tiny_cfg, prepared):
    out = tmp_path / "trial"
    run_trial(tiny_cfg, out)
    saved = torch.load(out / RAPTOR_FILE, map_location="cpu", weights_only=True)  # loadable without unpickling code
    assert RAPTOR_MODULE_KEY not in saved and RAPTOR_EXAMPLE_KEY not in saved
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = ensure_experiment(client, "plain", tmp_path / "artifacts")
    result = json.loads((out / RESULT_ARTIFACT).read_text())
    record = TrialRecord(
        sweep="plain",
        sweep_id="",
        trial_id="t_00001",
        parent_run_id="",
        run_name="t",
        teacher_key="k",
        params={},
        history=[],
        result=result,
        status=FINISHED,
        out_dir=out,
    )
    run_id = log_trial(client, experiment_id, record)
    outputs = client.get_run(run_id).outputs
    assert not (outputs and outputs.model_outputs)
    assert MODEL_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}
    with pytest.raises(ValueError, match="record.log_model"):  # asked for later, from a weights-only folder
        log_trial(client, experiment_id, dataclasses.replace(record, trial_id="t_00002", run_name="t2"), model=True)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"register_as": "raptor"}, "spec: record.register_as: registers the logged model, so it needs"),
        ({"log_model": True, "register_as": "a/b"}, "spec: record.register_as: String should match pattern"),
        ({"log_model": "sometimes"}, "spec: record.log_model: Input should be a valid boolean"),
        ({"log_models": True}, "spec: record.log_models: unknown key"),
    ],
)
def test_bad_record_section_is_one_line_naming_the_field(record, message):
    with pytest.raises(ConfigError) as err:
        as_sweep_spec({"name": "bad", "record": record})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_record_does_not_change_the_spec_hash():
    plain = as_sweep_spec({"name": "h"})
    logged = as_sweep_spec({"name": "h", "record": {"log_model": True, "register_as": "r"}})
    assert logged.record.log_model and not plain.record.log_model
    assert spec_hash(plain) == spec_hash(logged)  # how a sweep is recorded is not what it runs
