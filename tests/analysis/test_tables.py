import math

import pandas as pd

from analysis.tables import group_table, layer_table, to_markdown


def test_group_table_gives_mean_std_and_n_per_level():
    trials = pd.DataFrame({"raptor.k": [2, 2, 3], "acc.ratio": [0.9, 1.0, 0.8], "r2.final": [0.5, math.nan, 0.7]})
    table = group_table(trials, ["raptor.k"], ["acc.ratio", "r2.final", "absent"])
    assert table["n"].tolist() == [2, 1]
    assert table.loc[0, "acc.ratio"] == "0.95 ± 0.071"  # sample std
    assert table.loc[0, "r2.final"] == "0.5" and table.loc[1, "acc.ratio"] == "0.8"  # one value: no std
    assert table.loc[0, "absent"] == "–"


def test_layer_table_averages_each_group_per_layer_over_the_level():
    results = [
        {"config": {"raptor": {"k": 2}}, "r2_per_layer": {"cls": [0.1, 0.3], "patch": [0.5, 0.7]}},
        {"config": {"raptor": {"k": 2}}, "r2_per_layer": {"cls": [0.3, 0.5], "patch": [0.5, 0.9]}},
    ]
    table = layer_table(results, ["raptor.k"]).set_index("group")
    assert table.loc["cls", "L1"] == 0.2 and table.loc["patch", "L2"] == 0.8


def test_markdown_keeps_four_digits_and_shows_missing_as_a_dash():
    text = to_markdown(pd.DataFrame({"k": [2], "x": [0.123456], "y": [math.nan]}))
    assert text.splitlines() == ["| k | x | y |", "|---|---|---|", "| 2 | 0.1235 | – |"]
