"""What a sweep will do, from its spec alone (no Ray, no MLflow): the trial count, the search, the teachers it
trains, the resources a trial holds and how many run at once. `raptor-study sweep SPEC --dry-run` prints it."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from study.sweep.space import SweepSpec

MAX_ENUMERATED = 100_000
"""Grid points enumerated to count distinct teachers; a larger grid is counted by its teacher axes' product."""


def grid_size(spec: SweepSpec) -> int:
    """Trials per sample: the product of the choice lists for a grid search, else 1."""
    size = 1
    if spec.search.sampler == "grid":
        for dist in spec.space.values():
            size *= len(dist.choice or [None])
    return size


def trial_count(spec: SweepSpec) -> int:
    """Trials the sweep launches: num_samples, times every combination of the choice lists for a grid."""
    return spec.search.num_samples * grid_size(spec)


def teacher_axes(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The searched keys that change which teacher a trial trains: (choice keys, drawn keys). A key counts when
    two of its extreme values give two teacher keys (`TrialConfig.teacher_key`)."""
    base = spec.trial_config({}).teacher_key()
    chosen, drawn = [], []
    for key, dist in spec.space.items():
        corners = dist.corners()
        if len({spec.trial_config({key: value}).teacher_key() for value in corners} | {base}) > 1:
            (chosen if dist.choice is not None else drawn).append(key)
    return chosen, drawn


def teacher_count(spec: SweepSpec) -> tuple[int, str]:
    """How many distinct teachers the sweep trains: (count, "" when exact, else why it is an upper bound)."""
    chosen, drawn = teacher_axes(spec)
    trials = trial_count(spec)
    if drawn:
        return trials, f"{', '.join(drawn)} drawn per trial"
    combos = 1
    for key in chosen:
        combos *= len(spec.space[key].choice or [])
    if combos > MAX_ENUMERATED:
        return min(combos, trials), "a large grid"
    keys = {
        spec.trial_config(dict(zip(chosen, values, strict=True))).teacher_key()
        for values in itertools.product(*(spec.space[key].choice or [] for key in chosen))
    }
    if spec.search.sampler == "grid":
        return len(keys), ""
    return min(len(keys), trials), "as the sampler draws" if len(keys) > 1 else ""


def gpus_here() -> int:
    """NVIDIA GPUs of this machine, from the driver's /proc entries (no CUDA import)."""
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


@dataclass(frozen=True)
class Plan:
    """A sweep's plan, as `--dry-run` prints it.

    Args:
        spec: the validated spec.
        cpus: CPUs of the machine the trials would run on (default: this one's).
        gpus: its GPUs (default: this one's NVIDIA GPUs).
    """

    spec: SweepSpec
    cpus: float
    gpus: float

    @classmethod
    def here(cls, spec: SweepSpec) -> Plan:
        return cls(spec, float(os.cpu_count() or 1), float(gpus_here()))

    def per_trial(self) -> dict[str, float]:
        """What one trial holds: its driver's share and its workers' (study/sweep/tuning.py)."""
        res = self.spec.resources
        return {
            "CPU": res.driver_cpu + res.workers * res.worker_cpu,
            "GPU": res.driver_gpu + res.workers * res.worker_gpu,
        }

    def at_once(self) -> int:
        """search.max_concurrent, capped by what this machine holds (0: one trial does not fit)."""
        fits = self.spec.search.max_concurrent
        for kind, have in (("CPU", self.cpus), ("GPU", self.gpus)):
            need = self.per_trial()[kind]
            if need > 0:
                fits = min(fits, int(have // need + 1e-9))
        return fits

    def search_line(self) -> str:
        s = self.spec.search
        if s.sampler == "grid":
            axes = " x ".join(f"{key} ({len(d.choice)})" for key, d in self.spec.space.items() if d.choice is not None)
            drawn = [key for key, d in self.spec.space.items() if d.choice is None]
            line = f"grid over {axes or 'no choice entries'}"
            line += f", x {s.num_samples} samples" if s.num_samples > 1 else ""
            return line + (f"; drawn at random: {', '.join(drawn)}" if drawn else "")
        return f"Optuna {s.sampler.upper() if s.sampler == 'tpe' else s.sampler} sampler (seed {s.seed})"

    def lines(self) -> list[str]:
        spec, s, res = self.spec, self.spec.search, self.spec.resources
        teachers, how = teacher_count(spec)
        per = self.per_trial()
        fits = self.at_once()
        here = f"{self.cpus:g} CPUs, {self.gpus:g} GPUs here"
        concurrency = (
            f"{fits} at once (search.max_concurrent {s.max_concurrent}; {here})"
            if fits
            else f"none fits here ({here}): join a cluster with --address"
        )
        return [
            f"sweep {spec.name}: {trial_count(spec)} trials, objective {s.metric} ({s.mode})",
            f"search: {self.search_line()}; scheduler: {spec.scheduler.type}",
            f"teachers to train: {'at most ' if how else ''}{teachers}"
            + (f" ({how})" if how else "")
            + ", each once (shared through the cache)",
            f"per trial: {per['CPU']:g} CPU, {per['GPU']:g} GPU (driver {res.driver_cpu:g} CPU / {res.driver_gpu:g} "
            f"GPU + {res.workers} worker(s) x {res.worker_cpu:g} CPU / {res.worker_gpu:g} GPU)",
            f"concurrency: {concurrency}",
        ]
