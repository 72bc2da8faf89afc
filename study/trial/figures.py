"""The figures of one trial's folder (similarity.png, r2_per_layer.png, dynamics.png, layer_swaps.png), drawn on
the Agg canvas with no pyplot state: each function returns one `Figure`; `save` writes one to a PNG file, `to_png`
renders it to bytes. Matplotlib only: the trial layer draws these without importing analysis/ (whose report figures
reuse `save` and `to_png`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator


def to_png(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, rendered by the Agg canvas."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)  # constrained layout already fits the content: one draw, not two
    return buffer.getvalue()


def save(figure: Figure, path: Path, dpi: int = 120) -> Path:
    """Write the figure to `path` as PNG."""
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)
    return path


def similarity_heatmap(similarity: np.ndarray, phase_bounds: Sequence[Sequence[int]], title: str = "") -> Figure:
    """S [L, L] over layers 1..L as a heatmap, phases outlined."""
    num_layers = similarity.shape[0]
    fig = Figure(figsize=(4.6, 4))
    ax = fig.subplots()
    image = ax.imshow(similarity, cmap="viridis", origin="upper", extent=(0.5, num_layers + 0.5, num_layers + 0.5, 0.5))
    for first, last in phase_bounds:
        ax.add_patch(
            Rectangle(
                (first - 0.5, first - 0.5), last - first + 1, last - first + 1, fill=False, edgecolor="white", lw=2
            )
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def r2_curves(r2_per_layer: Mapping[str, Sequence[float]], title: str = "Raptor rollout R² per layer (test)") -> Figure:
    """One line per token group: R^2 of the Raptor's rollout against the teacher, layers 1..L."""
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for group, values in r2_per_layer.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=group)
    ax.set_xlabel("layer")
    ax.set_ylabel("R²")
    ax.set_ylim(min(0.0, *(min(v) for v in r2_per_layer.values())), 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


TRIAL_DYNAMICS_PANELS = (  # (title, curve names, first layer on the x axis)
    ("directional convergence γ_l = cos(u_l, u_L)", ("gamma_cls", "gamma_patch"), 0),
    ("angular speed ∠(u_{l-1}, u_l) [rad]", ("speed_cls", "speed_patch", "speed_reg"), 1),
    ("patch coherence", ("coherence",), 0),
    ("stable rank of U_l = x_l - x_{l-1}", ("stable_rank",), 1),
    ("perturbation angle ∠(x′_m, x_m) / ∠(x′_l, x_l)", ("recovery",), None),
)
_COLOURS = {"cls": "tab:red", "patch": "tab:blue", "reg": "tab:green"}


def dynamics_figure(curves: Mapping, title: str = "") -> Figure:
    """Dynamics curves of `study.trial.dynamics.trial_dynamics`: teacher solid, Raptor dashed."""
    fig = Figure(figsize=(13, 7))
    axes = fig.subplots(2, 3)
    for ax, (panel, names, first) in zip(axes.flat, TRIAL_DYNAMICS_PANELS):
        for model, style in (("teacher", "-"), ("raptor", "--")):
            for name in names:
                values = curves.get(model, {}).get(name)
                if values is None:
                    continue
                start = curves.get("perturb_layer", 0) + 1 if first is None else first
                group = name.rsplit("_", 1)[-1]
                ax.plot(
                    range(start, start + len(values)),
                    values,
                    style,
                    marker="o",
                    ms=3,
                    color=_COLOURS.get(group, "tab:purple"),
                    label=f"{model} {group if len(names) > 1 else ''}".strip(),
                )
        if first is None:
            ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    fig.suptitle(title or f"dynamics on {curves.get('num_samples', '?')} test samples (teacher solid, Raptor dashed)")
    fig.tight_layout()
    return fig


def layer_swaps_figure(swap: Mapping, title: str = "teacher accuracy with adjacent layers swapped") -> Figure:
    """One bar per swapped pair (l, l+1): intra-phase blue, inter-phase red; unswapped accuracy dashed."""
    rows = sorted(
        [(i, j, acc, "intra") for i, j, acc in swap["intra"]] + [(i, j, acc, "inter") for i, j, acc in swap["inter"]]
    )
    fig = Figure(figsize=(max(4.0, 0.45 * len(rows) + 2), 3.4))
    ax = fig.subplots()
    colours = {"intra": "tab:blue", "inter": "tab:red"}
    for pos, (_i, _j, acc, kind) in enumerate(rows):
        ax.bar(pos, acc, color=colours[kind], label=kind)
    ax.axhline(swap["baseline_acc"], color="black", ls="--", lw=1, label="unswapped")
    ax.set_xticks(
        range(len(rows)), [f"{i}↔{j}" for i, j, _, _ in rows], rotation=90 if len(rows) > 12 else 0, fontsize=8
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    return _finish(fig, ax, title)


def _finish(fig: Figure, ax, title: str) -> Figure:
    """One legend entry per label (the bars and dots of a kind share one), the title, a tight layout."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_replacement_figure(record: Mapping, title: str = "teacher accuracy with n layers replaced") -> Figure:
    """Per n, every draw's accuracy (dots) and the mean (bar) of intra-phase (blue) and inter-phase (red)
    replacements (`study.science.dynamics.layer_replacement`); unreplaced accuracy dashed."""
    fig = Figure(figsize=(4.6, 3.4))
    ax = fig.subplots()
    colours, offsets = {"intra": "tab:blue", "inter": "tab:red"}, {"intra": -0.2, "inter": 0.2}
    ns = sorted({int(key[1:]) for kind in colours for key in record.get(kind, {})})
    for kind, colour in colours.items():
        for n in ns:
            entry = record[kind].get(f"n{n}", {})
            values = [draw["acc"] for draw in entry.get("draws", [])]
            if not values:
                continue
            pos = n + offsets[kind]
            ax.bar(pos, entry["mean"], width=0.36, color=colour, alpha=0.35, label=kind)
            ax.scatter(np.full(len(values), pos), values, s=8, color=colour)
    ax.axhline(record["baseline"], color="black", ls="--", lw=1, label="unreplaced")
    ax.set_xticks(ns, [f"n={n}" for n in ns])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"accuracy ({record['num_images']} images)")
    return _finish(fig, ax, title)
