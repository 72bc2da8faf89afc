import numpy as np
import pytest
import torch

from study.science.fidelity import FidelityAccumulator, fit_linear_probe, r2_score, task_fidelity


def batch(n=16, layers=3, tokens=6, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = 3.0 + torch.randn(n, layers, tokens, dim, generator=gen) * torch.linspace(0.5, 2, dim)
    return target + 0.3 * torch.randn(target.shape, generator=gen), target


def test_r2_of_perfect_and_mean_predictions():
    _, target = batch()
    assert r2_score(target, target) == 1.0
    assert r2_score(target.mean(0, keepdim=True).expand_as(target), target) == pytest.approx(0.0, abs=1e-9)
    assert r2_score(torch.zeros_like(target), target) < 0


def test_r2_matches_explicit_formula_on_numpy_input():
    pred, target = (x.numpy() for x in batch())
    sse = ((pred - target) ** 2).sum()
    sst = ((target - target.mean(0)) ** 2).sum()
    assert r2_score(pred, target) == pytest.approx(1 - sse / sst, rel=1e-12)


def test_streaming_accumulator_equals_one_shot_r2():
    pred, target = batch(n=23)
    acc = FidelityAccumulator(num_layers=3, num_registers=2)
    for start, stop in [(0, 1), (1, 8), (8, 20), (20, 23)]:  # uneven batches, one of a single sample
        acc.update(pred[start:stop], target[start:stop])
    r2 = acc.compute()
    assert set(r2) == {"all", "cls", "reg", "patch"}
    groups = {"all": slice(None), "cls": slice(0, 1), "reg": slice(1, 3), "patch": slice(3, None)}
    for name, tokens in groups.items():
        expected = [r2_score(pred[:, layer, tokens], target[:, layer, tokens]) for layer in range(3)]
        np.testing.assert_allclose(r2[name], expected, rtol=1e-10)
        assert r2[name].shape == (3,)


def test_groups_slice_the_right_tokens():
    _, target = batch(tokens=7)
    pred = target.clone()
    pred[:, 0, 0] += 1.0  # cls wrong in layer 1
    pred[:, 1, 1:3] += 1.0  # registers wrong in layer 2
    pred[:, 2, 3:] += 1.0  # patches wrong in layer 3
    acc = FidelityAccumulator(num_layers=3, num_registers=2)
    acc.update(pred, target)
    r2 = acc.compute()
    np.testing.assert_array_equal(r2["cls"][1:], 1.0)
    np.testing.assert_array_equal(r2["reg"][[0, 2]], 1.0)
    np.testing.assert_array_equal(r2["patch"][:2], 1.0)
    assert r2["cls"][0] < 1 and r2["reg"][1] < 1 and r2["patch"][2] < 1
    assert np.all(r2["all"] < 1)


def test_no_register_group_without_registers_and_shape_checks():
    pred, target = batch()
    acc = FidelityAccumulator(num_layers=3, num_registers=0)
    with pytest.raises(ValueError):
        acc.compute()
    with pytest.raises(ValueError):
        acc.update(pred[:, :2], target[:, :2])
    acc.update(pred, target)
    assert set(acc.compute()) == {"all", "cls", "patch"}


def test_constant_target_gives_nan():
    target = torch.ones(5, 1, 2, 3)
    acc = FidelityAccumulator(num_layers=1, num_registers=0)
    acc.update(target, target)
    assert np.isnan(acc.compute()["all"]).all()


def test_probe_ratio_and_agreement_on_separable_data():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    feats = rng.normal(size=(200, 5)) + 6.0 * (2 * labels[:, None] - 1)
    probe = fit_linear_probe(torch.as_tensor(feats), torch.as_tensor(labels), seed=0)

    same = task_fidelity(probe, feats, feats.copy(), labels)
    assert same == {"acc_teacher": 1.0, "acc_raptor": 1.0, "acc_ratio": 1.0, "agreement": 1.0}

    half_flipped = feats.copy()
    half_flipped[::2] *= -1  # every other sample lands in the other class
    result = task_fidelity(probe, feats, half_flipped, labels)
    assert result == {"acc_teacher": 1.0, "acc_raptor": 0.5, "acc_ratio": 0.5, "agreement": 0.5}


# --- pooled R^2 and the paper's probe (docs/science.md §5) ---------------------------------
from study.science.fidelity import (
    PROBE_C,
    PROBE_MAX_ITER,
    own_probe_accuracy,
    probe_features,  # noqa: E402
    probe_recovery,
)


def test_pooled_r2_counts_the_spread_of_feature_means_and_is_never_below_strict():
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0.0, 10.0, -10.0])  # per-feature means far apart
    target = torch.randn(50, 2, 3, 3, generator=gen) + offsets  # [N, L, T, D]
    pred = target.mean(dim=0, keepdim=True).expand_as(target)  # predicts each feature's mean: strict R^2 = 0
    acc = FidelityAccumulator(num_layers=2, num_registers=0)
    for chunk in (slice(0, 17), slice(17, 50)):
        acc.update(pred[chunk], target[chunk])
    strict, pooled = acc.compute(), acc.compute(pooled=True)
    np.testing.assert_allclose(strict["all"], 0.0, atol=1e-9)
    assert np.all(pooled["all"] > 0.95)  # the means' spread dominates the pooled SST
    # against a one-shot definition: SST around the scalar mean of all entries of the layer (and of a group)
    for layer in range(2):
        t, p = target[:, layer].double(), pred[:, layer].double()
        expected = 1 - (p - t).square().sum() / (t - t.mean()).square().sum()
        assert pooled["all"][layer] == pytest.approx(float(expected), abs=1e-9)
        assert pooled["patch"][layer] == pytest.approx(r2_score(p[:, 1:], t[:, 1:], pooled=True), abs=1e-9)
        assert strict["patch"][layer] == pytest.approx(r2_score(p[:, 1:], t[:, 1:]), abs=1e-9)
    rng = np.random.default_rng(1)
    for _ in range(5):
        scale = rng.uniform(0.1, 3, size=(1, 1, 4, 5))
        target = torch.as_tensor(rng.normal(size=(20, 1, 4, 5)) * scale + rng.normal(size=5))
        noisy = target + torch.as_tensor(rng.normal(size=target.shape))
        acc = FidelityAccumulator(1, 0)
        acc.update(noisy, target)
        for group in ("all", "cls", "patch"):
            assert acc.compute(pooled=True)[group][0] >= acc.compute()[group][0] - 1e-12


def test_probe_features_are_normed_cls_and_mean_patch():
    x = torch.randn(3, 1 + 2 + 4, 6)
    norm = torch.nn.LayerNorm(6)
    feats = probe_features(norm, x, num_registers=2)
    assert feats.shape == (3, 12)
    torch.testing.assert_close(feats[:, :6], norm(x)[:, 0])
    torch.testing.assert_close(feats[:, 6:], norm(x)[:, 3:].mean(dim=1))  # registers excluded


def test_own_probe_accuracy_and_recovery():
    assert (PROBE_C, PROBE_MAX_ITER) == (1.0, 1000)  # documented in results/science_remeasure/README.md
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 60)
    good = rng.normal(size=(180, 4)) + 5.0 * np.eye(3, 4)[labels]
    noise = rng.normal(size=(180, 4))
    train, test = slice(0, 180, 2), slice(1, 180, 2)
    assert own_probe_accuracy(good[train], labels[train], good[test], labels[test]) == 1.0
    assert own_probe_accuracy(noise[train], labels[train], noise[test], labels[test]) < 0.6
    assert probe_recovery(0.9, 0.8, 0.5) == {"ratio": pytest.approx(0.8 / 0.9), "recovered": pytest.approx(0.75)}
    assert np.isnan(probe_recovery(0.5, 0.5, 0.6)["recovered"]) and np.isnan(probe_recovery(0.0, 0.1, 0.0)["ratio"])


def test_probe_fit_ignores_the_seed_and_runs_on_one_blas_thread(monkeypatch):
    """The teacher-probe memo (study.trial.evaluation.teacher_probes) leaves the seed out of its key: that holds
    only while the probe's lbfgs solver does not use random_state. And the fit runs under PROBE_THREADS."""
    import threadpoolctl

    from study.science import fidelity

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 40)
    feats = rng.normal(size=(160, 12)) + 2.0 * np.eye(4, 12)[labels]
    a, b = fit_linear_probe(feats, labels, seed=0), fit_linear_probe(feats, labels, seed=123)
    np.testing.assert_array_equal(a[-1].coef_, b[-1].coef_)

    seen = []
    real_limits = threadpoolctl.threadpool_limits

    def spy(limits=None, user_api=None):
        seen.append((limits, user_api))
        return real_limits(limits, user_api)

    monkeypatch.setattr(fidelity, "threadpool_limits", spy)
    fit_linear_probe(feats, labels)
    assert seen == [(fidelity.PROBE_THREADS, "blas")] and fidelity.PROBE_THREADS == 1


def test_teacher_probes_are_fit_once_per_teacher_and_equal_a_direct_fit():
    from study.trial import evaluation

    rng = np.random.default_rng(2)
    y_train, y_test = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train = torch.as_tensor(rng.normal(size=(90, 8)) + 3.0 * np.eye(3, 8)[y_train], dtype=torch.float32)
    test = torch.as_tensor(rng.normal(size=(30, 8)) + 3.0 * np.eye(3, 8)[y_test], dtype=torch.float32)
    evaluation._TEACHER_PROBES.clear()
    acc, cls_probe = evaluation.teacher_probes(train, test, y_train, y_test, width=4)
    assert acc == own_probe_accuracy(train, y_train, test, y_test)
    np.testing.assert_array_equal(cls_probe[-1].coef_, fit_linear_probe(train[:, :4].numpy(), y_train)[-1].coef_)
    again = evaluation.teacher_probes(train.clone(), test.clone(), y_train.copy(), y_test.copy(), width=4)
    assert again[1] is cls_probe and len(evaluation._TEACHER_PROBES) == 1  # same inputs: the memo, not a refit
    other = evaluation.teacher_probes(train + 1.0, test, y_train, y_test, width=4)
    assert other[1] is not cls_probe and len(evaluation._TEACHER_PROBES) == 2
