import numpy as np
import pytest

from study.science.sampling import IndexedRows, class_counts, class_share_range, stratified_subset, take_rows


def sorted_labels(classes=10, per_class=40):
    return np.repeat(np.arange(classes), per_class)


@pytest.mark.parametrize("n", [1, 7, 10, 33, 60, 99])
def test_every_class_within_one_of_its_proportional_share(n):
    labels = np.concatenate([np.repeat(0, 50), np.repeat(1, 30), np.repeat(2, 15), np.repeat(3, 5)])
    chosen = stratified_subset(labels, n, seed=3)
    assert len(chosen) == n and len(set(chosen.tolist())) == n and np.all(np.diff(chosen) > 0)
    counts = np.bincount(labels[chosen], minlength=4)
    share = n * np.bincount(labels) / len(labels)
    assert np.all(np.abs(counts - share) < 1.0), (counts, share)


def test_class_sorted_labels_keep_every_class_unlike_a_prefix():
    labels = sorted_labels()
    chosen = stratified_subset(labels, 60, seed=0)
    assert set(labels[:60].tolist()) == {0, 1}  # what a prefix cap kept
    assert np.all(np.bincount(labels[chosen], minlength=10) == 6)


def test_same_seed_same_subset_other_seed_other_subset():
    labels = sorted_labels()
    a, b, c = (stratified_subset(labels, 55, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unlabelled_draw_and_no_cap():
    chosen = stratified_subset(None, 5, seed=0, num_items=20)
    assert len(chosen) == 5 and chosen.max() < 20 and len(set(chosen.tolist())) == 5
    np.testing.assert_array_equal(stratified_subset(sorted_labels(), None, 0), np.arange(400))
    np.testing.assert_array_equal(stratified_subset(sorted_labels(), 1000, 0), np.arange(400))
    with pytest.raises(ValueError):
        stratified_subset(None, 5, seed=0)


def test_class_counts_and_share_range():
    labels = np.array([2, 2, 0, 0, 0, 5])
    assert class_counts(labels) == {"0": 3, "2": 2, "5": 1}
    assert class_share_range(labels, [0, 2, 5]) == (pytest.approx(1 / 6), pytest.approx(0.5))
    assert class_share_range(labels, [0, 1, 2, 5])[0] == 0.0  # an absent class has share 0


def test_indexed_rows_reads_only_the_chosen_rows():
    array = np.arange(40.0).reshape(10, 2, 2)
    rows = take_rows(array, np.array([1, 4, 7]))
    assert isinstance(rows, IndexedRows) and len(rows) == 3 and rows.shape == (3, 2, 2)
    np.testing.assert_array_equal(rows[0:2], array[[1, 4]])
    np.testing.assert_array_equal(rows[:, 1], array[[1, 4, 7], 1])
    np.testing.assert_array_equal(np.asarray(rows), array[[1, 4, 7]])
    assert take_rows(array, np.arange(10)) is array
