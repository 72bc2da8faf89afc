"""Layer replacement (the paper's swap test) and the cls speed summary of study/science/dynamics.py."""

import numpy as np
import pytest
import torch

from study.science.dynamics import (
    cls_speed_summary,
    layer_replacement,
    layer_swap_accuracy,
    replaced_sequence,
    replacement_sets,
    sequence_accuracy,
)
from study.science.partition import phase_labels

PHASES = ((1, 3), (4, 6), (7, 8))


def toy_teacher(num_layers=8, n=60, tokens=3, dim=6, classes=4, seed=0):
    """Random nonlinear blocks, x_0 and a readout; labels are the unreplaced predictions (baseline 1.0)."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(dim, dim, generator=gen) / dim**0.5 for _ in range(num_layers)]
    blocks = [lambda x, w=w: x + torch.tanh(x @ w) for w in weights]
    x0 = torch.randn(n, tokens, dim, generator=gen)
    project = torch.randn(dim, classes, generator=gen)

    def readout(x):
        return x[:, 0] @ project

    x = x0
    for block in blocks:
        x = block(x)
    return blocks, x0, readout, readout(x).argmax(dim=-1).numpy()


def naive_accuracy(blocks, x0, readout, labels, sequence):
    x = x0
    for source in sequence:
        x = blocks[source - 1](x)
    return float(np.mean(readout(x).argmax(dim=-1).numpy() == labels))


@pytest.mark.parametrize("kind", ["intra", "inter"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_replacement_sets_follow_the_phases(kind, n):
    labels = phase_labels(PHASES)
    sets = replacement_sets(PHASES, n, kind, draws=25, seed=3)
    assert len(sets) == 25
    assert sets == replacement_sets(PHASES, n, kind, draws=25, seed=3), "seeded"
    assert sets != replacement_sets(PHASES, n, kind, draws=25, seed=4)
    for replacement in sets:
        assert len(replacement) == n
        for layer, source in replacement.items():
            assert source != layer and 1 <= source <= 8
            assert (labels[source - 1] == labels[layer - 1]) == (kind == "intra")


def test_replacement_sets_that_cannot_exist_are_empty():
    one_layer_phases = ((1, 1), (2, 2), (3, 4))
    assert replacement_sets(one_layer_phases, 2, "intra", draws=20, seed=0) != []  # layers 3 and 4
    assert replacement_sets(one_layer_phases, 3, "intra", draws=20, seed=0) == []
    assert replacement_sets(((1, 4),), 1, "inter", draws=20, seed=0) == []
    with pytest.raises(ValueError, match="kind"):
        replacement_sets(PHASES, 1, "adjacent", draws=1, seed=0)


def test_a_layer_replaced_by_itself_leaves_accuracy_unchanged():
    blocks, x0, readout, labels = toy_teacher()
    identity = replaced_sequence(8, {})
    itself = replaced_sequence(8, {5: 5})
    other = replaced_sequence(8, {5: 4})
    assert itself == identity == list(range(1, 9))
    acc = sequence_accuracy(blocks, x0, readout, labels, [identity, itself, other], chunk=16)
    assert acc[0] == acc[1] == 1.0
    assert acc[2] == naive_accuracy(blocks, x0, readout, labels, other) < 1.0


def test_sequence_accuracy_matches_running_every_sequence_from_scratch():
    blocks, x0, readout, labels = toy_teacher(seed=1)
    gen = np.random.default_rng(0)
    sequences = [list(gen.integers(1, 9, size=8)) for _ in range(6)] + [list(range(1, 9))]
    sequences.append(sequences[0])  # a repeat is scored once, reported twice
    acc = sequence_accuracy(blocks, x0, readout, labels, sequences, chunk=7)
    assert acc == [naive_accuracy(blocks, x0, readout, labels, s) for s in sequences]
    with pytest.raises(ValueError, match="block sequence"):
        sequence_accuracy(blocks, x0, readout, labels, [[1, 2, 3]])


def test_layer_swaps_are_sequences_too():
    blocks, x0, readout, labels = toy_teacher(seed=2)
    swapped = layer_swap_accuracy(blocks, x0, readout, labels, [(1, 1), (3, 4)], chunk=9)
    assert swapped[(1, 1)] == 1.0
    assert swapped[(3, 4)] == naive_accuracy(blocks, x0, readout, labels, [1, 2, 4, 3, 5, 6, 7, 8])


def test_layer_replacement_record():
    blocks, x0, readout, labels = toy_teacher(seed=3)
    out = layer_replacement(blocks, x0, readout, labels, PHASES, draws=20, seed=0, chunk=32)
    assert out["baseline"] == 1.0 and out["num_images"] == 60
    for kind in ("intra", "inter"):
        for n in (1, 2, 3):
            entry = out[kind][f"n{n}"]
            assert entry["skipped"] == 0 and len(entry["draws"]) == 20
            values = [d["acc"] for d in entry["draws"]]
            assert entry["mean"] == pytest.approx(np.mean(values))
            for draw in entry["draws"]:
                sequence = replaced_sequence(8, dict(map(tuple, draw["replace"])))
                assert draw["acc"] == naive_accuracy(blocks, x0, readout, labels, sequence)
    assert json_ready(out)
    single = layer_replacement(blocks, x0, readout, labels, ((1, 8),), draws=20, seed=0)
    assert single["inter"]["n1"] == {"draws": [], "mean": None, "skipped": 20}
    assert single["intra"]["n3"]["skipped"] == 0


def json_ready(record) -> bool:
    import json

    return json.loads(json.dumps(record)) == record


def test_cls_speed_summary_drops_the_first_step():
    # the first step (x_0 -> x_1) is the fastest but is left out of both numbers
    summary = cls_speed_summary([5.0, 1.0, 1.0, 3.0, 3.0])
    assert summary == {"peak_layer": 4.0, "late_early": 3.0}
    assert cls_speed_summary([5.0, 1.0]) == {"peak_layer": 2.0}
    assert cls_speed_summary([5.0]) == {}
    assert "late_early" not in cls_speed_summary([5.0, 0.0, 0.0, 1.0])
