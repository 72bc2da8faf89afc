"""MLflow writes survive a tracking-server outage: buffered with a warning, delivered when it is back."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric

from bench.scenario import free_port, serving
from study.store import default_tracking_uri
from study.sweep.runs import ensure_experiment
from study.sweep.writer import ResilientWriter

pytestmark = pytest.mark.timeout(300)


def start_server(store: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder under `store`."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store / 'server.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # no job runner: MLflow 3.x starts two extra huey consumer processes for it, which nothing here uses
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    if serving(port, 90):
        return proc
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.e2e  # a real `mlflow server`, stopped and restarted
def test_writes_are_buffered_while_the_server_is_down_and_arrive_after(tmp_path, caplog):
    port = free_port()
    server = start_server(tmp_path, port)
    writer = ResilientWriter(f"http://127.0.0.1:{port}")
    experiment_id = ensure_experiment(writer.client, "outage", None)
    run_id = writer.client.create_run(experiment_id).info.run_id
    writer.write(lambda c: c.log_batch(run_id, metrics=[Metric("loss", 1.0, 0, 0)]))
    assert writer.flush(patience_s=30)  # the first write lands while the server is up (the thread is asynchronous)
    stop_server(server)

    with caplog.at_level(logging.WARNING, logger="study.sweep.writer"):
        t0 = time.monotonic()
        for step in (1, 2, 3):  # training goes on: each write returns at once, queued for the writer thread
            writer.write(lambda c, step=step: c.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), 0, step)]))
        assert time.monotonic() - t0 < 1.0  # never waits for MLflow
        deadline = time.monotonic() + 60
        while writer.outage_since is None and time.monotonic() < deadline:  # the thread has met the outage
            time.sleep(0.1)
        assert not writer.flush(patience_s=2)  # still down: nothing delivered, nothing dropped
    assert len(writer.pending) == 3
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # one clear warning, not one per write

    server = start_server(tmp_path, port)
    try:
        assert writer.flush(patience_s=30)
        assert list(writer.pending) == []
        history = writer.client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
    finally:
        stop_server(server)


def test_other_mlflow_errors_are_not_swallowed(tmp_path):
    from mlflow.exceptions import MlflowException

    writer = ResilientWriter(default_tracking_uri(tmp_path))
    writer.write(lambda c: c.get_run("no-such-run"))
    with pytest.raises(MlflowException):  # raised to the caller at the next flush, not lost in the thread
        writer.flush(patience_s=30)
    assert list(writer.pending) == []  # the queue went on past it


@pytest.mark.e2e
def test_sweep_callback_buffers_a_whole_trial_while_the_server_is_down(tmp_path):
    """Server down from before the trial starts until after it ends: every call waits in the
    buffer (run creation included) and the trial arrives whole, in one run, once it is back."""
    import json
    from types import SimpleNamespace

    from study.sweep.space import load_sweep
    from study.sweep.tracking import MlflowTrialCallback

    spec = load_sweep(Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml")
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    writer = ResilientWriter(uri)
    experiment_id = ensure_experiment(writer.client, "smoke", None)
    parent = writer.client.create_run(experiment_id).info.run_id
    callback = MlflowTrialCallback(uri, experiment_id, parent, spec)
    stop_server(server)

    out_dir = tmp_path / "trial"
    out_dir.mkdir()
    (out_dir / "result.json").write_text(
        json.dumps(
            {
                "metrics": {"r2.final": 0.9, "acc.ratio": 0.8},
                "r2_per_layer": {"all": [0.99, 0.95]},
                "r2_pooled_per_layer": {"all": [0.995, 0.97], "cls": [0.9, 0.8]},
                "teacher": {"key": "abc"},
                "partition": {"phase_bounds": [[1, 1], [2, 2]]},
                "data": {
                    "name": "digits",
                    "splits": {"train": 10, "val": 2, "test": 3},
                    "digest": "d1g3st",
                    "source": {},
                },
            }
        )
    )
    params = {"teacher.sd_rate": 0.3, "raptor.k": 2, "distill.stage2.lambda_cls": 0.4, "distill.anneal": 0.2}
    trial = SimpleNamespace(trial_id="abc_00007", config=params, last_result=None)
    callback.on_trial_start(0, [], trial)
    for epoch in range(2):
        callback.on_trial_result(0, [], trial, {"stage": 2, "epoch": epoch, "loss": 1.0 / (epoch + 1), "val_r2": 0.9})
    trial.last_result = {"r2.final": 0.9, "out_dir": str(out_dir)}
    callback.on_trial_complete(0, [], trial)
    assert callback.writer.pending  # nothing reached the server, nothing was lost

    server = start_server(tmp_path, port)
    try:
        callback.on_experiment_end([])
        assert list(callback.writer.pending) == []
        client = callback.writer.client
        runs = client.search_runs([experiment_id], filter_string="tags.`raptor.trial_id` = 'abc_00007'")
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.params["raptor.k"] == "2"
        assert run.info.run_name == "sd0.3-s0-k2-0007"  # short and sortable in the UI
        assert {key: run.data.params[key] for key in params} == {k: str(v) for k, v in params.items()}  # spec's names
        assert run.data.tags["teacher.key"] == "abc"  # the result's key (tagged from the config at the start)
        inputs = run.inputs.dataset_inputs
        assert sorted(i.tags[0].value for i in inputs) == ["test", "train", "val"]
        assert {i.dataset.name for i in inputs} == {"digits-train", "digits-val", "digits-test"}
        assert {i.dataset.digest for i in inputs} == {"d1g3st"}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "stage2.loss")] == [0, 1]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "r2.layer")] == [1, 2]
        pooled = client.get_metric_history(run.info.run_id, "r2_pooled.layer.cls")
        assert [(m.step, m.value) for m in pooled] == [(1, 0.9), (2, 0.8)]
        assert "result.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        stop_server(server)
