"""The paper comparison shows the random-Raptor floor and acc.recovered beside acc.ratio (docs/science.md §5)."""

import pandas as pd
import pytest

from analysis.paper import floor_cell


def test_floor_cell_gives_the_means_at_k_beside_the_teachers_own_probe_and_nothing_when_not_logged():
    trials = pd.DataFrame({"raptor.k": [2, 2, 3], "acc.floor": [0.7, 0.8, 0.5], "acc.recovered": [0.4, 0.6, 0.9],
                           "acc.teacher": [0.85, 0.86, 0.9]})  # fmt: skip
    cell = floor_cell(trials, 2)
    assert cell.startswith("; random-Raptor floor 0.750 (LayerScale 1e-5: nearly the identity")
    assert "the teacher's own-probe accuracy 0.855" in cell and cell.endswith("acc.recovered 0.50")
    assert floor_cell(trials, 3).endswith("acc.recovered 0.90")
    deep = floor_cell(trials.assign(**{"acc.floor_deep": [0.3, 0.4, 0.2]}), 2)
    assert deep.endswith("floor with LayerScale 1 (random deep features) 0.350")
    assert floor_cell(trials.drop(columns="acc.floor"), 2) == ""
    assert floor_cell(trials, 4) == ""


@pytest.mark.parametrize("column", ["acc.floor", "acc.recovered"])
def test_floor_cell_needs_both_columns(column):
    trials = pd.DataFrame({"raptor.k": [2], "acc.floor": [0.7], "acc.recovered": [0.4]}).drop(columns=column)
    assert floor_cell(trials, 2) == ""
