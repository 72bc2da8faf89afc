"""Tiny end-to-end sweep scenarios shared by `bench.faults` and the e2e tests (tests/sweep/test_sweep_e2e.py):
a tiny digits spec, the CLI in its own session, its output, the Ray Train workers under a process and the trial runs
of a sweep in MLflow.

Imports no ray / optuna at import time; `trial_runs` takes an MLflow client the caller made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from study.contract import VAL_R2


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(port: int, seconds: float) -> bool:
    """Whether a server on 127.0.0.1:`port` answers ``/health`` (MLflow's) within `seconds`, asking twice a second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def tiny_spec(
    tmp_path: Path,
    name: str,
    num_samples: int,
    max_concurrent: int,
    stage2_epochs: int = 2,
    train_mode: str = "auto",
    runtime: dict | None = None,
) -> Path:
    spec = {
        "name": name,
        "base": {
            "data": {"max_samples": 300},
            "teacher": {"depth": 3, "width": 16, "heads": 2, "epochs": 2, "batch_size": 64},
            "distill": {"batch_size": 64, "stage1": {"epochs": 1}, "stage2": {"epochs": stage2_epochs}},
            "dynamics": {"replace_draws": 4},  # as tests/conftest.py's TINY: the default 20 is a science-level test
            "runtime": {"num_threads": 1, "progress": False, **(runtime or {})},
        },
        "space": {
            "teacher.sd_rate": {"choice": [0.0, 0.3]},
            "raptor.k": {"choice": [1, 2]},
            "distill.anneal": {"uniform": [0.1, 0.5]},
        },
        "search": {
            "sampler": "random",
            "metric": VAL_R2,
            "mode": "max",
            "num_samples": num_samples,
            "max_concurrent": max_concurrent,
            "seed": 3,
        },
        "resources": {"driver_cpu": 0.5, "workers": 1, "worker_cpu": 0.5, "train_mode": train_mode},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, entry: Path | None = None) -> subprocess.Popen:
    """`raptor-study ARGS` in its own session (or the script `entry`, which calls the CLI itself); output goes to a
    temp file (a pipe nobody reads would fill up and block Ray's chatty output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, *([str(entry)] if entry else ["-m", "study.cli"]), *args],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = log
    return proc


def output(proc: subprocess.Popen, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    proc.log.seek(0)
    return proc.log.read()


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out = output(proc, timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def train_worker_pids(root_pid: int) -> list[int]:
    """PIDs of Ray Train worker processes started under `root_pid` (its local Ray), not other sweeps'."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    rows = [line.split(None, 2) for line in table if line.strip()]
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    family, stack = set(), [root_pid]
    while stack:
        pid = stack.pop()
        family.add(pid)
        stack.extend(children.get(pid, []))
    return [int(r[0]) for r in rows if int(r[0]) in family and len(r) > 2 and "ray::RayTrainWorker" in r[2]]


def trial_runs(client, experiment: str) -> list:
    """The trial runs (not the parent) of sweep `experiment` in MLflow (`client`: an MlflowClient)."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`raptor.role` = 'trial'")
