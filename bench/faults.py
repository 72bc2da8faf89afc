"""Fault injection on this machine (loopback only), printing the fault table:
fault, what the system did, trials lost, runs duplicated, time to recover.

    python -m bench.faults [--out /tmp/faults]

Scenarios (tiny digits trials, real Ray / Ray Train / MLflow):
  worker-kill   SIGKILL a Ray Train worker mid-stage; FailureConfig restarts it from its checkpoint
  driver-kill   SIGKILL the sweep driver (and its local Ray) mid-sweep; `raptor-study resume`
  cache-corrupt flip bytes in a cached teacher; the next trial detects it and rebuilds
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from bench import RESULTS
from study.contract import epoch_metric
from tests.sweep.test_sweep_e2e import cli, finish, tiny_spec, train_worker_pids, trial_runs  # shared scenario helpers


def wait_for(predicate, timeout: float = 600, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError


def epoch_times(client: MlflowClient, run_id: str) -> list[float]:
    stamps = [
        m.timestamp / 1000
        for key in (epoch_metric(1, "loss"), epoch_metric(2, "loss"))
        for m in client.get_metric_history(run_id, key)
    ]
    return sorted(stamps)


def summary(client: MlflowClient, sweep: str, expected: int) -> tuple[int, int]:
    runs = trial_runs(client, sweep)
    ids = [r.data.tags["raptor.trial_id"] for r in runs]
    finished = sum(r.info.status == "FINISHED" for r in runs)
    return expected - finished, len(ids) - len(set(ids))


def worker_kill(out: Path) -> dict:
    spec = tiny_spec(out, "f-worker", num_samples=1, max_concurrent=1, stage2_epochs=6)
    proc = cli("sweep", str(spec), "--out", str(out / "worker"))
    wait_for(lambda: list((out / "worker" / "ray" / "_train" / "f-worker").glob("*/checkpoint_*")))
    pids = wait_for(lambda: train_worker_pids(proc.pid))
    killed = time.time()
    os.kill(pids[0], signal.SIGKILL)
    finish(proc)
    client = MlflowClient(f"sqlite:///{out / 'worker' / 'mlflow.db'}")
    lost, dup = summary(client, "f-worker", 1)
    run = trial_runs(client, "f-worker")[0]
    after = [t for t in epoch_times(client, run.info.run_id) if t > killed]
    return {
        "fault": "Ray Train worker SIGKILL mid-stage",
        "action": "FailureConfig restarted the worker group from the last per-epoch checkpoint; "
        "the trial finished in the same MLflow run",
        "trials_lost": lost,
        "runs_duplicated": dup,
        "recovery_s": round(after[0] - killed, 1) if after else None,
    }


def driver_kill(out: Path) -> dict:
    spec = tiny_spec(out, "f-driver", num_samples=3, max_concurrent=1)
    root = out / "driver"
    proc = cli("sweep", str(spec), "--out", str(root))
    wait_for(lambda: list((root / "trials" / "f-driver").glob("*/result.json")))
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    finish(cli("resume", str(spec), "--out", str(root)))
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    lost, dup = summary(client, "f-driver", 3)
    firsts = [min(epoch_times(client, r.info.run_id) or [float("inf")]) for r in trial_runs(client, "f-driver")]
    resumed = [t for t in firsts if t > t0]
    running = [r for r in trial_runs(client, "f-driver") if r.info.status == "RUNNING"]
    return {
        "fault": "sweep driver SIGKILL mid-sweep (local Ray dies with it)",
        "action": "`raptor-study resume` restored the Tune experiment, reran only unfinished trials, reused "
        "their MLflow runs; no run left RUNNING"
        if not running
        else f"{len(running)} runs left RUNNING",
        "trials_lost": lost,
        "runs_duplicated": dup,
        "recovery_s": round(min(resumed) - t0, 1) if resumed else None,
    }


def cache_corrupt(out: Path) -> dict:
    from study.config import load_trial_config
    from study.trial.pipeline import prepare

    overrides = {
        "teacher.depth": 3,
        "teacher.width": 16,
        "teacher.heads": 2,
        "teacher.epochs": 2,
        "data.max_samples": 300,
        "runtime.cache_dir": str(out / "cache"),
        "runtime.progress": False,
        "runtime.num_threads": 1,
    }
    cfg = load_trial_config(None, overrides)
    prepare(cfg)
    (teacher,) = (out / "cache" / "teachers").glob("*.pt")
    blob = bytearray(teacher.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    teacher.write_bytes(bytes(blob))
    t0 = time.time()
    prepare(cfg)
    from study.trial.cache import is_valid

    return {
        "fault": "cached teacher corrupted (one byte flipped)",
        "action": "SHA-256 mismatch detected, entry deleted and rebuilt under the lock, never loaded"
        if is_valid(teacher)
        else "NOT rebuilt",
        "trials_lost": 0,
        "runs_duplicated": 0,
        "recovery_s": round(time.time() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/faults")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [cache_corrupt(out), worker_kill(out), driver_kill(out)]
    lines = [
        "| fault | what the system did | trials lost | runs duplicated | time to recover (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fault']} | {r['action']} | {r['trials_lost']} | {r['runs_duplicated']} | {r['recovery_s']} |"
        for r in rows
    ]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "faults.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
