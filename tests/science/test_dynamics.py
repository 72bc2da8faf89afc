import numpy as np
import pytest
import torch

from study.science.dynamics import (
    HOST_EIGH_MAX,
    angular_speed,
    directional_convergence,
    layer_swap_accuracy,
    patch_coherence,
    perturbation_angles,
    perturbation_recovery,
    swap_pairs,
    update_stable_rank,
)


def constant_states(n=5, layers=4, tokens=7, dim=6):
    x = torch.randn(n, 1, tokens, dim, generator=torch.Generator().manual_seed(0))
    return x.expand(n, layers + 1, tokens, dim).contiguous()


def rotating_states(step, n=3, layers=5, registers=1, patches=4):
    """Every token turns by `step` radians per layer in a random plane (cls, patches);
    registers stay fixed. Returned as a numpy array to exercise that path too."""
    gen = torch.Generator().manual_seed(1)
    tokens = 1 + registers + patches
    e1, e2 = torch.linalg.qr(torch.randn(n, tokens, 8, 2, generator=gen))[0].unbind(-1)  # orthonormal pair
    angle = step * torch.arange(layers + 1.0)[None, :, None, None]
    x = torch.cos(angle) * e1[:, None] + torch.sin(angle) * e2[:, None]  # [N, L+1, T, 8]
    x[:, :, 1 : 1 + registers] = e1[:, None, 1 : 1 + registers]
    return (x * 3.0).numpy()


def test_constant_states_converge_immediately_and_do_not_move():
    states = constant_states()
    gamma = directional_convergence(states, num_registers=2)
    assert set(gamma) == {"cls", "patch"}
    for name in gamma:
        np.testing.assert_allclose(gamma[name], np.ones(5), atol=1e-6)
    speed = angular_speed(states, num_registers=2, chunk=2)
    assert set(speed) == {"cls", "patch", "reg"}
    for name in speed:
        np.testing.assert_array_equal(speed[name], np.zeros(4))


def test_known_rotation_gives_known_gamma_and_speed():
    step = 0.3
    states = rotating_states(step)
    gamma = directional_convergence(states, num_registers=1, chunk=2)
    expected = np.cos(step * (5 - np.arange(6)))
    np.testing.assert_allclose(gamma["cls"], expected, atol=1e-5)
    np.testing.assert_allclose(gamma["patch"], expected, atol=1e-5)
    speed = angular_speed(states, num_registers=1, chunk=2)
    np.testing.assert_allclose(speed["cls"], np.full(5, step), atol=1e-5)
    np.testing.assert_allclose(speed["patch"], np.full(5, step), atol=1e-5)
    np.testing.assert_allclose(speed["reg"], np.zeros(5), atol=1e-6)
    assert "reg" not in angular_speed(states, num_registers=0)


def test_patch_coherence_extremes_and_definition():
    aligned = torch.ones(2, 3, 5, 4) * torch.arange(1.0, 6.0)[None, None, :, None]  # same direction, any norm
    np.testing.assert_allclose(patch_coherence(aligned, num_registers=0), np.ones(3), atol=1e-6)
    v = torch.randn(2, 3, 1, 4)
    opposed = torch.cat([torch.randn(2, 3, 1, 4), v, -v], dim=2)  # a cls token, then two cancelling patches
    np.testing.assert_allclose(patch_coherence(opposed, num_registers=0), np.zeros(3), atol=1e-6)

    states = torch.randn(4, 3, 6, 5, generator=torch.Generator().manual_seed(2))
    u = torch.nn.functional.normalize(states[:, :, 2:], dim=-1)
    mean_direction = torch.nn.functional.normalize(u.mean(2, keepdim=True), dim=-1)
    expected = (u * mean_direction).sum(-1).mean((0, 2))
    np.testing.assert_allclose(patch_coherence(states, num_registers=1, chunk=3), expected, atol=1e-6)


def test_stable_rank_of_rank_one_orthogonal_and_zero_updates():
    gen = torch.Generator().manual_seed(3)
    n, tokens, dim = 4, 5, 7
    x0 = torch.randn(n, tokens, dim, generator=gen)
    rank_one = torch.randn(n, tokens, 1, generator=gen) * torch.randn(n, 1, dim, generator=gen)
    orthogonal = 2.0 * torch.linalg.qr(torch.randn(n, dim, tokens, generator=gen))[0].mT  # T orthonormal rows
    states = torch.stack([x0, x0 + rank_one, x0 + rank_one + orthogonal, x0 + rank_one + orthogonal], dim=1)
    np.testing.assert_allclose(update_stable_rank(states, chunk=3), [1.0, tokens, 0.0], rtol=1e-4)
    wide = states.transpose(-1, -2).contiguous()  # T > D takes the other Gram matrix
    np.testing.assert_allclose(update_stable_rank(wide), [1.0, tokens, 0.0], rtol=1e-4)


@pytest.mark.parametrize("tokens", [7, HOST_EIGH_MAX + 2])  # Gram decomposed on the host / where the states are
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_update_stable_rank_equals_the_svd_definition_on_any_device(tokens, device):
    states = torch.randn(3, 4, tokens, HOST_EIGH_MAX + 3, generator=torch.Generator().manual_seed(2))
    update = (states[:, 1:] - states[:, :-1]).double()
    singular = torch.linalg.svdvals(update)
    reference = ((singular**2).sum(-1) / singular[..., 0] ** 2).mean(0).numpy()
    np.testing.assert_allclose(update_stable_rank(states.to(device), chunk=2), reference, rtol=1e-6)


def scaling_run_layers(factor, centre=0.0):
    def run_layers(x, start, stop):
        out = []
        for _ in range(start, stop):
            x = centre + factor * (x - centre)
            out.append(x)
        return out

    return run_layers


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_map_that_only_rescales_the_stream_shows_zero_angular_divergence(factor):
    states = torch.randn(6, 5, 3, 4, generator=torch.Generator().manual_seed(4))
    angles = perturbation_angles(scaling_run_layers(factor), states, layer=1, eps=0.1, seed=0, chunk=4)
    assert angles.shape == (4,) and angles[0] > 0
    np.testing.assert_allclose(angles - angles[0], 0.0, atol=1e-6)  # no angular divergence at any layer
    ratios = perturbation_recovery(scaling_run_layers(factor), states, layer=1, eps=0.1, seed=0, chunk=4)
    np.testing.assert_allclose(ratios, np.ones(3), rtol=1e-5)


def test_perturbation_angles_at_the_perturbed_layer_match_eps():
    """A perturbation of relative norm eps orthogonal-ish in high dimension turns each token by about atan(eps)."""
    states = torch.randn(8, 3, 5, 256, generator=torch.Generator().manual_seed(3))
    angles = perturbation_angles(scaling_run_layers(1.0), states, layer=0, eps=0.05, seed=1)
    assert angles[0] == pytest.approx(np.arctan(0.05), rel=0.1)


def test_perturbation_contracting_nonlinear_map_bends_back():
    def toward_a_fixed_direction(x, start, stop):
        out = []
        target = torch.ones(x.shape[-1])
        for _ in range(start, stop):
            x = 0.5 * x + 0.5 * target * x.norm(dim=-1, keepdim=True)  # pulls every token toward one direction
            out.append(x)
        return out

    states = 3.0 * torch.randn(5, 4, 3, 4, generator=torch.Generator().manual_seed(5))
    ratios = perturbation_recovery(toward_a_fixed_direction, states, layer=0, eps=0.01, seed=0)
    assert ratios.shape == (3,) and np.all(ratios < 1) and np.all(np.diff(ratios) < 0)


def test_perturbation_noise_has_relative_norm_eps_per_token_and_is_seeded():
    seen = []

    def spy(x, start, stop):
        seen.append(x.clone())
        return [x] * (stop - start)

    states = torch.randn(3, 3, 4, 5, generator=torch.Generator().manual_seed(6))
    first = perturbation_recovery(spy, states, layer=1, eps=0.05, seed=7)
    (both,) = seen  # clean and perturbed states rolled as one batch, clean first
    clean, perturbed = both.split(len(states))
    torch.testing.assert_close(clean, states[:, 1])
    torch.testing.assert_close((perturbed - clean).norm(dim=-1), 0.05 * clean.norm(dim=-1))
    np.testing.assert_allclose(first, [1.0], rtol=1e-5)
    perturbation_recovery(spy, states, layer=1, eps=0.05, seed=7)
    torch.testing.assert_close(seen[1], both)
    with pytest.raises(ValueError):
        perturbation_recovery(spy, states, layer=2, eps=0.05, seed=7)


def swap_setup():
    """x_0 = 0; block 1 adds 1, block 2 doubles; the readout says class 1 iff mean(x) > 1.5."""
    blocks = [lambda x: x + 1.0, lambda x: 2.0 * x, lambda x: x]
    readout = lambda x: torch.stack([torch.zeros(len(x)), x.mean((1, 2)) - 1.5], dim=-1)  # noqa: E731
    return blocks, np.zeros((10, 3, 2), dtype=np.float32), readout, torch.ones(10, dtype=torch.long)


def test_layer_swap_accuracy():
    blocks, x0, readout, labels = swap_setup()
    acc = layer_swap_accuracy(blocks, x0, readout, labels, [(1, 1), (1, 2), (2, 3), (3, 3)], chunk=3)
    assert acc == {(1, 1): 1.0, (1, 2): 0.0, (2, 3): 1.0, (3, 3): 1.0}
    identity = [lambda x: x] * 3
    unswapped = layer_swap_accuracy(identity, x0 + 2.0, readout, labels, [(1, 1)])[(1, 1)]
    assert layer_swap_accuracy(identity, x0 + 2.0, readout, labels, [(1, 3), (2, 3)]) == {
        (1, 3): unswapped,
        (2, 3): unswapped,
    }
    with pytest.raises(ValueError):
        layer_swap_accuracy(blocks, x0, readout, labels, [(0, 1)])


def test_swap_pairs_split_adjacent_pairs_at_phase_boundaries():
    intra, inter = swap_pairs(((1, 3), (4, 5), (6, 6)))
    assert intra == [(1, 2), (2, 3), (4, 5)]
    assert inter == [(3, 4), (5, 6)]
    assert swap_pairs(((1, 1),)) == ([], [])
