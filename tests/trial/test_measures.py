"""The paper's measurements of a trial (study/trial/measures.py) on the session's tiny digits trial."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from study.contract import (
    ACC_FINETUNED,
    ACC_FINETUNED_RATIO,
    ACC_FLOOR_DEEP,
    ACC_HEAD,
    ACC_HEAD_RATIO,
    ACC_HEAD_TEACHER,
    REPLACE_BASELINE,
    REPLACE_IMAGES,
    REPLACE_METRICS,
)
from study.science.distill import rollout_features
from study.science.raptor import Raptor
from study.trial import measures
from study.trial.measures import accuracy_subset, floor_deep, head_metrics, replace_measure, teacher_head


def test_head_metrics_of_a_raptor_that_is_the_teacher(prepared):
    raptor = Raptor(prepared.teacher.model, [(layer, layer) for layer in range(1, 5)], init="teacher")
    metrics = head_metrics(prepared, raptor, teacher_head(prepared))
    assert set(metrics) == {ACC_HEAD, ACC_HEAD_TEACHER, ACC_HEAD_RATIO, ACC_FINETUNED, ACC_FINETUNED_RATIO}
    assert metrics[ACC_HEAD] == pytest.approx(metrics[ACC_HEAD_TEACHER]) and metrics[ACC_HEAD_RATIO] == 1.0
    assert metrics[ACC_FINETUNED_RATIO] == pytest.approx(metrics[ACC_FINETUNED] / metrics[ACC_HEAD_TEACHER])
    assert prepared.teacher.test_acc == pytest.approx(metrics[ACC_HEAD_TEACHER], abs=0.02)  # the teacher's own path


def test_a_headless_teacher_fits_its_probe_once(prepared, monkeypatch):
    headless = copy.deepcopy(prepared.teacher.model)
    headless.reset_classifier(0)
    trial = dataclasses.replace(prepared, teacher=dataclasses.replace(prepared.teacher, model=headless))
    fits, fit = [], measures.fit_linear_probe
    monkeypatch.setattr(measures, "fit_linear_probe", lambda *a: fits.append(1) or fit(*a))
    monkeypatch.setattr(measures, "_HEAD_PROBES", {})
    first, second = teacher_head(trial), teacher_head(trial)
    assert len(fits) == 1
    assert torch.equal(first.linear.weight, second.linear.weight) and first.linear.out_features == 10


def test_replace_measure_on_the_accuracy_subset(prepared):
    labels = prepared.labels["test"]
    subset = accuracy_subset(labels, 200, prepared.cfg.data.split_seed)
    assert len(subset) == 200 and np.array_equal(subset, accuracy_subset(labels, 200, prepared.cfg.data.split_seed))
    assert len(accuracy_subset(labels, 10_000, 0)) == len(labels)  # capped at the split
    metrics, record = replace_measure(prepared, teacher_head(prepared), subset, chunk=64)
    assert metrics[REPLACE_IMAGES] == 200 and record["num_images"] == 200
    assert set(metrics) <= set(REPLACE_METRICS) | {REPLACE_IMAGES} and REPLACE_BASELINE in metrics
    draws = prepared.cfg.dynamics.replace_draws
    for kind in ("intra", "inter"):
        for n in (1, 2, 3):
            entry = record[kind][f"n{n}"]
            assert len(entry["draws"]) + entry["skipped"] == draws


def test_floor_deep_probes_random_deep_features(prepared):
    device, amp = prepared.device, prepared.cfg.runtime.amp
    seen = []

    def features(raptor, split):
        seen.append(raptor)
        return rollout_features(raptor, prepared.states[split], device, amp)

    metrics = floor_deep(prepared, features)
    assert 0.0 <= metrics[ACC_FLOOR_DEEP] <= 1.0
    gammas = [block.ls1.gamma for block in seen[0].blocks]
    assert all(torch.equal(gamma, torch.ones_like(gamma)) for gamma in gammas)
