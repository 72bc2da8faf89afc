"""Trial figures (matplotlib, Agg backend): similarity heatmap with phase boundaries, R^2 per layer."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def similarity_heatmap(similarity: np.ndarray, phase_bounds: Sequence[Sequence[int]], path: Path, title: str = "") -> Path:
    """S [L, L] over layers 1..L as a heatmap, phases outlined."""
    num_layers = similarity.shape[0]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow(similarity, cmap="viridis", origin="upper", extent=(0.5, num_layers + 0.5, num_layers + 0.5, 0.5))
    for first, last in phase_bounds:
        ax.add_patch(plt.Rectangle((first - 0.5, first - 0.5), last - first + 1, last - first + 1, fill=False, edgecolor="white", lw=2))
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def r2_curves(r2_per_layer: Mapping[str, Sequence[float]], path: Path, title: str = "Raptor rollout R² per layer (test)") -> Path:
    """One line per token group: R^2 of the Raptor's rollout against the teacher, layers 1..L."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for group, values in r2_per_layer.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=group)
    ax.set_xlabel("layer")
    ax.set_ylabel("R²")
    ax.set_ylim(min(0.0, *(min(v) for v in r2_per_layer.values())), 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
