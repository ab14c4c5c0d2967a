"""The figure of `dissect-kernels compare`: per compared layer, each unit's best IoU in A against
B (units whose labels differ in the second colour) and the histogram of |ΔIoU| by decade."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dissect_kernels.comparison import HIST_EDGES, LayerComparison
from dissect_kernels.io.references import UnitRecords
from dissect_kernels.report.palette import SERIES
from dissect_kernels.report.plots import new_figure, styled


@styled
def comparison_figure(pairs: list[tuple[UnitRecords, UnitRecords]], results: list[LayerComparison],
                      names: tuple[str, str] = ("A", "B")):
    """A Figure (Agg canvas) with one row of two panels per layer pair."""
    fig = new_figure(9.0, 3.2 * max(1, len(results)))
    for row, ((a, b), r) in enumerate(zip(pairs, results)):
        ax = fig.add_subplot(len(results), 2, 2 * row + 1)
        same = np.array([la == lb for la, lb in zip(a.label, b.label)])
        for mask, color, what in ((same, SERIES[0], "same label"), (~same, SERIES[1], "different label")):
            if mask.any():
                ax.scatter(a.iou[mask], b.iou[mask], s=9, color=color, label=f"{what} ({int(mask.sum())})")
        top = float(np.nanmax(np.concatenate([a.iou, b.iou, [0.05]])))
        ax.plot([0, top], [0, top], color="#999999", linewidth=0.8)
        ax.set_xlabel(f"best IoU, {names[0]}")
        ax.set_ylabel(f"best IoU, {names[1]}")
        ax.set_title(r.layer_a if r.layer_a == r.layer_b else f"{r.layer_a} vs {r.layer_b}")
        ax.legend(loc="upper left")
        hx = fig.add_subplot(len(results), 2, 2 * row + 2)
        ticks = ["0"] + [f"≤1e{int(np.log10(e))}" for e in HIST_EDGES[1:]]
        hx.bar(range(len(r.iou_histogram)), r.iou_histogram, color=SERIES[0])
        hx.set_xticks(range(len(ticks)), ticks, rotation=90)
        hx.set_ylabel("units")
        hx.set_title(f"|ΔIoU| (max {r.iou_delta_max:.2g})")
    fig.tight_layout()
    return fig


def save_comparison_figure(path, pairs, results, names=("A", "B")) -> Path:
    """Write the figure as PNG (or SVG, by the file's suffix)."""
    path = Path(path)
    fig = comparison_figure(pairs, results, names)
    fig.savefig(path, format=path.suffix.lstrip(".") or "png", dpi=110)
    return path
