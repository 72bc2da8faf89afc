"""The report's figures (Agg canvas, no pyplot state): each function returns one `Figure`; `to_png` renders it to
bytes. A trial's own figures, `save` and `to_png` live in study/trial/figures.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from study.contract import ACC_RATIO, K_PARAM, SD_PARAM, SWAP_METRICS
from study.trial.figures import to_png as to_png  # the one PNG renderer, re-exported for the report

if TYPE_CHECKING:
    pass

# The report's figures import the statistics (analysis.fit: statsmodels, scipy.stats) where they draw: a trial's
# process draws its own figures only and does not pay for those imports (results/throughput/README.md, smoke sweep).

PANEL = 4.2
"""Side of one panel, inches."""
DYNAMICS_PANELS = (
    ("gamma_cls", 0, "γ_cls = cos(u_l, u_L)"),
    ("speed_cls", 1, "angular speed, cls (rad / layer)"),
    ("stable_rank", 1, "stable rank of the update U_l = x_l − x_(l−1)"),
)
"""(curve in result.json, layer of its first value, y label): γ covers x_0..x_L, the others steps 1..L."""
SWAP_STYLES = {SWAP_METRICS[0]: ("unswapped", "k"), SWAP_METRICS[1]: ("intra-phase swap", "tab:blue"),
               SWAP_METRICS[2]: ("inter-phase swap", "tab:red")}  # fmt: skip


EMERGENCE_PANELS = (
    ("val_acc", "validation accuracy"),
    ("mean_sim", "mean layer-layer similarity"),
    ("k3.within_sim", "within-phase similarity (DP, k = 3)"),
    ("k3.contrast", "within − between phase similarity (k = 3)"),
)
"""(key of an emergence snapshot, y label): the panels of `emergence_curves`."""


@dataclass(frozen=True)
class EmergenceTrace:
    """One teacher's phase snapshots across training (result.json ``teacher.emergence``), records with an 'epoch'."""

    label: str
    sd: float
    records: Sequence[Mapping[str, float]]


@dataclass(frozen=True)
class SimilarityPanel:
    """One layer-layer similarity matrix (layers 1..L) and its phases as 1-based inclusive bounds."""

    title: str
    matrix: np.ndarray
    bounds: Sequence[Sequence[int]]


@dataclass(frozen=True)
class DynamicsTrace:
    """One trial's dynamics curves (result.json ``dynamics``), teacher and Raptor: {curve name: values per layer}."""

    label: str
    sd: float
    teacher: Mapping[str, Sequence[float]]
    raptor: Mapping[str, Sequence[float]]


# ----------------------------------------------------------------------------- a sweep

MAX_COLUMNS = 3
"""No figure strip is wider than this many panels, so text stays readable at 100% zoom."""


def panel_grid(count: int, width: float = PANEL) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` panels in rows of at most `MAX_COLUMNS`; spare axes hidden. Returns (figure, axes)."""
    columns = max(1, min(count, MAX_COLUMNS))
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(width * columns, PANEL * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes[:count]


def similarity_grid(rows: Sequence[Sequence[SimilarityPanel]]) -> Figure:
    """Similarity heatmaps, one row per kind on its own colour scale; phases outlined, boundaries dashed."""
    columns = max(len(panels) for panels in rows)
    figure = Figure(figsize=(PANEL * columns, PANEL * 0.9 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, panels in zip(axes, rows, strict=True):
        norm = Normalize(min(float(np.min(p.matrix)) for p in panels), 1.0)
        for ax, panel in zip(row_axes, panels, strict=False):  # spare axes are hidden below
            depth = len(panel.matrix)
            image = ax.imshow(panel.matrix, cmap="viridis", norm=norm, extent=(0.5, depth + 0.5, depth + 0.5, 0.5))
            for first, last in panel.bounds:
                side = last - first + 1
                ax.add_patch(Rectangle((first - 0.5, first - 0.5), side, side, fill=False, ec="white", lw=2))
            for _, last in panel.bounds[:-1]:
                ax.axhline(last + 0.5, color="white", ls="--", lw=0.8)
                ax.axvline(last + 0.5, color="white", ls="--", lw=0.8)
            ax.set_title(panel.title, fontsize=10)
            ax.set(xlabel="layer", ylabel="layer")
            colorbar = figure.colorbar(image, ax=ax, shrink=0.8, label="similarity")
            colorbar.ax.ticklabel_format(useOffset=False)
        for ax in row_axes[len(panels) :]:
            ax.set_axis_off()
    return figure


def dynamics_curves(traces: Sequence[DynamicsTrace]) -> Figure:
    """`DYNAMICS_PANELS` per layer: teacher solid, Raptor dashed, one colour per SD rate (plasma, low to high)."""
    figure, axes = panel_grid(len(DYNAMICS_PANELS))
    codes, levels = pd.factorize(pd.Series([t.sd for t in traces], dtype=float), sort=True, use_na_sentinel=False)
    palette = colormaps["plasma"](np.linspace(0.0, 0.85, len(levels)))
    for ax, (curve, first, ylabel) in zip(axes, DYNAMICS_PANELS, strict=True):
        for trace, code in zip(traces, codes, strict=True):
            for curves, style in ((trace.teacher, "-"), (trace.raptor, "--")):
                values = curves.get(curve, [])
                ax.plot(range(first, first + len(values)), values, style, marker="o", ms=3, color=palette[code])
        ax.set(xlabel="layer", ylabel=ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=palette[c], label=trace.label) for trace, c in zip(traces, codes, strict=True)]
    handles += [Line2D([], [], color="grey", ls=ls, label=name) for ls, name in (("-", "teacher"), ("--", "Raptor"))]
    axes[0].legend(handles=handles, fontsize=7)
    return figure


def emergence_curves(traces: Sequence[EmergenceTrace]) -> Figure:
    """`EMERGENCE_PANELS` against epochs of teacher training (0 = init), one line per teacher coloured by SD rate."""
    figure, axes = panel_grid(len(EMERGENCE_PANELS))
    codes, levels = pd.factorize(pd.Series([t.sd for t in traces], dtype=float), sort=True, use_na_sentinel=False)
    palette = colormaps["plasma"](np.linspace(0.0, 0.85, max(1, len(levels))))
    for ax, (key, ylabel) in zip(axes, EMERGENCE_PANELS, strict=True):
        for trace, code in zip(traces, codes, strict=True):
            frame = pd.DataFrame(trace.records)
            if key in frame:
                ax.plot(frame["epoch"], frame[key], marker="o", ms=3, color=palette[code], alpha=0.8)
        ax.set(xlabel="teacher epoch (0 = init)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=palette[c], label=f"{SD_PARAM} {sd:g}") for c, sd in enumerate(levels)]
    axes[0].legend(handles=handles, fontsize=7)
    return figure


def swap_accuracy(summary: pd.DataFrame) -> Figure:
    """`SWAP_METRICS` per SD rate, mean ± std over teachers; ``summary`` is `analysis.sweep.dynamics_by_sd` output."""
    figure = Figure(figsize=(PANEL * 1.4, PANEL), layout="constrained")
    ax = figure.subplots()
    levels = sorted(summary["sd"].unique())
    for offset, (metric, (label, colour)) in zip((-0.15, 0.0, 0.15), SWAP_STYLES.items(), strict=True):
        rows = summary[summary["metric"] == metric]
        if rows.empty:
            continue
        x = [levels.index(sd) + offset for sd in rows["sd"]]
        ax.errorbar(x, rows["mean"], yerr=rows["std"].fillna(0.0), fmt="o", capsize=4, color=colour, label=label)
    ax.set_xticks(range(len(levels)), [f"{sd:g}" for sd in levels])
    ax.set(xlabel=SD_PARAM, ylabel="teacher accuracy", title="Adjacent-layer swaps: intra vs inter phase")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return figure


def fidelity_scatter(trials: pd.DataFrame, fits: pd.DataFrame, color_by: str = SD_PARAM, band: bool = True) -> Figure:
    """One panel per fit row: y against x, points coloured by ``color_by``; with ``band`` the trial-level OLS line
    and its 95% confidence band (naive: trials as independent), without it the numbers in the title only."""
    from analysis.fit import CONFIDENCE, ols_band

    figure, axes = panel_grid(len(fits))
    colour = pd.to_numeric(trials[color_by], errors="coerce") if color_by in trials else pd.Series(np.nan, trials.index)
    norm = Normalize(colour.min(), colour.max()) if colour.notna().any() else None
    for ax, fit in zip(axes, fits.itertuples(index=False), strict=True):
        ax.scatter(
            trials[fit.x],
            trials[fit.y],
            c=colour if norm else "tab:blue",
            cmap="plasma",
            norm=norm,
            s=22,
            ec="k",
            lw=0.3,
        )
        line = ols_band(trials[fit.x], trials[fit.y]) if band else None
        if line is not None:
            ax.plot(line["x"], line["fit"], color="k", lw=1.2, label="OLS fit")
            ax.fill_between(line["x"], line["lo"], line["hi"], color="k", alpha=0.15, label=f"{CONFIDENCE:.0%} CI")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(xlabel=fit.x, ylabel=fit.y)
        ax.set_title(
            f"R²={fit.r2:.3f}  slope={fit.slope:.3g} [{fit.slope_lo:.3g}, {fit.slope_hi:.3g}]  n={fit.n}", fontsize=9
        )
    if norm:
        figure.colorbar(ScalarMappable(norm=norm, cmap="plasma"), ax=axes.tolist(), label=color_by, shrink=0.8)
    return figure


def layer_curves(trials: pd.DataFrame, columns: Sequence[str], by: str = K_PARAM, band: bool = True) -> Figure:
    """Per-layer R^2 (list columns) by ``by``: mean over trials, with ``band`` a 95% t-interval over trials."""
    from scipy import stats

    from analysis.fit import CONFIDENCE

    figure, axes = panel_grid(len(columns))
    for ax, column in zip(axes, columns, strict=True):
        for level, group in trials.dropna(subset=[by]).groupby(by, sort=True):
            curves = [c for c in group[column] if isinstance(c, list) and c]
            if not curves:
                continue
            table = pd.DataFrame(
                {i: pd.Series(c, dtype=float) for i, c in enumerate(curves)}
            ).T  # trial x layer, NaN-padded
            mean = table.mean().to_numpy()
            half = (table.sem() * stats.t.ppf((1 + CONFIDENCE) / 2, table.count() - 1)).to_numpy()
            layers = np.arange(1, table.shape[1] + 1)
            ax.plot(layers, mean, marker="o", ms=3, label=f"{by}={level} (n={len(curves)})")
            if band:
                ax.fill_between(layers, mean - half, mean + half, alpha=0.2)
        ax.set(title=column, xlabel="teacher layer", ylabel="R²")
        ax.legend(fontsize=8)
    return figure


def layer_by_level(trials: pd.DataFrame, columns: Sequence[str], by: str, unit: str) -> Figure:
    """Per-layer R^2 (list columns), one line per level of ``by``: per layer the mean over units (``unit``, the
    teacher) of each unit's mean curve; panels in rows of `MAX_COLUMNS`."""
    figure, axes = panel_grid(len(columns))
    levels = sorted(trials[by].dropna().unique())
    palette = colormaps["plasma"](np.linspace(0.0, 0.85, max(1, len(levels))))
    for ax, column in zip(axes, columns, strict=True):
        for colour, level in zip(palette, levels, strict=True):
            group = trials[(trials[by] == level) & trials[column].map(lambda v: isinstance(v, list) and len(v) > 0)]
            if group.empty:
                continue
            table = pd.DataFrame(group[column].tolist(), index=group[unit].to_numpy()).groupby(level=0).mean()
            layers = np.arange(1, table.shape[1] + 1)
            ax.plot(
                layers,
                table.mean().to_numpy(),
                marker="o",
                ms=3,
                color=colour,
                label=f"{by}={level:g} ({len(table)} teachers)",
            )
        ax.set(title=column, xlabel="teacher layer", ylabel="R²")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return figure


def accuracy_vs_k(
    trials: pd.DataFrame, paper: Mapping[int, float], metric: str = ACC_RATIO, by: str = K_PARAM, band: bool = True
) -> Figure:
    """Accuracy recovery per k: trials (jittered), mean (with ``band`` its 95% t-interval), the paper's anchors."""
    from analysis.fit import CONFIDENCE, mean_ci

    figure = Figure(figsize=(PANEL * 1.4, PANEL), layout="constrained")
    ax = figure.subplots()
    jitter = np.random.default_rng(0)
    data = trials.dropna(subset=[by, metric])
    for index, (level, group) in enumerate(data.groupby(by, sort=True)):
        ax.scatter(level + jitter.uniform(-0.12, 0.12, len(group)), group[metric], s=12, alpha=0.4, color="tab:blue")
        mean, lo, hi, _ = mean_ci(group[metric])
        err = [[mean - lo], [hi - mean]] if np.isfinite(lo) and band else None
        label = (f"this sweep: mean, {CONFIDENCE:.0%} CI" if band else "this sweep: mean") if index == 0 else None
        ax.errorbar([level], [mean], yerr=err, fmt="o", color="k", capsize=4, zorder=3, label=label)
    ax.scatter(
        list(paper), list(paper.values()), marker="*", s=140, color="tab:red", zorder=4, label="paper (DINOv2 ViT-B)"
    )
    ax.set(xlabel=by, ylabel=f"{metric} (Raptor / teacher probe accuracy)", title="Accuracy recovery vs k")
    ax.set_xticks(sorted({*data[by].astype(int).tolist(), *paper}))
    ax.legend(fontsize=8)
    return figure
