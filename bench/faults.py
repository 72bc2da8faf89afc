"""Fault injection on this machine (loopback only), printing the fault table:
fault, what the system did, trials lost, runs duplicated, time to recover.

    python -m bench.faults [--out /tmp/faults]

Scenarios (tiny digits trials, real Ray / Ray Train / MLflow):
  worker-kill   SIGKILL a Ray Train worker mid-stage; FailureConfig restarts it from its checkpoint
  driver-kill   SIGKILL the sweep driver (and its local Ray) mid-sweep; `raptor-study resume`
  node-kill     SIGKILL every process of the worker node of a 2-node loopback cluster while a trial runs on it;
                FailureConfig reruns it on a replacement node, from its last distillation state
  cache-corrupt flip bytes in a cached teacher; the next trial detects it and rebuilds
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from bench.common import results_dir, write_json
from bench.scenario import cli, finish, free_port, output, tiny_spec, train_worker_pids, trial_runs
from study.contract import epoch_metric
from study.sweep.raytrain import RayTrainWorkers

RAY = str(Path(sys.executable).with_name("ray"))


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


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on this machine."""
    # -ww: whole command lines (ps cuts them at $COLUMNS, which pytest sets, and a node's temp dir comes late)
    command = ["ps", "-eww", "-o", "pid=,ppid=,args="]
    rows = subprocess.run(command, capture_output=True, text=True).stdout.splitlines()
    table = {}
    for row in rows:
        pid, ppid, *args = row.split(None, 2)
        table[int(pid)] = (int(ppid), args[0] if args else "")
    return table


class LoopbackCluster:
    """A Ray cluster of nodes on 127.0.0.1, each started by `ray start` with its own temp dir.

    A node's processes are those whose command line names its temp dir (raylet, agents, log monitor) and
    their descendants (the worker processes, whose titles Ray rewrites); `kill_node` SIGKILLs exactly
    those by pid, and `stop` ends every node's, never another Ray on this machine. Token authentication
    (on by default for `ray start --head` since Ray 2.5x) uses a token of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[str] = []  # temp dirs, the head's first
        self.token = Path(tempfile.mkdtemp(prefix="rtok", dir="/tmp")) / "auth_token"
        self.token.write_text(secrets.token_hex(32))

    @contextmanager
    def environment(self):
        """The token for processes that join the cluster (the sweep CLI); restored afterwards."""
        before = os.environ.get("RAY_AUTH_TOKEN_PATH")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(self.token)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
            else:
                os.environ["RAY_AUTH_TOKEN_PATH"] = before

    def start_node(self, num_cpus: int, head: bool = False) -> str:
        """Start a node (the head first) and return its temp dir (short: Unix socket paths are limited)."""
        temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
        where = ["--address", self.address]
        if head:
            where = ["--head", "--port", str(self.port), "--include-dashboard=false"]
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token)}
        self.nodes.append(temp_dir)
        subprocess.run(
            [RAY, "start", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus)]
            + ["--disable-usage-stats", "--temp-dir", temp_dir],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        return temp_dir

    def node_pids(self, temp_dir: str) -> list[int]:
        table = process_table()
        found = {pid for pid, (_, args) in table.items() if temp_dir in args and pid != os.getpid()}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= children
            grew = bool(children)
        return sorted(found)

    def kill_node(self, temp_dir: str) -> int:
        """SIGKILL every process of the node at once; returns how many there were."""
        pids = self.node_pids(temp_dir)
        table = process_table()
        if not any("raylet" in table.get(pid, (0, ""))[1] for pid in pids):
            raise RuntimeError(f"no raylet of the node {temp_dir} found among {pids}: nothing to kill")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for temp_dir in reversed(self.nodes):
                for pid in self.node_pids(temp_dir):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            time.sleep(3)
        for temp_dir in self.nodes:
            shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(self.token.parent, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


NODE_KILL_EPOCHS = 40
"""Stage-2 epochs of the node-kill scenario's trials: the kill lands at a stage-2 state write (every
NODE_KILL_STATE_EVERY epochs) that is not the stage's last."""
NODE_KILL_STATE_EVERY = 5


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # between the atomic write's unlink and rename
        return 0


def node_kill(out: Path) -> dict:
    """2-node loopback cluster: a head with no CPU (it holds the sweep driver only, so every trial runs on the
    worker node) and one 1-CPU worker node; 2 trials, one at a time. Once the first trial has written a
    distillation state, every process of the worker node is SIGKILLed and a replacement node is started (what an
    autoscaler does). Tune's FailureConfig reruns the trial there; it resumes from its state file."""
    spec = tiny_spec(
        out,
        "f-node",
        num_samples=2,
        max_concurrent=1,
        stage2_epochs=NODE_KILL_EPOCHS,
        runtime={"checkpoint_epochs": NODE_KILL_STATE_EVERY},
    )
    root = out / "node"
    with LoopbackCluster() as cluster, cluster.environment():
        cluster.start_node(num_cpus=0, head=True)
        worker = cluster.start_node(num_cpus=1)
        proc = cli("sweep", str(spec), "--address", cluster.address, "--out", str(root))

        def states() -> list[Path]:  # a trial's resumable distillation state (Ray Train local mode)
            if proc.poll() is not None:
                raise RuntimeError(f"the sweep ended before a trial wrote its state:\n{output(proc)[-3000:]}")
            return list((root / "trials" / "f-node").glob(f"*/{RayTrainWorkers.LOCAL_STATE}/*.pt"))

        try:
            state = wait_for(states, every=0.2)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        victim = state[0].parent.parent.name
        # the first state is written at stage 1's end (1 epoch) at the latest; kill once it has been written again
        # (a stage-2 epoch divisible by NODE_KILL_STATE_EVERY): mid-stage-2 however fast the machine
        first = _mtime_ns(state[0])
        wait_for(lambda: _mtime_ns(state[0]) > first, every=0.1)
        killed = time.time()
        processes = cluster.kill_node(worker)
        cluster.start_node(num_cpus=1)
        joined = time.time() - killed

        def trained_again() -> bool:  # the rerun writes its state every 5 epochs (and result.json at the end)
            done = state[0].parent.parent / "result.json"
            return done.is_file() or (state[0].is_file() and state[0].stat().st_mtime > killed)

        # MLflow's metric timestamps are when the callback's writer applied them, which lags on a loaded machine:
        # the state file's time is when the rerun trained again
        wait_for(trained_again, every=0.2)
        recovered = time.time() - killed
        log = finish(proc)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    lost, dup = summary(client, "f-node", 2)
    runs = {r.data.tags["raptor.trial_id"]: r for r in trial_runs(client, "f-node")}
    return {
        "fault": "worker node of a 2-node loopback cluster SIGKILLed mid-trial (all its processes), a "
        "replacement node started",
        "kill_step": max(
            (
                m.step
                for m in client.get_metric_history(runs[victim].info.run_id, epoch_metric(2, "loss"))
                if m.timestamp / 1000 < killed
            ),
            default=None,
        )
        if victim in runs
        else None,
        "action": f"{processes} processes killed; Tune's FailureConfig(max_failures=1) reran the trial on the "
        f"replacement node (joined {joined:.1f} s after the kill), resuming from the distillation state the killed "
        "run left (pipeline.distill_resumable), in the same MLflow run; the next trial ran there too",
        "trials_lost": lost,
        "runs_duplicated": dup,
        "recovery_s": round(recovered, 1),
        "victim": victim,
        "sweep_log": log,
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
    rows = [cache_corrupt(out), worker_kill(out), driver_kill(out), node_kill(out)]
    lines = [
        "# python -m bench.faults",
        "",
        "| fault | what the system did | trials lost | runs duplicated | time to recover (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fault']} | {r['action']} | {r['trials_lost']} | {r['runs_duplicated']} | {r['recovery_s']} |"
        for r in rows
    ]
    print("\n".join(lines))
    folder = results_dir("faults")
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    write_json(folder / "faults.json", rows, indent=2)


if __name__ == "__main__":
    main()
