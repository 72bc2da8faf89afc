"""Phase emergence across teacher training, read off the snapshot curves (docs/science.md §7): pure numpy/pandas.

`onset` reads when a snapshot curve has covered a fraction of its way from init to the end of training;
`emergence_table` gives it per teacher, `emergence_by_sd` the onset per SD rate over every teacher that carries
snapshots, with a t-interval over teachers (the teacher is the unit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.figures import EMERGENCE_PANELS, EmergenceTrace
from analysis.inference import mean_ci_teachers

EMERGENCE_ONSET = 0.9
"""Fraction of a snapshot curve's change from init to end that defines its onset epoch."""


def onset(steps: Sequence[float], values: Sequence[float], fraction: float = 0.9) -> float:
    """The first step at which `values` has covered `fraction` of its change from the first to the last value.

    NaN when the curve has fewer than two points or does not change; `steps` ascending, one per value."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: must be in (0, 1], got {fraction}")
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(values) < 2 or len(steps) != len(values) or values[-1] == values[0] or not np.isfinite(values).all():
        return math.nan
    progress = (values - values[0]) / (values[-1] - values[0])
    return float(steps[np.argmax(progress >= fraction)])


def emergence_table(traces: Iterable[EmergenceTrace], fraction: float = EMERGENCE_ONSET) -> pd.DataFrame:
    """Per teacher: epochs, and per `EMERGENCE_PANELS` curve its init and end values and its `onset`."""
    rows = []
    for trace in traces:
        frame = pd.DataFrame(trace.records).sort_values("epoch")
        row = {"teacher": trace.label, "sd": trace.sd, "epochs": int(frame["epoch"].max())}
        for key, _ in EMERGENCE_PANELS:
            if key in frame:
                row[f"{key} init"] = float(frame[key].iloc[0])
                row[f"{key} end"] = float(frame[key].iloc[-1])
                row[f"{key} onset"] = onset(frame["epoch"], frame[key], fraction)
        rows.append(row)
    return pd.DataFrame(rows)


def emergence_by_sd(table: pd.DataFrame) -> pd.DataFrame:
    """`emergence_table` summarised per SD rate over all its teachers: per onset column, the mean over teachers and
    its t-interval (none below `analysis.inference.MIN_TEACHERS` teachers), and the number of teachers."""
    onsets = [c for c in table if c.endswith(" onset")]
    rows = []
    for sd, group in table.groupby("sd", sort=True):
        row: dict = {"sd": sd, "n_teachers": len(group)}
        for column in onsets:
            mean, lo, hi, note = mean_ci_teachers(group[column].to_numpy(float))
            row[column] = mean
            row[f"{column} CI"] = [lo, hi] if math.isfinite(lo) else None
            if note:
                row["note"] = note
        rows.append(row)
    return pd.DataFrame(rows)
