"""The paper comparison shows the random-Raptor floor and acc.recovered beside acc.ratio (docs/science.md §5)."""

import pandas as pd
import pytest

from analysis.paper import floor_cell


def test_floor_cell_gives_the_means_at_k_and_nothing_when_not_logged():
    trials = pd.DataFrame({"raptor.k": [2, 2, 3], "acc.floor": [0.7, 0.8, 0.5], "acc.recovered": [0.4, 0.6, 0.9]})
    assert floor_cell(trials, 2) == "; random-Raptor floor 0.750, acc.recovered 0.500 (means)"
    assert floor_cell(trials, 3).endswith("acc.recovered 0.900 (means)")
    assert floor_cell(trials.drop(columns="acc.floor"), 2) == ""
    assert floor_cell(trials, 4) == ""


@pytest.mark.parametrize("column", ["acc.floor", "acc.recovered"])
def test_floor_cell_needs_both_columns(column):
    trials = pd.DataFrame({"raptor.k": [2], "acc.floor": [0.7], "acc.recovered": [0.4]}).drop(columns=column)
    assert floor_cell(trials, 2) == ""
