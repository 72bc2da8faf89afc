"""Where a sweep's outputs go under its runs root (``--out``, default ``runs/``).

Output layout under the output root (default `runs/`):
    mlflow.db, mlartifacts/     the local MLflow store (unless --tracking-uri)
    ray/<sweep>/                Tune experiment state (what `resume` restores) and
                                sweep_spec.json, the spec as launched (--set applied)
    ray/_train/<sweep>/<trial>/ Ray Train runs with per-epoch checkpoints
    trials/<sweep>/<trial>/     each trial's result.json, figures, Raptor weights
    ray/<sweep>/optuna.journal  the Optuna study (unless the spec's search.storage names an RDB)
    logs/<sweep>/ray            a link to Ray's log files; logs/mlflow-ui.log, logs/optuna-dashboard.log: the servers'
                                own output (`raptor-study ui`, `dashboard`; the console shows it with -v)
    reports/<sweep>/            `raptor-study report` (unless --report-dir)
    cache/                      teachers and their activations, shared by the trials
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepPaths:
    """Absolute locations of one sweep's outputs (must be shared by all nodes of a cluster)."""

    root: Path

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    def experiment(self, sweep: str) -> Path:
        return self.ray / sweep

    def launched_spec(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_spec.json"

    def train(self, sweep: str) -> Path:
        return self.ray / "_train" / sweep

    def trials(self, sweep: str) -> Path:
        return self.root / "trials" / sweep

    def logs(self, sweep: str) -> Path:
        return self.root / "logs" / sweep

    def events(self, sweep: str) -> Path:
        return self.experiment(sweep) / "events.json"

    def sweep_timings(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_timings.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def sweep_id_file(self, sweep: str) -> Path:
        return self.experiment(sweep) / "sweep_id"

    def optuna_journal(self, sweep: str) -> Path:
        return self.experiment(sweep) / "optuna.journal"

    def lock(self, sweep: str) -> Path:
        return self.ray / f".{sweep}.lock"
