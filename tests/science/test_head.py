"""Accuracy through the teacher's own head (study/science/head.py) on the session's tiny digits teacher."""

import copy

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from study.science.fidelity import fit_linear_probe
from study.science.head import (
    TeacherHead,
    finetune_head,
    head_accuracy,
    head_input,
    head_scores,
    linear_from_probe,
    pooled_features,
)
from study.science.raptor import Raptor

CHANCE = 0.1  # ten digit classes, stratified splits


def finals(prepared, split):
    return prepared.states[split][:, -1]


@torch.no_grad()
def raptor_finals(raptor, prepared, split):
    return raptor.final(torch.from_numpy(np.array(prepared.states[split][:, 0])).float())


def test_head_is_the_teachers_own_readout(prepared, teacher_model):
    """On a teacher with classes, TeacherHead(x_L) is forward_head(norm(x_L)), i.e. the teacher's logits."""
    from study.science.states import teacher_states
    from study.trial.data import load_splits

    head = TeacherHead(teacher_model)
    assert head.linear is teacher_model.head
    images = load_splits(prepared.cfg.data, prepared.teacher.spec).test.tensors[0][:8]
    with torch.no_grad():
        x_last = teacher_states(teacher_model, images)[:, -1]
        torch.testing.assert_close(head(x_last), teacher_model(images), rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_head_honours_the_global_pool(pool):
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2, global_pool=pool
    ).eval()
    x = torch.randn(4, 5, 16)
    head = TeacherHead(model)
    # token: the final norm's cls token; avg: timm moves the norm after pooling (fc_norm, final norm Identity)
    expected = model.norm(x)[:, 0] if pool == "token" else model.fc_norm(x[:, 1:].mean(dim=1))
    with torch.no_grad():
        torch.testing.assert_close(head_input(model, x), expected)
        torch.testing.assert_close(head(x), model.forward_head(model.norm(x)))


@pytest.mark.parametrize("classes", [2, 4])
def test_linear_from_probe_reproduces_the_probe(classes):
    gen = np.random.default_rng(0)
    feats = gen.normal(size=(200, 6)) * gen.uniform(0.5, 5.0, size=6) + gen.normal(size=6)
    labels = (feats[:, 0] + feats[:, 1] > np.median(feats[:, 0] + feats[:, 1])).astype(int) * (classes // 2)
    labels = labels + gen.integers(0, classes // 2, size=200)
    probe = fit_linear_probe(feats, labels)
    linear = linear_from_probe(probe)
    with torch.no_grad():
        logits = linear(torch.from_numpy(feats).float()).double().numpy()
    np.testing.assert_array_equal(logits.argmax(axis=1), probe.predict(feats))
    if classes > 2:
        np.testing.assert_allclose(logits, probe.decision_function(feats), rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(logits[:, 1] - logits[:, 0], probe.decision_function(feats), rtol=1e-4, atol=1e-4)


def test_headless_teacher_uses_its_probe(prepared, teacher_model):
    """A headless teacher's head is its probe on its pooled features: same predictions as the probe."""
    teacher_pooled = pooled_features(teacher_model, finals(prepared, "train"))
    probe = fit_linear_probe(teacher_pooled.numpy(), prepared.labels["train"])
    model = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=0, embed_dim=32, depth=1, num_heads=2
    ).eval()
    model.norm.load_state_dict(teacher_model.norm.state_dict())
    with pytest.raises(ValueError, match="headless"):
        TeacherHead(model)
    head = TeacherHead(model, probe)
    test_pooled = pooled_features(head.model, finals(prepared, "test"))
    with torch.no_grad():
        pred = head.linear(test_pooled).argmax(dim=-1).numpy()
    np.testing.assert_array_equal(pred, probe.predict(test_pooled.numpy()))


@pytest.fixture(scope="module")
def probe_head(prepared):
    """The session teacher made headless (a copy) with its probe as its head, the ONNX ViT-S/14's case: the
    tiny teacher's own head is barely trained, its probe reads its features well above chance."""
    teacher_model = prepared.teacher.model
    headless = copy.deepcopy(teacher_model)
    headless.reset_classifier(0)
    pooled = pooled_features(teacher_model, finals(prepared, "train"))  # the same pooling
    return TeacherHead(headless, fit_linear_probe(pooled.numpy(), prepared.labels["train"]))


@pytest.mark.parametrize("layerscale", [1e-5, 1.0])
def test_random_raptor_scores_near_chance_through_the_head(prepared, teacher_model, probe_head, layerscale):
    y_test = prepared.labels["test"]
    teacher_acc = head_accuracy(probe_head.linear, pooled_features(probe_head.model, finals(prepared, "test")), y_test)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        raptor = Raptor(teacher_model, prepared.partition.phase_bounds, init="random", layerscale_init=layerscale)
    raptor_feats = pooled_features(probe_head.model, raptor_finals(raptor.eval(), prepared, "test"))
    raptor_acc = head_accuracy(probe_head.linear, raptor_feats, y_test)
    assert teacher_acc > CHANCE + 0.2
    assert abs(raptor_acc - CHANCE) < 0.05


def test_teacher_initialised_one_block_per_layer_raptor_matches_the_teacher(prepared, teacher_model):
    head = TeacherHead(teacher_model)
    raptor = Raptor(teacher_model, [(layer, layer) for layer in range(1, 5)], init="teacher").eval()
    feats = {
        split: (
            pooled_features(head.model, finals(prepared, split)),
            pooled_features(head.model, raptor_finals(raptor, prepared, split)),
        )
        for split in ("train", "test")
    }
    scores = head_scores(
        head.linear,
        feats["test"][0],
        feats["train"][1],
        feats["test"][1],
        prepared.labels["train"],
        prepared.labels["test"],
    )
    assert scores["head"] == scores["head_teacher"] and scores["head_ratio"] == 1.0
    assert scores["finetuned_ratio"] == scores["finetuned"] / scores["head_teacher"]
    assert set(
        head_scores(
            head.linear,
            *feats["test"],
            feats["test"][1],
            prepared.labels["test"],
            prepared.labels["test"],
            finetune=False,
        )
    ) == {"head", "head_teacher", "head_ratio"}


def test_finetuning_starts_from_the_head_and_learns(prepared, teacher_model):
    """Zero steps leave the head as it is; on relabelled classes, where the frozen head is wrong by design,
    fine-tuning learns the new mapping (scored on the test split); the input head is never changed."""
    head = TeacherHead(teacher_model)
    train, test = (pooled_features(head.model, finals(prepared, split)) for split in ("train", "test"))
    y_train, y_test = ((prepared.labels[s] + 1) % 10 for s in ("train", "test"))
    before = head.linear.weight.clone()
    untouched = finetune_head(head.linear, train, y_train, steps=0)
    torch.testing.assert_close(untouched.weight, head.linear.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(untouched.bias, head.linear.bias, rtol=1e-5, atol=1e-6)
    frozen = head_accuracy(head.linear, test, y_test)
    tuned = head_accuracy(finetune_head(head.linear, train, y_train), test, y_test)
    assert frozen < 2 * CHANCE and tuned > 3 * CHANCE
    assert torch.equal(head.linear.weight, before)
