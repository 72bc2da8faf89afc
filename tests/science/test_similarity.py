import math

import numpy as np
import pytest
import torch

from study.science.partition import contiguous_maxcut
from study.science.similarity import cosine_dissimilarity, layer_summaries, linear_cka, mse_dissimilarity, phase_metrics


def random_states(n=7, layers=5, registers=2, patches=6, dim=8, seed=0):
    return torch.randn(n, layers + 1, 1 + registers + patches, dim, generator=torch.Generator().manual_seed(seed))


def rotating_states(cls_angles, patch_angles, registers=1, patches=4, norms=None):
    """Tokens in the plane: cls at cls_angles[l], every patch at patch_angles[l] (per sample)."""
    cls_angles, patch_angles = np.asarray(cls_angles), np.asarray(patch_angles)  # [N, L+1]
    n, layers = cls_angles.shape
    states = np.zeros((n, layers, 1 + registers + patches, 2))
    states[:, :, 0] = np.stack([np.cos(cls_angles), np.sin(cls_angles)], -1)
    states[:, :, 1 : 1 + registers] = 5.0  # registers must not matter
    states[:, :, 1 + registers :] = np.stack([np.cos(patch_angles), np.sin(patch_angles)], -1)[:, :, None]
    if norms is not None:
        states = states * np.asarray(norms)[None, :, None, None]
    return states


def test_layer_summaries_match_definition_across_chunks():
    states = random_states()
    cls, mean_patch = layer_summaries(states, num_registers=2, chunk=3)
    assert cls.shape == mean_patch.shape == (7, 6, 8) and cls.dtype == torch.float32
    torch.testing.assert_close(cls, states[:, :, 0])
    torch.testing.assert_close(mean_patch, states[:, :, 3:].mean(2))


def test_cosine_dissimilarity_closed_form_and_scale_invariance():
    rng = np.random.default_rng(0)
    cls_angles, patch_angles = rng.uniform(0, np.pi, (2, 9, 5))
    states = rotating_states(cls_angles, patch_angles, norms=[1.0, 2.0, 0.5, 3.0, 7.0])
    d = cosine_dissimilarity(states, num_registers=1, chunk=4)
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            expected[i, j] = np.mean(
                0.5 * (1 - np.cos(cls_angles[:, i + 1] - cls_angles[:, j + 1]))
                + 0.5 * (1 - np.cos(patch_angles[:, i + 1] - patch_angles[:, j + 1]))
            )
    np.testing.assert_allclose(d, expected, atol=1e-6)
    assert d.dtype == np.float64 and np.all(np.diag(d) == 0) and np.array_equal(d, d.T)


def test_cosine_dissimilarity_ignores_registers_and_reads_memmap(tmp_path):
    states = random_states(n=10)
    reference = cosine_dissimilarity(states, num_registers=2)
    changed = states.clone()
    changed[:, :, 1:3] = torch.randn_like(changed[:, :, 1:3])
    np.testing.assert_allclose(cosine_dissimilarity(changed, num_registers=2), reference, atol=1e-12)

    memmap = np.lib.format.open_memmap(tmp_path / "states.npy", mode="w+", dtype=np.float16, shape=tuple(states.shape))
    memmap[:] = states.numpy()
    memmap.flush()
    from_disk = cosine_dissimilarity(np.load(tmp_path / "states.npy", mmap_mode="r"), num_registers=2, chunk=3)
    np.testing.assert_allclose(from_disk, reference, atol=2e-3)


def test_mse_dissimilarity_is_scale_free_and_reduces_to_cosine_for_equal_norms():
    rng = np.random.default_rng(1)
    cls_angles, patch_angles = rng.uniform(0, 2 * np.pi, (2, 6, 5))
    unit = rotating_states(cls_angles, patch_angles)
    cosine = cosine_dissimilarity(unit, num_registers=1)
    np.testing.assert_allclose(mse_dissimilarity(unit, num_registers=1), cosine, atol=1e-6)

    states = random_states()
    d = mse_dissimilarity(states, num_registers=2)
    np.testing.assert_allclose(mse_dissimilarity(7.0 * states, num_registers=2), d, rtol=1e-5)
    assert np.all(np.diag(d) == 0) and np.array_equal(d, d.T) and d.min() >= 0 and d.max() <= 2


def test_mse_dissimilarity_is_one_for_orthogonal_layers():
    states = np.zeros((3, 3, 3, 2))  # cls and patch at layer 1 along e0, layer 2 along e1
    states[:, 1, :, 0] = 1.0
    states[:, 2, :, 1] = 4.0
    np.testing.assert_allclose(mse_dissimilarity(states, num_registers=0), [[0, 1], [1, 0]])


def naive_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_linear_cka_matches_naive_formula_on_the_documented_subset():
    states = random_states(n=10, layers=4, registers=1, patches=5, dim=6).double()
    states[:, 2] = states[:, 1] * 0.5 + 0.1 * states[:, 2]  # make some layers related
    cka = linear_cka(states, num_registers=1, max_tokens=23, seed=3, chunk=3)
    rows = np.sort(np.random.default_rng(3).choice(50, size=23, replace=False))
    patches = states[:, 1:, 2:].numpy().transpose(1, 0, 2, 3).reshape(4, 50, 6)[:, rows]
    expected = np.array([[naive_cka(patches[i], patches[j]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(cka, expected, atol=1e-5)
    assert np.array_equal(cka, linear_cka(states, num_registers=1, max_tokens=23, seed=3))


def test_linear_cka_invariances():
    states = random_states(n=20, layers=3, registers=0, patches=4, dim=5)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    states[:, 2] = 3.0 * states[:, 1] @ q + 1.5  # rotation, isotropic scale, shift
    cka = linear_cka(states, num_registers=0)
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diag(cka) == 1) and np.array_equal(cka, cka.T)
    assert 0 <= cka[0, 2] < 0.5


def test_phase_metrics_by_hand():
    s = np.array([[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.7], [0.1, 0.2, 0.7, 1.0]])
    m = phase_metrics(s, ((1, 2), (3, 4)))
    assert set(m) == {"within_sim", "between_sim", "contrast", "cut_norm", "adjacent_sim", "mean_sim"}
    assert m["within_sim"] == pytest.approx(0.8)
    assert m["between_sim"] == pytest.approx(0.2)
    assert m["contrast"] == pytest.approx(0.6)
    assert m["cut_norm"] == pytest.approx((0.8 + 0.9 + 0.7 + 0.8) / (0.1 + 0.3 + 3.2))
    assert m["adjacent_sim"] == pytest.approx((0.9 + 0.3 + 0.7) / 3)
    assert m["mean_sim"] == pytest.approx(2.4 / 6)


def test_phase_metrics_degenerate_partitions():
    s = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    one_phase = phase_metrics(s, ((1, 3),))
    assert math.isnan(one_phase["between_sim"]) and math.isnan(one_phase["contrast"])
    assert one_phase["cut_norm"] == 0.0 and one_phase["within_sim"] == pytest.approx(0.5)
    singletons = phase_metrics(s, ((1, 1), (2, 2), (3, 3)))
    assert math.isnan(singletons["within_sim"]) and singletons["cut_norm"] == pytest.approx(1.0)
    assert phase_metrics(np.ones((3, 3)), ((1, 1), (2, 3)))["cut_norm"] == 0.0  # no dissimilarity at all
    with pytest.raises(ValueError):
        phase_metrics(s, ((1, 1), (3, 3)))
    with pytest.raises(ValueError):
        phase_metrics(s, ((1, 4),))


def test_planted_phases_are_recovered_end_to_end():
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 16, generator=gen)
    phase_of_layer = [0, 0, 0, 1, 1, 2, 2, 2]
    states = torch.randn(12, 9, 6, 16, generator=gen) * 0.2
    for layer, phase in enumerate(phase_of_layer, start=1):
        states[:, layer] += directions[phase]
    d = cosine_dissimilarity(states, num_registers=1)
    partition = contiguous_maxcut(d, k=3)
    assert partition.phase_bounds == ((1, 3), (4, 5), (6, 8))
    metrics = phase_metrics(1 - d, partition.phase_bounds)
    assert metrics["contrast"] > 0.5 and metrics["cut_norm"] > 0.9


def _pairwise_cka(states, num_registers):
    """The pair-by-pair HSIC loop (one matmul and one host sync per pair) the batched rows replaced."""
    num_patches = states.shape[2] - 1 - num_registers
    x = torch.as_tensor(np.asarray(states, dtype=np.float32))[:, 1:, 1 + num_registers :]  # [N, L, P, D]
    x = x.permute(1, 0, 2, 3).reshape(x.shape[1], len(states) * num_patches, -1)
    x = x - x.mean(dim=1, keepdim=True)
    hsic = np.zeros((x.shape[0], x.shape[0]))
    for i in range(x.shape[0]):
        for j in range(i, x.shape[0]):
            hsic[i, j] = hsic[j, i] = torch.linalg.matrix_norm(x[j].T @ x[i]).double().item() ** 2
    scale = np.sqrt(np.diag(hsic))
    return np.clip(hsic / (scale[:, None] * scale[None, :]), 0.0, 1.0)


@pytest.mark.parametrize(
    "device",
    [
        None,
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
    ],
)
def test_matrices_on_a_device_equal_the_cpu_reference(device):
    """numpy states streamed to `device` (batched matmuls there) give the CPU results within float tolerance."""
    states = random_states(n=11, layers=6, registers=1, patches=9, dim=16, seed=4).numpy()
    reference = _pairwise_cka(states, 1)  # 99 rows: under max_tokens, so no subsampling
    np.testing.assert_allclose(linear_cka(states, 1, chunk=4, device=device), reference, rtol=1e-5, atol=1e-6)
    for fn in (cosine_dissimilarity, mse_dissimilarity):
        np.testing.assert_allclose(
            fn(states, 1, chunk=4, device=device), fn(torch.from_numpy(states), 1, chunk=4), rtol=1e-6, atol=1e-8
        )
