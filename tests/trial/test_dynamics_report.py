"""Per-trial dynamics and adjacent layer swaps (study/trial/dynamics.py) and their read-outs in evaluate /
write_outputs.

Uses the session's tiny teacher (depth 4, k=2 partition, no registers) on <= 32 test samples.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from study.config import DynamicsConfig
from study.science.fidelity import fit_linear_probe
from study.science.raptor import Raptor
from study.trial.distillation import build_raptor
from study.trial.dynamics import adjacent_swaps, swap_readout, trial_dynamics
from study.trial.evaluation import evaluate, teacher_features
from study.trial.outputs import write_outputs

SMALL = DynamicsConfig(num_samples=32)
PER_MODEL = (
    "gamma_cls_mid",
    "gamma_patch_mid",
    "speed_cls_mean",
    "speed_patch_mean",
    "speed_cls_late_early",
    "speed_cls_peak_layer",
    "coherence_final",
    "srank_first",
    "srank_last",
    "recovery_last",
)
SWAP = ("dyn.swap.baseline_acc", "dyn.swap.intra_acc_mean", "dyn.swap.inter_acc_mean")
DYNAMICS = {f"dyn.{m}.{name}" for m in ("teacher", "raptor") for name in PER_MODEL}
EXPECTED = DYNAMICS | set(SWAP)


def _run(prepared, raptor, cfg=SMALL):
    return trial_dynamics(prepared.teacher.model, raptor, prepared.states["test"], 0, cfg, seed=0)


def _swaps(prepared, bounds=None, num_samples=32):
    model = prepared.teacher.model
    return adjacent_swaps(
        model,
        prepared.states["test"][:num_samples, 0],
        prepared.labels["test"][:num_samples],
        swap_readout(model),
        bounds or prepared.partition.phase_bounds,
    )


def test_raptor_with_k_equal_depth_has_the_teachers_dynamics(prepared):
    model = prepared.teacher.model
    raptor = Raptor(model, [(layer, layer) for layer in range(1, 5)])
    metrics, curves = _run(prepared, raptor)
    assert set(metrics) == DYNAMICS and all(np.isfinite(v) for v in metrics.values())
    assert curves["num_samples"] == 32 and curves["perturb_layer"] == 2
    for name, values in curves["teacher"].items():
        np.testing.assert_allclose(curves["raptor"][name], values, rtol=1e-4, atol=1e-5, err_msg=name)
    teacher = curves["teacher"]
    assert len(teacher["gamma_cls"]) == 5 and teacher["gamma_cls"][-1] == pytest.approx(1.0)
    assert len(teacher["speed_cls"]) == 4 and len(teacher["stable_rank"]) == 4 and len(teacher["recovery"]) == 2
    assert metrics["dyn.teacher.gamma_cls_mid"] == teacher["gamma_cls"][2]
    assert metrics["dyn.teacher.srank_last"] == teacher["stable_rank"][-1]
    assert "speed_reg" not in teacher  # no registers


def test_swap_baseline_is_the_teachers_head_accuracy_and_pairs_follow_the_phases(prepared):
    metrics, swaps = _swaps(prepared)
    assert set(metrics) == set(SWAP)
    model = prepared.teacher.model
    x0 = torch.from_numpy(np.array(prepared.states["test"][:32, 0]))
    with torch.no_grad():
        for block in model.blocks:
            x0 = block(x0)
        acc = (model.forward_head(model.norm(x0)).argmax(-1).numpy() == prepared.labels["test"][:32]).mean()
    assert metrics["dyn.swap.baseline_acc"] == pytest.approx(acc)
    (first, last), _ = prepared.partition.phase_bounds
    assert [tuple(p[:2]) for p in swaps["inter"]] == [(last, last + 1)]
    assert len(swaps["intra"]) == 2  # 3 adjacent pairs in 4 layers, one straddles the boundary


def test_headless_teacher_swaps_are_read_out_by_the_probe(prepared):
    probe = fit_linear_probe(teacher_features(prepared, "train").numpy(), prepared.labels["train"])
    headless = copy.deepcopy(prepared.teacher.model)
    headless.reset_classifier(0)
    readout = swap_readout(headless, probe)
    x = torch.from_numpy(np.array(prepared.states["test"][:16, -1]))
    with torch.no_grad():
        feats = headless.norm(x)[:, 0].numpy()
    assert np.array_equal(readout(x).argmax(-1).numpy(), probe.predict(feats))
    with pytest.raises(ValueError, match="probe"):
        swap_readout(headless)


def test_k1_has_no_inter_phase_metric_and_the_perturbed_layer_is_capped(prepared):
    metrics, swaps = _swaps(prepared, bounds=[(1, 4)])
    assert "dyn.swap.intra_acc_mean" in metrics and "dyn.swap.inter_acc_mean" not in metrics and not swaps["inter"]
    raptor = Raptor(prepared.teacher.model, [(1, 4)])
    metrics, curves = _run(prepared, raptor, DynamicsConfig(num_samples=8, perturb_layer=9))
    assert not any(k.startswith("dyn.swap") for k in metrics) and "swap" not in curves
    assert curves["perturb_layer"] == 3 and len(curves["teacher"]["recovery"]) == 1  # capped at L - 1


def test_evaluate_and_write_outputs_carry_the_dynamics(prepared, tmp_path):
    raptor = build_raptor(prepared.cfg, prepared.teacher, prepared.partition.phase_bounds)
    cfg = prepared.cfg.model_copy(update={"dynamics": SMALL})
    run = dataclasses.replace(prepared, cfg=cfg, timings={})
    evaluation = evaluate(run, raptor)
    assert EXPECTED <= set(evaluation.metrics) and {"dynamics_s", "swaps_s"} <= set(run.timings)
    write_outputs(run, raptor, evaluation, [], tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["dynamics"]) == {"num_samples", "perturb_layer", "eps", "teacher", "raptor", "swap", "replace"}
    assert result["metrics"]["dyn.raptor.srank_last"] == result["dynamics"]["raptor"]["stable_rank"][-1]
    for png in ("dynamics.png", "layer_swaps.png", "layer_replacement.png"):
        with Image.open(tmp_path / png) as image:
            assert image.format == "PNG" and image.size[0] > 300

    off = dataclasses.replace(
        prepared, cfg=cfg.model_copy(update={"dynamics": DynamicsConfig(enabled=False)}), timings={}
    )
    evaluation = evaluate(off, raptor)
    assert not any(k.startswith("dyn.") for k in evaluation.metrics)
    write_outputs(off, raptor, evaluation, [], tmp_path / "off")
    assert "dynamics" not in json.loads((tmp_path / "off" / "result.json").read_text())
    assert not (tmp_path / "off" / "dynamics.png").exists()

    no_swaps = dataclasses.replace(
        prepared, cfg=cfg.model_copy(update={"dynamics": DynamicsConfig(num_samples=8, swaps=False)}), timings={}
    )
    evaluation = evaluate(no_swaps, raptor)
    assert DYNAMICS <= set(evaluation.metrics) and not any(k.startswith("dyn.swap") for k in evaluation.metrics)
    assert "swap" not in evaluation.record["dynamics"] and "swaps_s" not in no_swaps.timings
