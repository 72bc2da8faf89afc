"""The one trial pipeline: data -> teacher -> states -> similarity/partition -> distil -> metrics -> record.

`run_trial` runs every stage in order, whether it is called by `raptor-study
trial` or by a sweep's Tune trial. The only thing a caller chooses is *where the
distillation steps execute*: a `DistillRunner` strategy. `InProcess` trains the
Raptor in the calling process; `study.sweep.raytrain.RayTrainWorkers` trains it on
Ray Train workers (DDP). Everything before and after the distillation is shared,
so a read-out added to the evaluation appears in both paths.

Stages, one module each: `prepare` (study/trial/prepare.py: teacher, states,
similarity, partition; cached and shared across trials), `DistillRunner.distill`
(study/trial/distillation.py), `evaluate` (study/trial/evaluation.py: the read-outs
``eval.readouts`` names), `write_outputs` (study/trial/outputs.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from study.config import TrialConfig
from study.trial.distillation import DistillRunner, InProcess, OnEpoch
from study.trial.evaluation import evaluate
from study.trial.outputs import MODEL_EXAMPLE_ROWS, write_outputs
from study.trial.prepare import prepare

__all__ = ["MODEL_EXAMPLE_ROWS", "InProcess", "prepare", "run_trial"]
"""The stages' entry points that callers outside study/trial use (the stages themselves live in their modules)."""


def run_trial(
    cfg: TrialConfig,
    out_dir: Path,
    runner: DistillRunner | None = None,
    on_epoch: OnEpoch | None = None,
    keep_model: bool = False,
) -> dict:
    """Run every stage of one trial and write its folder; `runner` picks where distillation runs;
    `keep_model` keeps what an MLflow model is logged from (`write_outputs`)."""
    runner = runner or InProcess()
    t_start, started_unix = time.perf_counter(), time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(cfg)
    prepared.timings["started_unix"] = started_unix
    t0 = time.perf_counter()
    raptor, history = runner.distill(prepared, out_dir, on_epoch)
    prepared.timings["distill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = evaluate(prepared, raptor.to(prepared.device))
    prepared.timings["evaluate_s"] = time.perf_counter() - t0
    prepared.timings["total_s"] = time.perf_counter() - t_start
    result = write_outputs(prepared, raptor, evaluation, history, out_dir, keep_model=keep_model)
    if hasattr(runner, "cleanup"):
        runner.cleanup(out_dir)
    return result
