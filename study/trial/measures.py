"""The paper's own measurements of a trial as read-outs (study/trial/evaluation.py; registered in study/registry.py
READOUTS): accuracy through the teacher's head with the fine-tuned probe ('head', docs/science.md §5) and the
layer-replacement test ('replace', docs/science.md §6). The science is in study/science/head.py and
study/science/dynamics.py; metric names come from study/contract.py.

Every accuracy of the dynamics (layer replacement, adjacent swaps) is scored on one stratified draw of
`dynamics.accuracy_samples` test images (`accuracy_inputs`) through the teacher's head (`shared_head`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from study.config import TrialConfig
from study.contract import (
    ACC_FINETUNED,
    ACC_FINETUNED_RATIO,
    ACC_HEAD,
    ACC_HEAD_RATIO,
    ACC_HEAD_TEACHER,
    DYNAMICS_KEY,
    REPLACE_BASELINE,
    REPLACE_IMAGES,
    replace_metric,
)
from study.science.dynamics import REPLACE_KINDS, layer_replacement
from study.science.fidelity import fit_linear_probe
from study.science.head import TeacherHead, head_scores, pooled_features, rollout_pooled
from study.science.sampling import take_rows
from study.trial import figures
from study.trial.evaluation import EvalContext, Readout, ReadoutResult

HEAD_KEYS = {
    "head": ACC_HEAD,
    "head_teacher": ACC_HEAD_TEACHER,
    "head_ratio": ACC_HEAD_RATIO,
    "finetuned": ACC_FINETUNED,
    "finetuned_ratio": ACC_FINETUNED_RATIO,
}
"""`study.science.head.head_scores` key -> metric name."""
REPLACE_KEY = "replace"
"""Entry of result.json's ``dynamics`` record holding the layer-replacement draws."""

REPLACE_CHUNK = 512
"""Images per pass of the layer replacement on any device: its chunk only sets speed and memory (the unreplaced
trajectory of a chunk, L + 1 states, is kept while its sequences run); on one CPU thread 512 takes 60% of the
time of 64 on the tiny digits teacher."""


def reads_the_cls_token(model: nn.Module) -> bool:
    """Whether the teacher's head reads the final-norm cls token as it is (timm ``global_pool='token'``, no
    ``fc_norm``, no attention pooling): then its input is the probes' cls readout (`ctx.teacher_features`)."""
    return (
        getattr(model, "global_pool", None) == "token"
        and getattr(model, "attn_pool", None) is None
        and isinstance(getattr(model, "fc_norm", None), nn.Identity)
    )


def teacher_head(ctx: EvalContext) -> TeacherHead:
    """The trial teacher's head (`TeacherHead`, on the trial's device). A headless teacher's is its linear probe on
    its pooled train features (docs/science.md §5): for a cls-token teacher the cls probe the probes read-out fits
    once per process (`ctx.teacher_probe`), else a probe fitted here on `head_input` of its train states."""
    prepared = ctx.prepared
    model = prepared.teacher.model
    if getattr(model, "num_classes", 0):
        return TeacherHead(model)
    if reads_the_cls_token(model):
        probe = ctx.teacher_probe()[1]
    else:
        pooled = pooled_features(model, prepared.states["train"][:, -1], ctx.device)
        probe = fit_linear_probe(pooled.numpy(), np.asarray(prepared.labels["train"]))
    return TeacherHead(model, probe).to(ctx.device)


def shared_head(ctx: EvalContext) -> TeacherHead:
    """The teacher's head, built once per evaluation (`teacher_head`)."""
    return ctx.shared("teacher_head", lambda: teacher_head(ctx))


def accuracy_inputs(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """x_0 [n, T, D] float32 and labels [n] of the accuracy subset, once per evaluation: `prepared.subsets['accuracy']`,
    a stratified draw of `dynamics.accuracy_samples` test images (capped at the split) seeded by the data split
    seed, so all trials of a teacher share it."""

    def take() -> tuple[np.ndarray, np.ndarray]:
        subset = ctx.prepared.subsets["accuracy"]
        x0 = np.array(take_rows(ctx.prepared.states["test"], subset)[:, 0], dtype=np.float32)
        return x0, np.asarray(ctx.prepared.labels["test"])[subset]

    return ctx.shared("accuracy_inputs", take)


class HeadAccuracy(Readout):
    """The teacher's own head on the Raptor's final states (acc.head, acc.head_teacher, acc.head_ratio) and the
    probe fine-tuned from it on the Raptor's train features (acc.finetuned, acc.finetuned_ratio), on the whole
    test split (docs/science.md §5: the paper's ablation table and k-table)."""

    name = "head"

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        prepared, device, amp = ctx.prepared, ctx.device, ctx.cfg.runtime.amp
        model, head = prepared.teacher.model, shared_head(ctx)
        scores = head_scores(
            head.linear,
            pooled_features(model, prepared.states["test"][:, -1], device),
            rollout_pooled(ctx.raptor, model, prepared.states["train"], device, amp),
            rollout_pooled(ctx.raptor, model, prepared.states["test"], device, amp),
            prepared.labels["train"],
            prepared.labels["test"],
        )
        return ReadoutResult({HEAD_KEYS[key]: value for key, value in scores.items()})


class LayerReplacement(Readout):
    """The paper's swap test on the teacher (docs/science.md §6): n = 1, 2, 3 layers replaced by blocks of their
    phase (intra) or of another phase (inter), `dynamics.replace_draws` seeded sets each, accuracy through the
    teacher's head on the accuracy subset: metrics ``dyn.replace.*``, every draw in result.json
    ``dynamics.replace``, layer_replacement.png. Runs when ``dynamics.enabled`` and ``dynamics.replace``."""

    name = "replace"

    def enabled(self, cfg: TrialConfig) -> bool:
        return cfg.dynamics.enabled and cfg.dynamics.replace

    def __call__(self, ctx: EvalContext) -> ReadoutResult:
        x0, labels = accuracy_inputs(ctx)
        record = layer_replacement(
            list(ctx.prepared.teacher.model.blocks),
            x0,
            shared_head(ctx),
            labels,
            ctx.prepared.partition.phase_bounds,
            draws=ctx.cfg.dynamics.replace_draws,
            seed=ctx.cfg.seed,
            chunk=REPLACE_CHUNK,
            device=ctx.device,
        )
        metrics = {REPLACE_BASELINE: record["baseline"], REPLACE_IMAGES: float(record["num_images"])}
        for kind in REPLACE_KINDS:
            for key, entry in record[kind].items():
                if entry["mean"] is not None:
                    metrics[replace_metric(kind, int(key[1:]))] = entry["mean"]
        return ReadoutResult(metrics, {DYNAMICS_KEY: {REPLACE_KEY: record}})

    def write(self, result: dict[str, Any], out_dir: Path) -> None:
        record = result.get(DYNAMICS_KEY, {}).get(REPLACE_KEY)
        if record:
            figures.save(figures.layer_replacement_figure(record), out_dir / "layer_replacement.png")
