import pytest
import torch

from study.science.emergence import phase_snapshot


def two_phase_states(n=32, tokens=5, width=16, seed=0) -> torch.Tensor:
    """States [N, 7, T, D]: x_0 noise, layers 1-3 along one random direction per sample, layers 4-6 along another."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 1, tokens, width, generator=g), torch.randn(n, 1, tokens, width, generator=g)
    noise = 0.05 * torch.randn(n, 7, tokens, width, generator=g)
    x0 = torch.randn(n, 1, tokens, width, generator=g)
    return torch.cat([x0, a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)], dim=1) + noise


def test_snapshot_finds_two_phases_and_keeps_every_k_that_fits():
    snap = phase_snapshot(two_phase_states(), num_registers=0, ks=(2, 3, 7))
    assert snap["k2.within_sim"] > 0.95 and snap["k2.between_sim"] < 0.3
    assert snap["k2.contrast"] == pytest.approx(snap["k2.within_sim"] - snap["k2.between_sim"])
    assert snap["k2.cut_norm"] > 0.8  # most of the dissimilarity lies across the cut
    assert "k3.within_sim" in snap and "k7.within_sim" not in snap  # 6 layers: k = 7 does not fit
    assert snap["adjacent_sim"] > snap["mean_sim"]


def test_snapshot_of_a_rescaled_stream_is_one_phase():
    """Cosine similarity ignores norms: layers that only rescale one state are all alike."""
    base = torch.randn(16, 1, 4, 8)
    states = torch.cat([base * s for s in (1.0, 2.0, 4.0, 8.0, 16.0)], dim=1)
    snap = phase_snapshot(states, num_registers=0, ks=(2,))
    assert snap["mean_sim"] == pytest.approx(1.0) and snap["k2.contrast"] == pytest.approx(0.0, abs=1e-9)
