import itertools
import json

import numpy as np
import pytest

from study.config import ConfigError
from study.science.partition import Partition, contiguous_maxcut, phase_labels


def within_cost(d, bounds):
    return sum(
        d[i - 1, j - 1] for first, last in bounds for i in range(first, last + 1) for j in range(i + 1, last + 1)
    )


def all_contiguous_partitions(num_layers, k):
    """Every split of layers 1..L into k non-empty contiguous phases."""
    for cuts in itertools.combinations(range(1, num_layers), k - 1):
        ends = (*cuts, num_layers)
        starts = (1, *(c + 1 for c in cuts))
        yield tuple(zip(starts, ends))


def random_dissimilarity(num_layers, seed):
    a = np.random.default_rng(seed).uniform(0, 1, (num_layers, num_layers))
    d = a + a.T
    np.fill_diagonal(d, 0)
    return d


@pytest.mark.parametrize("seed", range(4))
def test_dp_matches_brute_force_over_all_contiguous_partitions(seed):
    for num_layers in range(1, 13):
        d = random_dissimilarity(num_layers, seed=1000 * seed + num_layers)
        total = d[np.triu_indices(num_layers, 1)].sum()
        for k in range(1, min(4, num_layers) + 1):
            costs = sorted((within_cost(d, b), b) for b in all_contiguous_partitions(num_layers, k))
            partition = contiguous_maxcut(d, k)
            assert partition.k == k and partition.num_layers == num_layers
            assert partition.within_cost == pytest.approx(costs[0][0], abs=1e-9)
            assert partition.cut_value == pytest.approx(total - costs[0][0], abs=1e-9)
            if len(costs) == 1 or costs[1][0] > costs[0][0] + 1e-9:
                assert partition.phase_bounds == costs[0][1]


@pytest.mark.parametrize("sizes", [(4, 4), (3, 5, 4), (1, 6, 2, 3), (12,)])
def test_planted_block_structure_is_recovered(sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 0.1, (len(labels), len(labels)))
    d = np.where(labels[:, None] == labels[None, :], 0.1, 1.0) + noise + noise.T
    np.fill_diagonal(d, 0)
    partition = contiguous_maxcut(d, len(sizes))
    ends = np.cumsum(sizes)
    assert partition.phase_bounds == tuple(zip((1, *(ends[:-1] + 1)), ends))
    assert partition.phase_of_layer == tuple(labels)


def test_ties_break_toward_earliest_boundaries():
    assert contiguous_maxcut(np.zeros((4, 4)), 2).phase_bounds == ((1, 1), (2, 4))
    assert contiguous_maxcut(np.zeros((5, 5)), 3).phase_bounds == ((1, 1), (2, 2), (3, 5))


def test_partition_dict_is_json_friendly():
    partition = contiguous_maxcut(random_dissimilarity(6, seed=0), 3)
    blob = json.loads(json.dumps(partition.to_dict()))
    assert blob["k"] == 3 and [tuple(b) for b in blob["phase_bounds"]] == list(partition.phase_bounds)
    assert blob["cut_value"] == partition.cut_value and blob["within_cost"] == partition.within_cost
    assert Partition(((1, 2), (3, 3)), 1.0, 0.5).phase_of_layer == (0, 0, 1)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_k_out_of_range_is_a_config_error(k):
    with pytest.raises(ConfigError, match=rf"^raptor\.k: must be in \[1, 4\] \(the teacher's depth\), got {k}$"):
        contiguous_maxcut(np.zeros((4, 4)), k)


@pytest.mark.parametrize(
    "matrix", [np.zeros((3, 4)), np.zeros(4), np.triu(np.ones((3, 3)), 1), np.where(np.eye(3) > 0, 0, np.nan)]
)
def test_invalid_matrices_are_rejected(matrix):
    with pytest.raises(ValueError):
        contiguous_maxcut(matrix, 1)


@pytest.mark.parametrize("bounds", [(), ((2, 3),), ((1, 2), (4, 5)), ((1, 3), (3, 4)), ((1, 0),)])
def test_phase_labels_reject_non_tiling_bounds(bounds):
    with pytest.raises(ValueError):
        phase_labels(bounds)
    with pytest.raises(ValueError):
        Partition(bounds, 0.0, 0.0)


# --- bisection and fixed boundaries (docs/science.md §2) ------------------------------
from study.science.partition import bisection, choose_partition, fixed_partition, partition_of  # noqa: E402


def refines(fine, coarse):
    """Every phase of `fine` lies inside one phase of `coarse`."""
    return all(any(a >= c0 and b <= c1 for c0, c1 in coarse) for a, b in fine)


@pytest.mark.parametrize("seed", range(3))
def test_bisection_is_nested_greedy_and_never_beats_the_dp(seed):
    for num_layers in range(2, 11):
        d = random_dissimilarity(num_layers, seed=77 * seed + num_layers)
        previous = None
        for k in range(1, min(5, num_layers) + 1):
            greedy, exact = bisection(d, k), contiguous_maxcut(d, k)
            assert greedy.k == k and greedy.num_layers == num_layers
            assert greedy.cut_value <= exact.cut_value + 1e-9
            assert greedy.cut_value == pytest.approx(d[np.triu_indices(num_layers, 1)].sum() - greedy.within_cost)
            if k <= 2:
                assert greedy.cut_value == pytest.approx(exact.cut_value)
            if previous is not None:  # each step splits one segment of the previous partition
                assert refines(greedy.phase_bounds, previous.phase_bounds)
            previous = greedy


def test_bisection_can_lose_to_the_dp():
    """On random 7-layer matrices the greedy split sometimes misses the best k=3 partition; the log shows it."""
    found = 0
    for seed in range(200):
        d = random_dissimilarity(7, seed)
        partition, info = choose_partition(d, 3, "dp")
        if info["dp_differs"]:
            found += 1
            assert info["cut_bisection"] < info["cut_dp"] - 1e-12
            assert partition.cut_value == info["cut_dp"]
            assert bisection(d, 3).phase_bounds == tuple(tuple(b) for b in info["bounds_bisection"])
    assert found > 0  # the greedy heuristic is suboptimal on some matrices


def test_fixed_boundaries_and_choose_partition():
    d = random_dissimilarity(12, seed=5)
    fixed = fixed_partition(d, [4, 7, 10])  # the reference's DINOv2 ViT-B thresholds for k=4
    assert fixed.phase_bounds == ((1, 4), (5, 7), (8, 10), (11, 12))
    assert fixed.within_cost == pytest.approx(within_cost(d, fixed.phase_bounds))
    chosen, info = choose_partition(d, 2, "fixed", [7])
    assert chosen.phase_bounds == ((1, 7), (8, 12)) and chosen == partition_of(d, ((1, 7), (8, 12)))
    assert info["cut_dp"] == pytest.approx(contiguous_maxcut(d, 2).cut_value)
    assert info["cut_bisection"] == pytest.approx(bisection(d, 2).cut_value) and info["dp_differs"] == 0.0
    assert choose_partition(d, 3, "bisection")[0] == bisection(d, 3)
    with pytest.raises(ValueError, match="partition.method"):
        choose_partition(d, 2, "greedy")


from study.science.partition import random_boundaries, random_partition  # noqa: E402


@pytest.mark.parametrize("num_layers,k", [(2, 2), (5, 1), (6, 3), (12, 4), (8, 8)])
def test_random_partition_draws_only_contiguous_partitions_with_k_phases(num_layers, k):
    d = random_dissimilarity(num_layers, seed=num_layers)
    allowed = set(all_contiguous_partitions(num_layers, k))
    for seed in range(40):
        drawn = random_partition(d, k, seed)
        assert drawn.k == k and drawn.phase_bounds in allowed
        assert drawn == partition_of(d, drawn.phase_bounds)  # its cut is the cut of those bounds
        assert random_partition(d, k, seed) == drawn  # seeded


def test_random_partition_is_uniform_over_all_contiguous_partitions():
    from scipy.stats import chisquare

    num_layers, k, draws = 6, 3, 3000
    partitions = list(all_contiguous_partitions(num_layers, k))
    assert len(partitions) == 10  # C(5, 2)
    counts = dict.fromkeys(partitions, 0)
    for seed in range(draws):
        ends = random_boundaries(num_layers, k, seed) + [num_layers]
        counts[tuple(zip([1] + [e + 1 for e in ends[:-1]], ends))] += 1
    assert min(counts.values()) > 0
    assert chisquare(list(counts.values())).pvalue > 0.001


@pytest.mark.parametrize("seed", range(4))
def test_the_dp_cut_is_at_least_every_random_cut(seed):
    for num_layers, k in [(7, 2), (8, 3), (12, 4)]:
        d = random_dissimilarity(num_layers, seed=31 * seed + num_layers)
        dp = choose_partition(d, k, "dp")[0]
        for draw in range(30):
            chosen, info = choose_partition(d, k, "random", seed=draw)
            assert chosen == random_partition(d, k, draw)
            assert dp.cut_value >= chosen.cut_value - 1e-9 and info["cut_dp"] == pytest.approx(dp.cut_value)


def test_random_needs_a_seed_and_an_unseeded_random_config_is_the_dp():
    from study.config import load_trial_config

    with pytest.raises(ValueError, match="partition.seed"):
        choose_partition(random_dissimilarity(6, 0), 2, "random")
    assert load_trial_config(None, {"partition.method": "random"}).partition.method == "dp"
    seeded = load_trial_config(None, {"partition.method": "random", "partition.seed": 3}).partition
    assert (seeded.method, seeded.seed) == ("random", 3)
    with pytest.raises(ConfigError, match="partition.seed"):
        load_trial_config(None, {"partition.method": "random", "partition.seed": -1})
