"""The paper's own measurements of one trial (docs/science.md §5, §6): accuracy through the teacher's head, the
fine-tuned probe, layer replacement, and the deep probe floor.

Each function takes the trial's `Prepared` inputs (study/trial/pipeline.py) and returns metrics named in
study/contract.py; the science is in study/science/head.py and study/science/dynamics.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
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
    replace_metric,
)
from study.science.dynamics import REPLACE_KINDS, layer_replacement
from study.science.fidelity import FLOOR_DEEP_LAYERSCALE, fit_linear_probe, own_probe_accuracy
from study.science.head import TeacherHead, head_scores, pooled_features, rollout_pooled
from study.science.raptor import Raptor
from study.science.sampling import stratified_subset, take_rows

HEAD_KEYS = {
    "head": ACC_HEAD,
    "head_teacher": ACC_HEAD_TEACHER,
    "head_ratio": ACC_HEAD_RATIO,
    "finetuned": ACC_FINETUNED,
    "finetuned_ratio": ACC_FINETUNED_RATIO,
}
"""`study.science.head.head_scores` key -> metric name."""

_HEAD_PROBES: dict[str, Any] = {}
"""Per process: a headless teacher's probe by a digest of its pooled train features and labels (`teacher_head`)."""


def accuracy_subset(labels: Any, num_samples: int, split_seed: int) -> np.ndarray:
    """Indices of the test images every dynamics accuracy is scored on (`dynamics.accuracy_samples`): a stratified
    draw seeded by the data split seed, so all trials of a teacher share it (docs/science.md §6)."""
    return stratified_subset(np.asarray(labels), num_samples, split_seed + 14)


def teacher_head(prepared) -> TeacherHead:
    """The trial teacher's head (`TeacherHead`, on the trial's device); a headless teacher's is its linear probe on
    its pooled train features, fitted once per process for the same features (docs/science.md §5)."""
    model, device = prepared.teacher.model, prepared.device
    if getattr(model, "num_classes", 0):
        return TeacherHead(model)
    pooled = pooled_features(model, prepared.states["train"][:, -1], device)
    labels = np.asarray(prepared.labels["train"])
    key = hashlib.sha1(np.ascontiguousarray(pooled.numpy()).tobytes() + labels.tobytes()).hexdigest()
    if key not in _HEAD_PROBES:
        if len(_HEAD_PROBES) >= 8:
            _HEAD_PROBES.pop(next(iter(_HEAD_PROBES)))
        _HEAD_PROBES[key] = fit_linear_probe(pooled.numpy(), labels)
    return TeacherHead(model, _HEAD_PROBES[key]).to(device)


def head_metrics(prepared, raptor: Raptor, head: TeacherHead, finetune: bool = True) -> dict[str, float]:
    """acc.head, acc.head_teacher, acc.head_ratio and (with `finetune`) acc.finetuned, acc.finetuned_ratio on the
    whole test split; the fine-tuned probe trains on the whole train split (docs/science.md §5)."""
    device, amp = prepared.device, prepared.cfg.runtime.amp
    model = prepared.teacher.model
    teacher_test = pooled_features(model, prepared.states["test"][:, -1], device)
    raptor_test = rollout_pooled(raptor, model, prepared.states["test"], device, amp)
    raptor_train = rollout_pooled(raptor, model, prepared.states["train"], device, amp) if finetune else None
    scores = head_scores(
        head.linear,
        teacher_test,
        raptor_train,
        raptor_test,
        prepared.labels["train"],
        prepared.labels["test"],
        finetune=finetune,
    )
    return {HEAD_KEYS[key]: value for key, value in scores.items()}


def replace_measure(prepared, head: TeacherHead, subset: np.ndarray, chunk: int) -> tuple[dict[str, float], dict]:
    """The layer-replacement test on the teacher (docs/science.md §6) over the test images `subset`: (metrics
    dyn.replace.*, the JSON record with every draw for result.json)."""
    cfg = prepared.cfg
    record = layer_replacement(
        list(prepared.teacher.model.blocks),
        take_rows(prepared.states["test"], subset)[:, 0],
        head,
        np.asarray(prepared.labels["test"])[subset],
        prepared.partition.phase_bounds,
        draws=cfg.dynamics.replace_draws,
        seed=cfg.seed,
        chunk=chunk,
        device=prepared.device,
    )
    metrics = {REPLACE_BASELINE: record["baseline"], REPLACE_IMAGES: float(record["num_images"])}
    for kind in REPLACE_KINDS:
        for name, entry in record[kind].items():
            if entry["mean"] is not None:
                metrics[replace_metric(kind, int(name[1:]))] = entry["mean"]
    return metrics, record


def floor_deep(prepared, floor_features) -> dict[str, float]:
    """acc.floor_deep: the probe on a random Raptor whose LayerScale gammas are 1 (docs/science.md §5).
    `floor_features(raptor, split)` gives a Raptor's probe features of a split (the probes' own read-out)."""
    cfg = prepared.cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        raptor = Raptor(
            prepared.teacher.model,
            prepared.partition.phase_bounds,
            init="random",
            layerscale_init=FLOOR_DEEP_LAYERSCALE,
            cond_hidden=cfg.raptor.cond_hidden,
        ).to(prepared.device)
    train, test = floor_features(raptor, "train"), floor_features(raptor, "test")
    acc = own_probe_accuracy(train, prepared.labels["train"], test, prepared.labels["test"], seed=cfg.seed)
    return {ACC_FLOOR_DEEP: acc}
