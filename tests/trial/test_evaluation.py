"""The evaluation as a list of read-outs (study/trial/evaluation.py): the registered read-outs, the choice by
``eval.readouts``, shared intermediates computed once, and a read-out added as one class + one registry line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from study import registry
from study.contract import ACC_RAPTOR, PHASE_METRICS, R2_POOLED_FINAL, SWAP_BASELINE, VAL_R2
from study.trial.distillation import build_raptor
from study.trial.evaluation import EvalContext, Readout, ReadoutResult, evaluate
from study.trial.outputs import write_outputs


@pytest.fixture(scope="module")
def raptor(prepared):
    return build_raptor(prepared.cfg, prepared.teacher, prepared.partition.phase_bounds)


def _with(prepared, readouts, **dynamics):
    cfg = prepared.cfg.model_copy(
        update={
            "eval": prepared.cfg.eval.model_copy(update={"readouts": tuple(readouts)}),
            "dynamics": prepared.cfg.dynamics.model_copy(update={"num_samples": 16, **dynamics}),
        }
    )
    return dataclasses.replace(prepared, cfg=cfg, timings={})


def test_every_registered_readout_is_a_readout_named_by_its_key():
    for name in registry.READOUTS:
        cls = registry.resolve(registry.READOUTS, name)
        assert issubclass(cls, Readout) and cls.name == name
    assert set(registry.DEFAULT_READOUTS) <= set(registry.READOUTS)


def test_only_the_listed_readouts_run_in_their_order(prepared, raptor):
    run = _with(prepared, ["partition", "fidelity"])
    evaluation = evaluate(run, raptor)
    assert [r.name for r in evaluation.readouts] == ["partition", "fidelity"]
    assert {R2_POOLED_FINAL, VAL_R2, *PHASE_METRICS} <= set(evaluation.metrics)
    assert ACC_RAPTOR not in evaluation.metrics and SWAP_BASELINE not in evaluation.metrics
    assert set(evaluation.record) == {"r2_per_layer", "r2_pooled_per_layer"}
    assert {"partition_s", "fidelity_s"} <= set(run.timings) and "probes_s" not in run.timings


def test_a_readout_is_one_class_and_one_registry_line(prepared, raptor, tmp_path, monkeypatch):
    class TestRollout(Readout):
        """A toy read-out: the Raptor's final-layer R^2 on the test split, read from the shared rollout."""

        name = "toy"

        def __call__(self, ctx: EvalContext) -> ReadoutResult:
            r2 = ctx.fidelity("test").r2["all"]
            return ReadoutResult({"r2.toy": float(r2[-1])}, {"dynamics": {"toy": [float(v) for v in r2]}})

        def write(self, result, out_dir) -> None:
            (out_dir / "toy.json").write_text(json.dumps(result["dynamics"]["toy"]))

    monkeypatch.setitem(registry.READOUTS, "toy", TestRollout)  # the one registry line
    run = _with(prepared, ["fidelity", "toy", "swaps"])
    evaluation = evaluate(run, raptor)
    assert evaluation.metrics["r2.toy"] == evaluation.metrics["r2.final"]  # the same rollout, shared
    assert set(evaluation.record["dynamics"]) == {"toy", "swap"}  # two read-outs share one result.json entry
    result = write_outputs(run, raptor, evaluation, [], tmp_path)
    assert json.loads((tmp_path / "toy.json").read_text()) == result["dynamics"]["toy"]
    assert (tmp_path / "layer_swaps.png").is_file() and not (tmp_path / "dynamics.png").exists()


def test_shared_intermediates_are_computed_once(prepared, raptor):
    ctx = EvalContext(prepared, raptor)
    assert ctx.fidelity("test") is ctx.fidelity("test")
    assert ctx.raptor_features("test") is ctx.fidelity("test").features  # probes reuse the fidelity rollout
    assert ctx.teacher_features("train") is ctx.teacher_features("train")
    calls = []
    assert ctx.shared("k", lambda: calls.append(1) or 7) == ctx.shared("k", lambda: calls.append(1) or 8) == 7
    assert calls == [1]


def test_disabled_readouts_are_skipped_by_their_config(prepared, raptor):
    run = _with(prepared, ["dynamics", "swaps"], enabled=False)
    assert evaluate(run, raptor).readouts == []
    run = _with(prepared, ["dynamics", "swaps"], swaps=False)
    assert [r.name for r in evaluate(run, raptor).readouts] == ["dynamics"]
