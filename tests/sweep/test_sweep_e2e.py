"""End to end: real sweeps through Ray Tune + Optuna + Ray Train + MLflow (tiny trials on digits)."""

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.scenario import (  # the scenario helpers bench.faults shares
    cli,
    finish,
    free_port,
    output,
    tiny_spec,
    trial_runs,
)
from tests.sweep.test_tracking import start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    port = free_port()
    proc = start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def rest(url: str, endpoint: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_sweep_records_every_trial_in_a_real_mlflow_server(tmp_path, mlflow_server):
    spec = tiny_spec(tmp_path, "e2e", num_samples=3, max_concurrent=2)
    out = tmp_path / "runs"
    log = finish(cli("sweep", str(spec), "--out", str(out), "--tracking-uri", mlflow_server))
    assert "sweep e2e: 3 trials" in log
    # the default console: the progress view, no Ray/MLflow internals (quiet_console)
    noise = ("INFO mlflow", "Downloading artifacts", "PreemptionWatcher", "Failed to query Ray Train", "Token auth")
    for line in noise:
        assert line not in log, log[-3000:]

    # through the MLflow client
    client = MlflowClient(mlflow_server)
    runs = trial_runs(client, "e2e")
    assert len(runs) == 3
    parent = client.search_runs([runs[0].info.experiment_id], filter_string="tags.`raptor.role` = 'sweep'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["raptor.status"] == "finished"
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.params["teacher.depth"] == "3" and "teacher.sd_rate" in run.data.params
        assert {"r2.final", "r2.mean", "acc.ratio", "phase.cosine.within_sim", "stage2.loss"} <= set(run.data.metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "r2.layer")] == [1, 2, 3]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "stage2.loss")] == [0, 1]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "similarity.png", "r2_per_layer.png", "raptor.pt"} <= artifacts

    # the same through the REST API
    exp_id = runs[0].info.experiment_id
    found = rest(mlflow_server, "runs/search", {"experiment_ids": [exp_id], "filter": "tags.`raptor.role` = 'trial'"})
    assert len(found["runs"]) == 3
    assert all(r["info"]["status"] == "FINISHED" for r in found["runs"])
    assert all(any(m["key"] == "r2.final" for m in r["data"]["metrics"]) for r in found["runs"])

    # each teacher config was trained once, shared through the cache
    sd_rates = {run.data.params["teacher.sd_rate"] for run in runs}
    assert len(list((out / "cache" / "teachers").glob("*.pt"))) == len(sd_rates)


def saved_statuses(experiment: Path) -> list[str]:
    """Each trial's status in Tune's newest saved experiment state (none before the first save)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    try:
        return [json.loads(t[0])["status"] for t in json.loads(states[-1].read_text())["trial_data"]] if states else []
    except (OSError, ValueError, KeyError):  # caught mid-write
        return []


SLOW_TRACKING = """import sys, time
import study.sweep.tracking as tracking

ended = tracking.end_trial
tracking.end_trial = lambda *a, **k: (time.sleep(600), ended(*a, **k))[1]  # a tracking server that stalls
from study.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_killed_with_mlflow_writes_queued_loses_no_trial_on_resume(tmp_path):
    """The driver's MLflow writer stalls (its run ends wait 600 s), so when Tune has saved both trials as ended,
    the first trial's run is still RUNNING and the second has none: the driver is killed then. `resume` runs no
    trial (Tune has them as ended) and completes both runs from the trials' result.json files."""
    spec = tiny_spec(tmp_path, "queued", num_samples=2, max_concurrent=1)
    out = tmp_path / "runs"
    entry = tmp_path / "slow_tracking.py"
    entry.write_text(SLOW_TRACKING)
    proc = cli("sweep", str(spec), "--out", str(out), entry=entry)
    deadline = time.monotonic() + 600
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and saved_statuses(out / "ray" / "queued") != ["TERMINATED"] * 2
    ):
        time.sleep(0.5)
    assert proc.poll() is None, output(proc)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    before = trial_runs(client, "queued")
    assert all(r.info.status == "RUNNING" for r in before) and len(before) < 2  # the writes the kill lost

    finish(cli("resume", str(spec), "--out", str(out)))
    runs = trial_runs(client, "queued")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for run in runs:
        assert "r2.final" in run.data.metrics and run.data.params["raptor.k"] in ("1", "2")
        for key in ("stage1.loss", "stage2.loss"):  # every epoch once
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(len(steps))) and steps, (key, steps)
        assert "result.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_resume_after_the_driver_is_killed_reruns_nothing_and_duplicates_nothing(tmp_path):
    spec = tiny_spec(tmp_path, "crash", num_samples=4, max_concurrent=1)
    out = tmp_path / "runs"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    override = ("--set", "search.num_samples=2")  # launched with an override, so resume needs it too
    proc = cli("sweep", str(spec), "--out", str(out), *override)
    client = None
    deadline = time.monotonic() + 600
    finished: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(3)
        # open the store only once a trial has written its outputs (the driver created the store long before)
        if list((out / "trials" / "crash").glob("*/result.json")):
            client = client or MlflowClient(uri)
            finished = [r for r in trial_runs(client, "crash") if r.info.status == "FINISHED"]
            if finished:
                break
    assert finished, "no trial finished before the deadline"
    # Kill once Tune's saved state knows both trials. A kill before Tune saves the state of a trial it has just
    # started loses that trial's registration: resume then starts a new trial and the killed one's run stays
    # unfinished (marked orphaned). That limitation is documented in the README; this test checks what resume
    # guarantees once the state is saved: nothing rerun, nothing duplicated.
    while time.monotonic() < deadline and proc.poll() is None and len(saved_statuses(out / "ray" / "crash")) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die together
    proc.wait(timeout=60)
    first = finished[0]

    forgot = cli("resume", str(spec), "--out", str(out))
    message = output(forgot).strip()
    assert forgot.returncode == 2 and message.count("\n") == 0, message
    assert message == (
        "error: resume: search.num_samples differs from the launched sweep (launched 2, now 4); "
        "resume with the launch's spec file and --set values"
    )
    finish(cli("resume", str(spec), "--out", str(out), *override))
    runs = trial_runs(client, "crash")
    assert len(runs) == 2, [r.data.tags.get("raptor.trial_id") for r in runs]
    assert len({r.data.tags["raptor.trial_id"] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.status, r.data.tags.get("raptor.failure")) for r in runs
    ]
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not rerun
    for run in runs:  # one continuous history: no epoch logged twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "stage2.loss")]
        assert sorted(steps) == [0, 1]
