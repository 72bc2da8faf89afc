"""The evaluation of a trained Raptor as a list of read-outs (docs/science.md, "Evaluation read-outs").

`evaluate` runs the read-outs that ``eval.readouts`` names, in that order. Each is a class of study/registry.py
READOUTS behind one interface, `Readout`: a `name`, and a call that takes the trial's `EvalContext` and returns a
`ReadoutResult` (flat metrics, named in study/contract.py, and an optional record of result.json entries); `write`
draws its figures or tables into the trial folder. The context computes what several read-outs share (the Raptor's
rollout on a split with its R^2 and probe features, the teacher's probe features and probe, the dynamics subset) at
most once per evaluation. The read-outs are thin glue over the pure functions of study/science.

Adding a read-out = one `Readout` subclass + one line in READOUTS (+ its name in ``eval.readouts`` when it is not a
default).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch

from study.config import TrialConfig
from study.contract import TEACHER_TEST_ACC
from study.registry import READOUTS, resolve
from study.science.fidelity import (
    RolloutFidelity,
    evaluate_fidelity,
    fit_linear_probe,
    own_probe_accuracy,
    probe_features,
    rollout_features,
)
from study.science.raptor import Raptor
from study.science.sampling import take_rows
from study.trial.prepare import Prepared

T = TypeVar("T")


class ReadoutResult(NamedTuple):
    """What one read-out returns: flat metrics (names from study/contract.py) and top-level result.json entries
    (merged into the trial's result; a dict entry that several read-outs write is merged key by key)."""

    metrics: dict[str, float]
    record: dict[str, Any] = {}


@dataclass
class EvalContext:
    """One evaluation's inputs and the intermediates its read-outs share, each computed at most once.

    Args:
        prepared: the trial's teacher, cached states, labels, similarity, partition and subsets (`prepare`).
        raptor: the trained Raptor, on `prepared.device`.
    """

    prepared: Prepared
    raptor: Raptor
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> TrialConfig:
        return self.prepared.cfg

    @property
    def device(self) -> torch.device:
        return self.prepared.device

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for in this evaluation, the kept value after."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def fidelity(self, split: str) -> RolloutFidelity:
        """The Raptor's rollout from x_0 on a split: strict and pooled R^2 per layer and its probe features."""
        states, registers = self.prepared.states[split], self.prepared.teacher.num_registers
        return self.shared(
            f"fidelity.{split}",
            lambda: evaluate_fidelity(self.raptor, states, registers, self.device, self.cfg.runtime.amp),
        )

    def raptor_features(self, split: str) -> torch.Tensor:
        """The Raptor's probe features [N, 2D] on a split (from `fidelity` when that rollout was already run)."""
        if f"fidelity.{split}" in self.cache:
            return self.fidelity(split).features
        states = self.prepared.states[split]
        return self.shared(
            f"features.{split}", lambda: rollout_features(self.raptor, states, self.device, self.cfg.runtime.amp)
        )

    def teacher_features(self, split: str) -> torch.Tensor:
        """The teacher's probe features [N, 2D] on a split (`teacher_probe_features`)."""
        return self.shared(f"teacher_features.{split}", lambda: teacher_probe_features(self.prepared, split))

    def teacher_probe(self) -> tuple[float, Any]:
        """The teacher's own-probe test accuracy and its cls probe (`teacher_probes`)."""
        labels, width = self.prepared.labels, self.prepared.teacher.width
        return teacher_probes(
            self.teacher_features("train"), self.teacher_features("test"), labels["train"], labels["test"], width
        )

    def dynamics_subset(self) -> tuple[np.ndarray, np.ndarray]:
        """The dynamics subset of the test split: teacher states [n, L+1, T, D] float32, labels [n]."""

        def take() -> tuple[np.ndarray, np.ndarray]:
            subset = self.prepared.subsets["dynamics"]
            states = np.array(take_rows(self.prepared.states["test"], subset), dtype=np.float32)
            return states, np.asarray(self.prepared.labels["test"])[subset]

        return self.shared("dynamics_subset", take)


class Readout:
    """One read-out of a trained Raptor (module docstring); subclasses set `name` and implement `__call__`.

    `name` is its key in study/registry.py READOUTS; the evaluation times it as ``timings['{name}_s']``."""

    name: ClassVar[str]

    def enabled(self, cfg: TrialConfig) -> bool:
        """Whether this trial's config asks for it beyond listing it (e.g. ``dynamics.enabled``)."""
        return True

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        raise NotImplementedError

    def write(self, result: dict[str, Any], out_dir: Path) -> None:
        """Figures or tables of this read-out into the trial folder, from the trial's result.json content."""


@dataclass
class Evaluation:
    """What `evaluate` returns: the flat metrics, the result.json entries, and the read-outs that ran (in order)."""

    metrics: dict[str, float]
    record: dict[str, Any]
    readouts: list[Readout]


def merge_records(into: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Merge a read-out's result.json entries into `into`, dict entries key by key (two read-outs may share one)."""
    for key, value in record.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = merge_records(dict(into[key]), value)
        else:
            into[key] = value
    return into


def evaluate(prepared: Prepared, raptor: Raptor) -> Evaluation:
    """Run the trial's read-outs (``eval.readouts`` that are enabled) on the trained Raptor."""
    ctx = EvalContext(prepared, raptor)
    metrics: dict[str, float] = {}
    if prepared.teacher.test_acc is not None:
        metrics[TEACHER_TEST_ACC] = prepared.teacher.test_acc
    record: dict[str, Any] = {}
    ran = []
    for name in prepared.cfg.eval.readouts:
        readout = resolve(READOUTS, name)()
        if not readout.enabled(prepared.cfg):
            continue
        t0 = time.perf_counter()
        result = readout(ctx)
        prepared.timings[f"{name}_s"] = time.perf_counter() - t0
        metrics.update(result.metrics)
        merge_records(record, result.record)
        ran.append(readout)
    return Evaluation(metrics, record, ran)


@torch.no_grad()
def teacher_probe_features(prepared: Prepared, split: str, batch_size: int = 512) -> torch.Tensor:
    """The teacher's probe features (final-norm cls ++ final-norm mean patch of x_L, docs/science.md §5): [N, 2D]."""
    states = prepared.states[split]
    norm, registers = prepared.teacher.model.norm, prepared.teacher.num_registers
    out = [
        probe_features(
            norm, torch.from_numpy(np.array(states[i : i + batch_size, -1])).float().to(prepared.device), registers
        ).cpu()
        for i in range(0, len(states), batch_size)
    ]
    return torch.cat(out)


def teacher_features(prepared: Prepared, split: str, batch_size: int = 512) -> torch.Tensor:
    """The teacher's readout features (final norm on cls of x_L) for a split: [N, D]."""
    return teacher_probe_features(prepared, split, batch_size)[:, : prepared.teacher.width]


_TEACHER_PROBES: dict[str, tuple[float, object]] = {}
"""Per process: the teacher's own-probe accuracy and cls probe by a digest of their inputs (`teacher_probes`)."""


def teacher_probes(
    teacher_train: torch.Tensor, teacher_test: torch.Tensor, y_train: np.ndarray, y_test: np.ndarray, width: int
) -> tuple[float, object]:
    """The teacher's own-probe test accuracy and its cls probe (the transfer probe), fit once per process for the
    same teacher features: every trial of a teacher refits the same probe on the same inputs otherwise. The key is a
    digest of the features and labels; the seed is not part of it because the probe's lbfgs solver does not use
    `random_state` (scikit-learn uses it for the sag, saga and liblinear solvers only)."""
    digest = hashlib.sha1()
    for array in (teacher_train, teacher_test, y_train, y_test):
        digest.update(np.ascontiguousarray(array).tobytes())
    key = digest.hexdigest()
    if key not in _TEACHER_PROBES:
        if len(_TEACHER_PROBES) >= 8:
            _TEACHER_PROBES.pop(next(iter(_TEACHER_PROBES)))
        acc = own_probe_accuracy(teacher_train, y_train, teacher_test, y_test)
        cls_probe = fit_linear_probe(teacher_train[:, :width].numpy(), y_train)
        _TEACHER_PROBES[key] = (acc, cls_probe)
    return _TEACHER_PROBES[key]
