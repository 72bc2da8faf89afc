"""The sweep's progress view and event clock (study.sweep.monitor), driven by Tune-like hook calls."""

from __future__ import annotations

import json
import pickle
import time
from types import SimpleNamespace

from rich.console import Console

from study.sweep.monitor import SweepMonitor, TimedCallback


def trial(trial_id: str, last_result: dict | None = None, status: str = "RUNNING"):
    return SimpleNamespace(trial_id=trial_id, last_result=last_result or {}, status=status)


class SlowCallback:
    def __init__(self):
        self.calls = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.calls.append(("result", trial.trial_id, result["val_r2"]))
        time.sleep(0.02)


def test_progress_counts_best_eta_and_events(tmp_path):
    console = Console(file=open(tmp_path / "console.txt", "w"), width=120, force_terminal=False)
    mlflow = TimedCallback(SlowCallback())
    monitor = SweepMonitor(
        "demo",
        total=4,
        concurrency=2,
        metric="val_r2",
        mode="max",
        events_path=tmp_path / "events.json",
        live=True,
        mlflow=mlflow,
        console=console,
    )
    monitor.setup()
    a, b, c = trial("a"), trial("b"), trial("c")
    monitor.on_trial_start(0, [], a)
    monitor.on_trial_start(0, [], b)
    for t, value in ((a, 0.5), (b, 0.7), (a, 0.6)):
        mlflow.on_trial_result(0, [], trial=t, result={"val_r2": value})
        monitor.on_trial_result(0, [], t, {"val_r2": value})
    assert monitor.counts() == {"running": 2, "finished": 0, "stopped": 0, "failed": 0}
    assert monitor.best == 0.7 and monitor.eta_s() is None  # no trial ended yet: no ETA
    a.last_result = {"r2.final": 0.9}
    monitor.on_trial_complete(0, [], a)
    monitor.on_trial_error(0, [], b)
    monitor.on_trial_start(0, [], c)
    monitor.on_step_end(0, [])
    assert monitor.counts() == {"running": 1, "finished": 1, "stopped": 0, "failed": 1}
    # 2 trials ended, 2 left at 2 at a time: one more round of the mean trial time
    ended = [monitor.events[t]["end_unix"] - monitor.events[t]["start_unix"] for t in ("a", "b")]
    assert monitor.eta_s() == sum(ended) / 2
    monitor.on_experiment_end([])
    console.file.close()
    shown = (tmp_path / "console.txt").read_text()
    assert "sweep demo" in shown and "1 finished" in shown and "1 failed" in shown and "best val_r2 (max): 0.7" in shown
    assert shown.endswith("\n")  # what is printed next (the result table) starts on a line of its own
    events = json.loads((tmp_path / "events.json").read_text())
    assert set(events["trials"]) == {"a", "b", "c"}
    first = events["trials"]["a"]
    assert first["results"] == 2 and first["end_unix"] >= first["start_unix"]
    # the wrapped callback got every call, and its blocking time is counted per trial
    assert mlflow.inner.calls == [("result", "a", 0.5), ("result", "b", 0.7), ("result", "a", 0.6)]
    assert events["trials"]["a"]["mlflow_s"] >= 0.04 and events["trials"]["b"]["mlflow_s"] >= 0.02
    assert events["mlflow_total_s"] >= 0.06


def test_monitor_and_timed_callback_pickle_without_their_live_state(tmp_path):
    """Tune pickles callbacks with the experiment state (resume restores them)."""
    monitor = SweepMonitor(
        "demo", 2, 1, "val_r2", "max", tmp_path / "events.json", live=False, mlflow=TimedCallback(SlowCallback())
    )
    monitor.on_trial_start(0, [], trial("a"))
    restored = pickle.loads(pickle.dumps(monitor))
    assert restored.events == {} and restored.name == "demo" and isinstance(restored.mlflow.inner, SlowCallback)


def test_a_resumed_sweep_counts_the_trials_that_ended_before_it(tmp_path):
    """On resume Tune restores ended trials without calling their hooks; the view still counts them."""
    monitor = SweepMonitor("demo", 4, 2, "val_r2", "max", tmp_path / "events.json", live=False)
    done = trial("a", {"r2.final": 0.9, "val_r2": 0.8}, status="TERMINATED")
    pruned = trial("b", {"val_r2": 0.95}, status="TERMINATED")  # stopped early: no final metric
    broken = trial("c", status="ERROR")
    pending = trial("d", status="PENDING")
    monitor.on_step_end(0, [done, pruned, broken, pending])
    monitor.on_step_end(1, [done, pruned, broken, pending])  # counted once
    assert monitor.counts() == {"running": 0, "finished": 1, "stopped": 1, "failed": 1}
    assert monitor.best == 0.95
    monitor.on_trial_start(1, [], pending)
    pending.last_result, pending.status = {"r2.final": 0.7}, "TERMINATED"
    monitor.on_trial_complete(1, [], pending)
    assert monitor.counts() == {"running": 0, "finished": 2, "stopped": 1, "failed": 1}
    assert monitor.eta_s() == 0.0  # all 4 ended
    # a resume of a sweep that had ended: no step runs, the experiment's end still counts the restored trials
    again = SweepMonitor("demo", 4, 2, "val_r2", "max", tmp_path / "events2.json", live=False)
    again.on_experiment_end([done, pruned, broken, pending])
    assert again.counts() == {"running": 0, "finished": 2, "stopped": 1, "failed": 1}
