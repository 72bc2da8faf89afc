"""How often is the reference's bisection suboptimal? DP vs bisection on saved trials' similarity matrices.

Reads every result.json under the given folders, keeps one cosine similarity matrix per teacher (trials of one
teacher share it), and for every k in 2..L-1 compares the exact contiguous DP with the reference's recursive
bisection (study.science.partition, docs/science.md §2): the share of (teacher, k) whose bounds differ and the
mean relative cut lost by bisection. Pure numpy on saved matrices: seconds.

Usage: python -m bench.partition_rate /tmp/sd_runs [/tmp/ablation_runs ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import markdown
from study.science.partition import choose_partition


def rates(folders: list[Path], kind: str = "cosine") -> pd.DataFrame:
    matrices = {}
    for folder in folders:
        for path in sorted(folder.rglob("result.json")):
            result = json.loads(path.read_text())
            matrices.setdefault(result["teacher"]["key"], np.asarray(result["similarity"][kind]))
    rows = []
    for key, similarity in matrices.items():
        for k in range(2, similarity.shape[0]):
            _, info = choose_partition(1.0 - similarity, k, "dp")
            rows.append(
                {
                    "teacher": key,
                    "k": k,
                    "dp_differs": info["dp_differs"],
                    "cut_lost": 1.0 - info["cut_bisection"] / info["cut_dp"] if info["cut_dp"] > 0 else 0.0,
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    table = rates(args.folders)
    summary = (
        table.groupby("k")
        .agg(
            teachers=("teacher", "nunique"),
            dp_differs_rate=("dp_differs", "mean"),
            mean_cut_lost=("cut_lost", "mean"),
            max_cut_lost=("cut_lost", "max"),
        )
        .reset_index()
    )
    print(markdown(summary))


if __name__ == "__main__":
    main()
