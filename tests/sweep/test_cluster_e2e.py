"""Faults and clusters, on loopback only: a two-node Ray cluster on this machine, and a Ray Train
worker killed mid-stage. Bounded in time; every process started here is stopped here."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.scenario import cli, finish, free_port, output, tiny_spec, train_worker_pids, trial_runs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def two_node_cluster(monkeypatch):
    """`ray start --head` on 127.0.0.1 plus a second worker node, one CPU each.

    The cluster gets a private temp dir (short: Unix socket paths are limited), and teardown
    stops exactly the processes that carry it, never another Ray on this machine (which
    `ray stop` would kill)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    token = Path(temp_dir) / "auth_token"  # Ray >= 2.5x `ray start` needs a token it did not make itself
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))  # the sweep CLI (a subprocess) reads it too
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", temp_dir]
    try:
        subprocess.run(
            [RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        subprocess.run(
            [RAY, "start", "--address", f"127.0.0.1:{port}", *common],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield f"127.0.0.1:{port}"
    finally:
        for sig in ("-TERM", "-KILL"):
            subprocess.run(["pkill", sig, "-f", temp_dir], capture_output=True)
            time.sleep(3)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_joins_a_two_node_cluster_with_shared_storage(tmp_path, two_node_cluster):
    spec = tiny_spec(tmp_path, "cluster", num_samples=2, max_concurrent=2)
    out = tmp_path / "shared-runs"  # the shared path every node reads and writes
    log = finish(cli("sweep", str(spec), "--address", two_node_cluster, "--out", str(out)))
    assert "sweep cluster: 2 trials" in log
    runs = trial_runs(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "cluster")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # each trial holds one CPU (0.5 driver + 0.5 worker) and each node has one: running both
    # at once needs both nodes
    starts_ends = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert starts_ends[1][0] < starts_ends[0][1], "the two trials did not overlap: one node unused"


def test_unreachable_address_is_one_clear_line(tmp_path):
    spec = tiny_spec(tmp_path, "nowhere", num_samples=1, max_concurrent=1)
    proc = cli("sweep", str(spec), "--address", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "runs"))
    out = output(proc, timeout=120)
    assert proc.returncode == 2
    error_lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--address" in error_lines[0]


def test_killed_train_worker_restarts_from_its_checkpoint(tmp_path):
    # Train worker actors (not local mode) checkpointing every epoch: the kill lands after a checkpoint
    spec = tiny_spec(
        tmp_path,
        "workerkill",
        num_samples=1,
        max_concurrent=1,
        stage2_epochs=6,
        train_mode="workers",
        runtime={"checkpoint_epochs": 1},
    )
    out = tmp_path / "runs"
    proc = cli("sweep", str(spec), "--out", str(out))
    killed_at = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and killed_at is None:
        time.sleep(1)
        if list((out / "ray" / "_train" / "workerkill").glob("*/checkpoint_*")):
            pids = train_worker_pids(proc.pid)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at is not None, "no Ray Train worker with a checkpoint was seen"
    log = finish(proc)
    assert "sweep workerkill: 1 trials" in log
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = trial_runs(client, "workerkill")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the trial completed, one run
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "stage2.loss")]
    assert sorted(steps) == list(range(6))  # one continuous history: every epoch once


def test_a_killed_worker_node_loses_and_duplicates_no_trial(tmp_path):
    """Fault 12 of results/faults/ecosystem.md, as `bench.faults.node_kill` runs it: every process of the worker node
    SIGKILLed while a trial runs on it, a replacement node started; Tune's FailureConfig reruns the trial there."""
    from bench.faults import NODE_KILL_EPOCHS, node_kill

    t0 = time.monotonic()
    row = node_kill(tmp_path)
    assert "sweep f-node: 2 trials" in row["sweep_log"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'node' / 'mlflow.db'}")
    runs = trial_runs(client, "f-node")
    ids = [r.data.tags["raptor.trial_id"] for r in runs]
    assert len(ids) == 2 and len(set(ids)) == 2  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)  # none lost
    assert (row["trials_lost"], row["runs_duplicated"]) == (0, 0)
    victim = next(r for r in runs if r.data.tags["raptor.trial_id"] == row["victim"])
    steps = [m.step for m in client.get_metric_history(victim.info.run_id, "stage2.loss")]
    assert sorted(steps) == list(range(NODE_KILL_EPOCHS))  # every epoch once, across the rerun
    assert row["recovery_s"] > 0  # the rerun wrote a newer state (trained again) after the kill
    print(f"node-kill fault: {time.monotonic() - t0:.0f} s in all, recovery {row['recovery_s']} s")
