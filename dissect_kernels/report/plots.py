"""Plots for the reports (matplotlib, Agg, no pyplot state): a generic grouped bar chart,
reused for detectors-per-concept here and for ablation effects later, rendered to SVG text."""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd")


def grouped_bar(groups: Sequence[tuple[str, Sequence[tuple[str, float]]]], *, ylabel: str = "",
                title: str = "", bar_width_in: float = 0.22, height_in: float = 3.2,
                max_width_in: float = 60.0, integer: bool = False) -> Figure:
    """Bars grouped and coloured by group: groups = [(group name, [(bar label, value), ...]), ...]
    in display order; one legend entry per group; integer=True for counts (whole-number ticks).
    Returns a Figure (Agg canvas)."""
    groups = [(g, list(bars)) for g, bars in groups if len(bars)]
    n = sum(len(bars) for _, bars in groups)
    longest = max((len(str(name)) for _, bars in groups for name, _ in bars), default=1)
    bottom_in = 0.45 + 0.065 * min(longest, 40)      # room for the rotated labels
    top_in = 0.6 if title else 0.35
    width = min(max_width_in, max(3.0, 1.2 + bar_width_in * (n + len(groups)),
                                  1.0 + 0.8 * min(len(groups), 8)))
    fig = Figure(figsize=(width, height_in + bottom_in))
    FigureCanvasAgg(fig)
    H = height_in + bottom_in
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=bottom_in / H,
                        top=1 - top_in / H)
    ax = fig.add_subplot(1, 1, 1)
    x, ticks, labels = 0, [], []
    for i, (group, bars) in enumerate(groups):
        xs = list(range(x, x + len(bars)))
        ax.bar(xs, [v for _, v in bars], color=PALETTE[i % len(PALETTE)], label=group, width=0.8)
        ticks += xs
        labels += [str(name)[:40] for name, _ in bars]
        x += len(bars) + 1
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_xlim(-1, max(x - 1, 1))
    ax.set_ylabel(ylabel)
    if title:
        fig.text(0.8 / width, 1 - 0.12 / H, title, ha="left", va="top", fontsize=9)
    if groups:  # between title and bars, so it never hides one
        ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncol=min(len(groups), 8), handlelength=1, columnspacing=1)
    if integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def figure_svg(fig: Figure) -> str:
    """The figure as standalone SVG text: text kept as text (small, fast), no timestamp and
    fixed ids, so the output is reproducible."""
    buf = io.StringIO()
    with rc_context({"svg.hashsalt": "dissect_kernels", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def svg_data_uri(svg: str) -> str:
    """An <img src=...> data URI for SVG text (keeps each figure's ids out of the page's)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def detector_bars(layer_result, *, max_bars: int = 200) -> Figure | None:
    """Detector units per concept, grouped by the category of their label (NetDissect-Lite's
    bar graph; groups and bars most frequent first), at most max_bars concepts (the most
    frequent), or None when the layer has no detector."""
    lr = layer_result
    det = lr.detector
    if not bool(det.any()):
        return None
    tally: dict[tuple[int, int], int] = {}
    for c, k in zip(lr.best_label[det].tolist(), lr.best_category[det].tolist()):
        tally[(k, c)] = tally.get((k, c), 0) + 1
    kept = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:max_bars]
    by_cat: dict[int, list[tuple[str, int]]] = {}
    for (k, c), n in kept:
        by_cat.setdefault(k, []).append((lr.concept_names[c], n))
    groups = [(lr.category_names[k] if k >= 0 else "-", bars)
              for k, bars in sorted(by_cat.items(), key=lambda kv: (-sum(n for _, n in kv[1]), kv[0]))]
    title = f"{lr.layer}: detectors per concept"
    if len(kept) < len(tally):
        title += f" (the {len(kept)} most frequent of {len(tally)})"
    return grouped_bar(groups, ylabel="detector units", title=title, integer=True)
