"""PNG pictures of MT-bench results: a per-category radar for scores, bars for win rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_single(summary: dict[str, dict[str, Any]], path: Path, *, title: str) -> None:
    """Radar chart: one polygon per model over the categories (score 0-10)."""
    categories = sorted({c for row in summary.values() for c in row["categories"]})
    figure = plt.figure(figsize=(7, 7))
    axes = figure.add_subplot(projection="polar")
    if categories:
        angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
        for model, row in summary.items():
            values = [row["categories"].get(c) or 0.0 for c in categories]
            axes.plot(
                angles + angles[:1], values + values[:1], linewidth=1.5, label=f"{model} ({row['score']})"
            )
            axes.fill(angles + angles[:1], values + values[:1], alpha=0.08)
        axes.set_xticks(angles)
        axes.set_xticklabels(categories)
    axes.set_ylim(0, 10)
    axes.set_title(title, pad=20)
    if summary:
        axes.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_pairwise(summary: dict[str, dict[str, Any]], path: Path, *, title: str) -> None:
    """Stacked horizontal bars of win, tie and loss rates per model."""
    models = list(summary)
    figure, axes = plt.subplots(figsize=(8, 1.0 + 0.5 * max(1, len(models))))
    left = np.zeros(len(models))
    for key, label, colour in (
        ("win_rate", "win", "#4c9a2a"),
        ("tie_rate", "tie", "#bbbbbb"),
        ("loss_rate", "loss", "#c0392b"),
    ):
        values = np.array([summary[m][key] for m in models], dtype=float)
        axes.barh(models, values, left=left, label=label, color=colour)
        left += values
    axes.set_xlim(0, 1)
    axes.invert_yaxis()
    axes.set_xlabel("share of judged question turns")
    axes.set_title(title)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
