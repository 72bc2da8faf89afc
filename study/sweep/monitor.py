"""What a sweep shows and measures while it runs: one live progress view and per-trial event times.

`SweepMonitor` is a Ray Tune callback. It counts trials running / finished / failed, keeps the
best objective so far and an ETA, and (when `live`) renders them as one rich Live view that
replaces Tune's status tables and Ray's log lines (results/throughput/README.md). It also records
wall-clock event times per trial (Tune start, results, end) and writes them to `events.json`
beside the Tune experiment: with each trial's own stage timings (result.json) they split a
sweep's time into stages (`bench/sweep_throughput.py`).

`TimedCallback` wraps another callback (the MLflow one) and adds up the seconds its hooks block
Tune's event loop, per trial.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from study.contract import R2_FINAL
from study.trial.cache import atomic_write

HOOKS = (
    "setup",
    "on_step_begin",
    "on_step_end",
    "on_trial_start",
    "on_trial_restore",
    "on_trial_save",
    "on_trial_result",
    "on_trial_complete",
    "on_trial_recover",
    "on_trial_error",
    "on_checkpoint",
    "on_experiment_end",
)


class TimedCallback(Callback):
    """Delegates every hook to `inner` and records how long each call blocked, per trial (`seconds`)."""

    def __init__(self, inner: Callback):
        self.inner = inner
        self.seconds: dict[str, float] = {}
        self.total_s = 0.0

    def __getstate__(self) -> dict:
        return {"inner": self.inner}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["inner"])

    def _call(self, hook: str, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return getattr(self.inner, hook)(*args, **kwargs)
        finally:
            spent = time.perf_counter() - t0
            self.total_s += spent
            trial = kwargs.get("trial")
            if trial is not None:
                self.seconds[trial.trial_id] = self.seconds.get(trial.trial_id, 0.0) + spent

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state) -> None:
        self.inner.set_state(state)


def _forward(hook: str):
    def method(self, *args, **kwargs):
        return self._call(hook, *args, **kwargs)

    method.__name__ = hook
    return method


for _hook in HOOKS:
    setattr(TimedCallback, _hook, _forward(_hook))


class SweepMonitor(Callback):
    """Progress (running / finished / failed, best so far, ETA) and per-trial event times of one sweep.

    `total`: trials the sweep will run; `concurrency`: how many run at once (for the ETA);
    `events_path`: where `events.json` goes at the end; `live`: render the progress view;
    `mlflow`: the TimedCallback around the MLflow callback, whose blocking seconds join the events."""

    def __init__(
        self,
        name: str,
        total: int,
        concurrency: int,
        metric: str,
        mode: str,
        events_path: Path,
        live: bool = True,
        mlflow: TimedCallback | None = None,
        console: Console | None = None,
    ):
        self.name, self.total, self.concurrency, self.metric, self.mode = name, total, max(1, concurrency), metric, mode
        self.events_path, self.live_enabled, self.mlflow, self.console = events_path, live, mlflow, console
        self._reset()

    def _reset(self) -> None:
        self.started_at = time.time()
        self.events: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.best: float | None = None
        self.live: Live | None = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment: keep the settings only
        keep = ("name", "total", "concurrency", "metric", "mode", "events_path", "live_enabled", "mlflow")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.console = None
        self._reset()

    # -- Tune hooks -------------------------------------------------------------------
    def setup(self, **info) -> None:
        self.started_at = time.time()
        if self.live_enabled and self.live is None:
            self.live = Live(self.render(), console=self.console or Console(), refresh_per_second=2, transient=False)
            self.live.start()

    def on_step_end(self, iteration, trials, **info) -> None:
        self._count_restored(trials)
        if self.live is not None:
            self.live.update(self.render())

    def _count_restored(self, trials) -> None:
        """Trials that ended before a resume come back from Tune's state without hooks: count them (and their
        objective) once, so a resumed sweep's view says how many are done in all."""
        for trial in trials:
            if trial.trial_id in self.status or trial.status not in (Trial.TERMINATED, Trial.ERROR):
                continue
            result = trial.last_result or {}
            if trial.status == Trial.ERROR:
                self.status[trial.trial_id] = "failed"
            else:
                self.status[trial.trial_id] = "finished" if R2_FINAL in result else "stopped"
            self._consider(result.get(self.metric))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.events.setdefault(trial.trial_id, {})["start_unix"] = time.time()
        self.status[trial.trial_id] = "running"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        event = self.events.setdefault(trial.trial_id, {})
        event.setdefault("first_result_unix", time.time())
        event["last_result_unix"] = time.time()
        event["results"] = event.get("results", 0) + 1
        self._consider(result.get(self.metric))

    def _consider(self, value) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.events.setdefault(trial.trial_id, {})["end_unix"] = time.time()
        finished = R2_FINAL in (trial.last_result or {})
        self.status[trial.trial_id] = "finished" if finished else "stopped"

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.events.setdefault(trial.trial_id, {})["end_unix"] = time.time()
        self.status[trial.trial_id] = "failed"

    def on_experiment_end(self, trials, **info) -> None:
        self._count_restored(trials)
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            if not self.live.console.is_terminal:  # rich ends the view with a newline on terminals only
                self.live.console.line()
            self.live = None
        for trial_id, seconds in (self.mlflow.seconds if self.mlflow else {}).items():
            self.events.setdefault(trial_id, {})["mlflow_s"] = seconds
        payload = {
            "sweep": self.name,
            "started_unix": self.started_at,
            "ended_unix": time.time(),
            "mlflow_total_s": self.mlflow.total_s if self.mlflow else None,
            "trials": self.events,
        }
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.events_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))

    # -- view -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"running": 0, "finished": 0, "stopped": 0, "failed": 0}
        for status in self.status.values():
            out[status] += 1
        return out

    def eta_s(self) -> float | None:
        """Seconds left: mean wall time of ended trials x trials not ended, over the concurrency."""
        ended = [e["end_unix"] - e["start_unix"] for e in self.events.values() if "end_unix" in e and "start_unix" in e]
        if not ended:
            return None
        left = self.total - sum(1 for status in self.status.values() if status != "running")
        return sum(ended) / len(ended) * math.ceil(left / self.concurrency)

    def render(self) -> Table:
        counts, eta = self.counts(), self.eta_s()
        elapsed = time.time() - self.started_at
        table = Table.grid(padding=(0, 2))
        table.add_row(
            Text(f"sweep {self.name}", style="bold"),
            f"{counts['running']} running",
            f"{counts['finished']} finished",
            *([f"{counts['stopped']} stopped"] if counts["stopped"] else []),
            Text(f"{counts['failed']} failed", style="red" if counts["failed"] else ""),
            f"of {self.total}",
        )
        best = "-" if self.best is None else f"{self.best:.4g}"
        table.add_row(
            f"best {self.metric} ({self.mode}): {best}",
            f"elapsed {_clock(elapsed)}",
            f"ETA {_clock(eta) if eta is not None else '-'}",
        )
        return Group(table)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
