"""The paper's measurements as read-outs (study/trial/measures.py, probes' deep floor) on the tiny digits trial."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from study.contract import (
    ACC_FINETUNED,
    ACC_FINETUNED_RATIO,
    ACC_FLOOR,
    ACC_FLOOR_DEEP,
    ACC_HEAD,
    ACC_HEAD_RATIO,
    ACC_HEAD_TEACHER,
    DYNAMICS_KEY,
    REPLACE_BASELINE,
    REPLACE_IMAGES,
    REPLACE_METRICS,
    SWAP_BASELINE,
)
from study.science.fidelity import fit_linear_probe
from study.science.head import pooled_features
from study.science.raptor import Raptor
from study.trial.evaluation import EvalContext
from study.trial.measures import HeadAccuracy, LayerReplacement, accuracy_inputs, reads_the_cls_token, teacher_head
from study.trial.probes import Probes
from study.trial.readouts import AdjacentSwaps


def teacher_copy_raptor(prepared):
    return Raptor(prepared.teacher.model, [(layer, layer) for layer in range(1, 5)], init="teacher")


def test_head_readout_of_a_raptor_that_is_the_teacher(prepared):
    metrics = HeadAccuracy()(EvalContext(prepared, teacher_copy_raptor(prepared))).metrics
    assert set(metrics) == {ACC_HEAD, ACC_HEAD_TEACHER, ACC_HEAD_RATIO, ACC_FINETUNED, ACC_FINETUNED_RATIO}
    assert metrics[ACC_HEAD] == pytest.approx(metrics[ACC_HEAD_TEACHER]) and metrics[ACC_HEAD_RATIO] == 1.0
    assert metrics[ACC_FINETUNED_RATIO] == pytest.approx(metrics[ACC_FINETUNED] / metrics[ACC_HEAD_TEACHER])
    assert prepared.teacher.test_acc == pytest.approx(metrics[ACC_HEAD_TEACHER], abs=0.02)  # the teacher's own path


def headless_trial(prepared, pool="token"):
    headless = copy.deepcopy(prepared.teacher.model)
    headless.reset_classifier(0, global_pool=pool)
    return dataclasses.replace(prepared, teacher=dataclasses.replace(prepared.teacher, model=headless))


def test_a_headless_cls_teacher_reads_out_with_the_probes_cls_probe(prepared):
    """Its head is the cls probe the probes read-out fits (one fit per process), on the same cls readout."""
    ctx = EvalContext(headless_trial(prepared), teacher_copy_raptor(prepared))
    head = teacher_head(ctx)
    assert reads_the_cls_token(ctx.prepared.teacher.model) and head.linear.out_features == 10
    cls_probe = ctx.teacher_probe()[1]
    x_last = torch.from_numpy(np.array(prepared.states["test"][:, -1]))
    cls = ctx.teacher_features("test")[:, : prepared.teacher.width].numpy()
    with torch.no_grad():
        assert np.array_equal(head(x_last).argmax(-1).numpy(), cls_probe.predict(cls))


def test_a_headless_avg_pool_teacher_fits_its_probe_on_its_pooled_features(prepared):
    ctx = EvalContext(headless_trial(prepared, pool="avg"), teacher_copy_raptor(prepared))
    model = ctx.prepared.teacher.model
    assert not reads_the_cls_token(model)
    head = teacher_head(ctx)
    pooled = pooled_features(model, prepared.states["train"][:, -1])
    probe = fit_linear_probe(pooled.numpy(), prepared.labels["train"])
    with torch.no_grad():
        assert np.array_equal(head.linear(pooled).argmax(-1).numpy(), probe.predict(pooled.numpy()))


def test_replacement_and_swaps_share_the_accuracy_subset(prepared):
    cfg = prepared.cfg.model_copy(update={"dynamics": prepared.cfg.dynamics.model_copy(update={"replace_draws": 5})})
    trial = dataclasses.replace(prepared, cfg=cfg)
    ctx = EvalContext(trial, teacher_copy_raptor(prepared))
    x0, labels = accuracy_inputs(ctx)
    assert len(x0) == len(labels) == min(cfg.dynamics.accuracy_samples, len(prepared.labels["test"]))
    result = LayerReplacement()(ctx)
    record = result.record[DYNAMICS_KEY]["replace"]
    assert result.metrics[REPLACE_IMAGES] == record["num_images"] == len(labels)
    assert set(result.metrics) <= set(REPLACE_METRICS) | {REPLACE_IMAGES} and REPLACE_BASELINE in result.metrics
    for kind in ("intra", "inter"):
        for n in (1, 2, 3):
            entry = record[kind][f"n{n}"]
            assert len(entry["draws"]) + entry["skipped"] == 5
    swaps = AdjacentSwaps()(ctx)
    assert swaps.metrics[SWAP_BASELINE] == result.metrics[REPLACE_BASELINE]  # same images, same head
    assert swaps.record[DYNAMICS_KEY]["swap"]["num_images"] == len(labels)


def test_probes_log_the_deep_floor(prepared):
    metrics = Probes()(EvalContext(prepared, teacher_copy_raptor(prepared))).metrics
    assert 0.0 <= metrics[ACC_FLOOR_DEEP] <= 1.0 and metrics[ACC_FLOOR_DEEP] != metrics[ACC_FLOOR]


def test_accuracy_subset_is_a_seeded_stratified_draw(tiny_overrides, prepared):
    from study.config import load_trial_config
    from study.trial.prepare import prepare

    assert len(prepared.subsets["accuracy"]) == len(prepared.labels["test"])  # 2,500 capped at the split
    cfg = load_trial_config(None, {**tiny_overrides, "dynamics.accuracy_samples": 100})
    subset = prepare(cfg).subsets["accuracy"]
    labels = np.asarray(prepared.labels["test"])
    expected = 100 * np.bincount(labels, minlength=10) / len(labels)  # each class in proportion to the split
    assert len(subset) == 100 and np.abs(np.bincount(labels[subset], minlength=10) - expected).max() <= 1
    assert np.array_equal(subset, prepare(cfg).subsets["accuracy"])
