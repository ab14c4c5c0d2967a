"""Figures for the reports (matplotlib, Agg, no pyplot state), in one style: fonts that read at
normal zoom (figures are at most MAX_WIDTH_IN wide, so pages show them unscaled at 1,280 px),
labelled axes, no top/right spines, categories in their palette colours. Rendered to SVG text
(sharp at any zoom) and inlined as data URIs, so pages stay single offline files."""
from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dissect_kernels.report.html import esc
from dissect_kernels.report.palette import SERIES, category_color, category_order

MAX_WIDTH_IN = 12.0       # 12 in = 864 pt = 1,152 CSS px: fits a 1,280 px window unscaled
LABEL_PITCH_IN = 0.17     # horizontal room per rotated 9 pt tick label
STYLE = {
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 10,
    "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.frameon": False, "axes.spines.top": False,
    "axes.spines.right": False, "axes.axisbelow": True, "axes.grid": True, "axes.grid.axis": "y",
    "grid.color": "#e4e4e4", "grid.linewidth": 0.8, "axes.edgecolor": "#555555",
    "text.parse_math": False,                 # concept names may hold '$': show it as text
    "svg.fonttype": "none", "svg.hashsalt": "dissect_kernels",
}


def styled(fn):
    """Build the figure under the report style (rcParams are read when artists are made)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(min(width_in, MAX_WIDTH_IN), height_in))
    FigureCanvasAgg(fig)
    return fig


def bars_that_fit(width_in: float = MAX_WIDTH_IN) -> int:
    """How many labelled bars fit side by side in a figure of width_in inches."""
    return int((width_in - 1.2) / LABEL_PITCH_IN)


@styled
def grouped_bar(groups: Sequence[tuple[str, Sequence[tuple[str, float]]]], *, ylabel: str = "",
                title: str = "", height_in: float = 3.0, integer: bool = False,
                colors: dict[str, str] | None = None) -> Figure:
    """Bars grouped and coloured by group: groups = [(group name, [(bar label, value), ...])] in
    display order; one legend entry per group; a group's colour is colors[group] or, by default,
    its category colour. integer=True for counts. Returns a Figure (Agg canvas)."""
    groups = [(g, list(bars)) for g, bars in groups if len(bars)]
    n = sum(len(bars) for _, bars in groups) + max(len(groups) - 1, 0)
    longest = max((len(str(name)) for _, bars in groups for name, _ in bars), default=1)
    bottom_in = 0.3 + 0.065 * min(longest, 32)
    width = max(4.0, 1.2 + LABEL_PITCH_IN * n)
    fig = new_figure(width, height_in + bottom_in)
    W, H = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / W, right=1 - 0.2 / W, bottom=bottom_in / H, top=1 - 0.75 / H)
    ax = fig.add_subplot(1, 1, 1)
    x, ticks, labels = 0, [], []
    for group, bars in groups:
        xs = list(range(x, x + len(bars)))
        color = (colors or {}).get(group) or category_color(group)
        ax.bar(xs, [v for _, v in bars], color=color, label=group, width=0.75)
        ticks += xs
        labels += [_short(name) for name, _ in bars]
        x += len(bars) + 1
    ax.set_xticks(ticks, labels, rotation=90)
    ax.set_xlim(-0.8, max(x - 1.2, 1))
    ax.set_ylabel(ylabel)
    if integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _title_and_legend(fig, ax, title, len(groups))
    return fig


@styled
def series_bar(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *,
               ylabel: str = "", title: str = "", height_in: float = 3.0) -> Figure:
    """Side-by-side bars per label, one colour per series: series = [(name, values per label)]."""
    k = max(len(series), 1)
    longest = max((len(str(s)) for s in labels), default=1)
    bottom_in = 0.3 + 0.065 * min(longest, 32)
    width = max(4.0, 1.2 + max(LABEL_PITCH_IN, 0.09 * k + 0.06) * len(labels))
    fig = new_figure(width, height_in + bottom_in)
    W, H = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / W, right=1 - 0.2 / W, bottom=bottom_in / H, top=1 - 0.75 / H)
    ax = fig.add_subplot(1, 1, 1)
    step = 0.8 / k
    for j, (name, values) in enumerate(series):
        xs = [i - 0.4 + step * (j + 0.5) for i in range(len(labels))]
        ax.bar(xs, list(values), width=step * 0.95, color=SERIES[j % len(SERIES)], label=name)
    ax.set_xticks(range(len(labels)), [_short(s) for s in labels], rotation=90)
    ax.set_xlim(-0.7, len(labels) - 0.3)
    ax.set_ylabel(ylabel)
    _title_and_legend(fig, ax, title, len(series))
    return fig


@styled
def ranked_bar(bars: Sequence[tuple[str, float, str]], *, ylabel: str = "", title: str = "",
               height_in: float = 3.0) -> Figure:
    """Bars in the given order, each coloured by its category: bars = [(label, value, category)];
    one legend entry per category present."""
    longest = max((len(str(b[0])) for b in bars), default=1)
    bottom_in = 0.3 + 0.065 * min(longest, 32)
    fig = new_figure(max(4.0, 1.2 + LABEL_PITCH_IN * len(bars)), height_in + bottom_in)
    W, H = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / W, right=1 - 0.2 / W, bottom=bottom_in / H, top=1 - 0.75 / H)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(bars)), [b[1] for b in bars], width=0.75,
           color=[category_color(b[2]) for b in bars])
    cats = category_order({b[2] for b in bars})
    for cat in cats:                       # legend handles only
        ax.bar([0], [0], width=0, color=category_color(cat), label=cat)
    ax.axhline(0, color="#555555", lw=0.8)
    ax.set_xticks(range(len(bars)), [_short(b[0]) for b in bars], rotation=90)
    ax.set_xlim(-0.8, len(bars) - 0.2)
    ax.set_ylabel(ylabel)
    _title_and_legend(fig, ax, title, len(cats))
    return fig


def _short(text: str, limit: int = 32) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _title_and_legend(fig: Figure, ax, title: str, entries: int) -> None:
    """Title at the top left; the legend in one row between title and plot (never over a bar)."""
    W, H = fig.get_size_inches()
    if title:
        fig.text(0.8 / W, 1 - 0.1 / H, title, ha="left", va="top", fontsize=11, weight="bold")
    if entries:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=min(entries, 8),
                  handlelength=1, columnspacing=1.2, borderaxespad=0.2)


@styled
def layer_summary(rows: Sequence[tuple[str, dict[str, tuple[int, int]]]]) -> Figure:
    """NetDissect's summary across layers: per layer, stacked by category, the detector units
    (left) and the unique concepts they detect (right). rows = [(layer, {category: (detectors,
    unique concepts)})] in layer order."""
    cats = category_order({c for _, per in rows for c in per})
    width = min(MAX_WIDTH_IN, max(7.0, 2.2 + 1.1 * len(rows)))
    longest = max((len(layer) for layer, _ in rows), default=1)
    bottom = 0.5 + (0.07 * min(longest, 32) if len(rows) > 3 or longest > 10 else 0.0)
    fig = new_figure(width, 3.4 + bottom)
    W, H = fig.get_size_inches()
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.7 / W, right=1 - 0.2 / W, bottom=bottom / H, top=1 - 0.7 / H,
                        wspace=0.3)
    pad = max(0.0, (3 - len(rows)) / 2)           # one or two layers: bars no wider than three's
    for ax, which, label, title in zip(axes, (0, 1), ("detector units", "unique concepts detected"),
                                       ("Detector units", "Unique concepts")):
        ax.set_title(title, loc="left", fontsize=11, weight="bold", pad=24)
        base = [0] * len(rows)
        for cat in cats:
            vals = [per.get(cat, (0, 0))[which] for _, per in rows]
            ax.bar(range(len(rows)), vals, bottom=base, color=category_color(cat), label=cat, width=0.6)
            base = [b + v for b, v in zip(base, vals)]
        ax.set_xticks(range(len(rows)), [_short(layer, 24) for layer, _ in rows],
                      rotation=90 if len(rows) > 3 or longest > 10 else 0)
        ax.set_ylabel(label)
        ax.set_xlim(-0.6 - pad, len(rows) - 0.4 + pad)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if cats:
        axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(cats), 6),
                       handlelength=1, columnspacing=1.2, borderaxespad=0.2)
    return fig


def figure_svg(fig: Figure) -> str:
    """The figure as standalone SVG text: text kept as text (small, sharp), no timestamp and
    fixed ids, so the output is reproducible."""
    buf = io.StringIO()
    with rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def svg_data_uri(svg: str) -> str:
    """An <img src=...> data URI for SVG text (keeps each figure's ids out of the page's)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def figure_img(fig: Figure, alt: str) -> str:
    """HTML: the figure inline as an SVG image (shown at its natural size, shrunk to fit)."""
    return f'<img class="figure" alt="{esc(alt)}" src="{svg_data_uri(figure_svg(fig))}">'


def detector_bars(layer_result, *, max_bars: int | None = None) -> Figure | None:
    """Detector units per concept, grouped and coloured by the category of their label
    (NetDissect-Lite's bar graph; groups and bars most frequent first), at most max_bars concepts
    (default: as many as fit the page width), or None when the layer has no detector."""
    lr = layer_result
    det = lr.detector
    if not bool(det.any()):
        return None
    tally: dict[tuple[int, int], int] = {}
    for c, k in zip(lr.best_label[det].tolist(), lr.best_category[det].tolist()):
        tally[(k, c)] = tally.get((k, c), 0) + 1
    by_cat_total: dict[int, int] = {}
    for (k, _), n in tally.items():
        by_cat_total[k] = by_cat_total.get(k, 0) + n
    limit = bars_that_fit() - len(by_cat_total) + 1 if max_bars is None else max_bars
    kept = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    by_cat: dict[int, list[tuple[str, int]]] = {}
    for (k, c), n in kept:
        by_cat.setdefault(k, []).append((lr.concept_names[c], n))
    groups = [(lr.category_names[k] if k >= 0 else "-", bars)
              for k, bars in sorted(by_cat.items(), key=lambda kv: (-by_cat_total[kv[0]], kv[0]))]
    title = f"{lr.layer}: detector units per concept"
    if len(kept) < len(tally):
        title += f" (the {len(kept)} most frequent of {len(tally)} concepts)"
    return grouped_bar(groups, ylabel="detector units", title=title, integer=True)
