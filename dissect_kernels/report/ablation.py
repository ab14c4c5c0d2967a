"""The files of a classifier ablation run: ablation.safetensors / .csv / .json and ablation.html
(an overview of the drops, then per class its top units and balanced accuracy vs N), plus a
standalone grid plot (plot_ablation)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors.torch import save_file

from dissect_kernels.io import atomic_write, ensure_dir
from dissect_kernels.report.html import esc, fmt, html_page, meta_table
from dissect_kernels.report.plots import PALETTE, figure_svg, grouped_bar, svg_data_uri

TABLE_UNITS = 10          # units per class in the HTML table and the CSV's top_units column
FILES = ("ablation.safetensors", "ablation.csv", "ablation.json", "ablation.html")


def build_tables(res, rank, names, positives, top_units: int = TABLE_UNITS):
    """Rows of ablation.csv (one per class) and the JSON summary's per-class entries."""
    rows, per_class = [], []
    for c, name in enumerate(names):
        order = rank.ranking[c, :top_units].tolist()
        pos = {int(u): i for i, u in enumerate(rank.units.tolist())}
        drops = [float(rank.drop[pos[u], c]) for u in order]
        row = {"class": c, "name": name, "positives": int(positives[c]),
               "baseline_precision": float(res.baseline_precision[c]),
               "baseline_recall": float(res.baseline_recall[c]),
               "baseline_balanced": float(res.baseline_balanced[c])}
        for t, n in enumerate(res.top_n.tolist()):
            row[f"top{n}_balanced"] = float(res.topn_balanced[c, t])
        for t, n in enumerate(res.top_n.tolist()):
            row[f"allbut{n}_balanced"] = float(res.allbut_balanced[c, t])
        row["top_units"] = " ".join(map(str, order))
        row["top_unit_drops"] = " ".join(f"{d:.6g}" for d in drops)
        rows.append(row)
        per_class.append({**{k: v for k, v in row.items() if k not in ("top_units", "top_unit_drops")},
                          "top_units": order, "rank_drop": drops})
    return rows, per_class


def class_plot(res, c: int, name: str) -> str:
    """SVG: balanced accuracy vs N, top-N ablated and all but the top N ablated."""
    fig = Figure(figsize=(4.2, 2.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = res.top_n.tolist()
    ax.plot(n, res.topn_balanced[c].tolist(), "o-", color=PALETTE[3], label="top-N ablated")
    ax.plot(n, res.allbut_balanced[c].tolist(), "s-", color=PALETTE[0], label="all but top-N ablated")
    ax.axhline(float(res.baseline_balanced[c]), ls="--", color="gray", label="unablated")
    ax.axhline(0.5, ls=":", color="#bbbbbb", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(n, [str(v) for v in n], fontsize=7)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("N", fontsize=8)
    ax.set_ylabel("balanced accuracy", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=6, frameon=False, loc="lower left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return figure_svg(fig)


def render_html(res, rank, names, rows, meta: dict) -> str:
    """ablation.html: an overview bar chart of drops, then per class its top units (ranked on
    the rank split) and balanced accuracy vs N (eval split), figures inline (offline)."""

    ns = res.top_n.tolist()
    show = [t for t, n in enumerate(ns) if n in (ns[0], 5)] or [0]
    groups = [(f"top-{ns[t]} ablated", [(nm, float(res.baseline_balanced[c] - res.topn_balanced[c, t]))
                                        for c, nm in enumerate(names)]) for t in show]
    overview = grouped_bar(groups, ylabel="drop in balanced accuracy",
                           title=f"{meta['layer']}: balanced-accuracy drop per class ({meta['eval_split']})")
    parts = [f"<h1>Unit ablation: layer {esc(meta['layer'])}</h1>",
             meta_table([(k, v) for k, v in meta.items() if k != "seconds"]),
             "<p>Units are ranked per class by the drop in balanced accuracy ((recall + TNR) / 2) "
             f"when each is zeroed alone, on the <b>{esc(meta['rank_split'])}</b> split; the top-N "
             f"units, and all units but the top N, are then zeroed on the <b>{esc(meta['eval_split'])}"
             "</b> split. Each output is a binary presence classifier (logit &gt; 0).</p>",
             f'<img class="bargraph" alt="drop per class" src="{svg_data_uri(figure_svg(overview))}">']
    for c, (nm, row) in enumerate(zip(names, rows)):
        parts.append(f'<h2 id="class-{c}">{esc(nm)}</h2>')
        parts.append(meta_table([("positives (eval)", row["positives"]),
                                 ("precision / recall", f"{fmt(row['baseline_precision'])} / "
                                                        f"{fmt(row['baseline_recall'])}"),
                                 ("balanced accuracy", fmt(row["baseline_balanced"]))]))
        parts.append(f'<img alt="balanced accuracy vs N for {esc(nm)}" '
                     f'src="{svg_data_uri(class_plot(res, c, nm))}">')
        units = row["top_units"].split()
        drops = row["top_unit_drops"].split()
        pos = {int(u): i for i, u in enumerate(rank.units.tolist())}
        trs = "".join(f"<tr><td class=\"num\">{i + 1}</td><td class=\"num\">{u}</td>"
                      f"<td class=\"num\">{fmt(float(rank.single_balanced[pos[int(u)], c]))}</td>"
                      f"<td class=\"num\">{fmt(float(d))}</td></tr>" for i, (u, d) in enumerate(zip(units, drops)))
        parts.append('<table class="units sortable"><thead><tr><th>rank</th><th>unit</th>'
                     f"<th>balanced acc. ablated ({esc(meta['rank_split'])})</th><th>drop</th></tr></thead>"
                     f"<tbody>{trs}</tbody></table>")
        nrows = "".join(f"<tr><td class=\"num\">{n}</td><td class=\"num\">{fmt(row[f'top{n}_balanced'])}</td>"
                        f"<td class=\"num\">{fmt(row[f'allbut{n}_balanced'])}</td></tr>" for n in ns)
        parts.append(f"<table class=\"units\"><thead><tr><th>N</th><th>top-N ablated</th>"
                     f"<th>all but top-N ablated</th></tr></thead><tbody>{nrows}</tbody></table>")
    return html_page(f"Unit ablation: {meta['layer']}", "\n".join(parts))


def write_ablation(out: Path, res, rank, names, positives, meta: dict) -> list[Path]:
    """All four files at once (temp files + os.replace; none are replaced on error)."""
    out = ensure_dir(out)
    rows, per_class = build_tables(res, rank, names, positives)
    state = res.state_dict()
    for k, v in rank.state_dict().items():   # the ranking run (single-unit ablation, rank split)
        if k.startswith(("single_", "baseline_", "drop")) or k == "num_samples":
            state[f"rank_{k}"] = v
    state["positives"] = positives.to(torch.int64).contiguous()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    summary = {**meta, "classes": per_class}
    page = render_html(res, rank, names, rows, meta)
    return atomic_write(out, {
        "ablation.safetensors": lambda p: save_file(state, str(p), metadata={"classes": json.dumps(names)}),
        "ablation.csv": lambda p: Path(p).write_text(buf.getvalue(), encoding="utf-8"),
        "ablation.json": lambda p: Path(p).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8"),
        "ablation.html": lambda p: Path(p).write_text(page, encoding="utf-8")})


def plot_ablation(result, out_path, *, classes: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """One panel per class (a grid in one image): balanced accuracy vs N with the top-N units
    ablated and with all but the top N ablated, the unablated level dashed. Returns the path."""
    C = result.baseline_balanced.shape[0]
    classes = list(range(C)) if classes is None else list(classes)
    ncol = max(1, math.ceil(math.sqrt(len(classes))))
    nrow = math.ceil(len(classes) / ncol)
    fig = Figure(figsize=(3 * ncol, 2.4 * nrow))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    n = result.top_n.numpy()
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    for ax, c in zip(axes.flat, classes):
        ax.plot(n, result.topn_balanced[c].numpy(), "o-", label="top-N ablated")
        ax.plot(n, result.allbut_balanced[c].numpy(), "s-", label="all but top-N ablated")
        ax.axhline(float(result.baseline_balanced[c]), ls="--", color="gray", label="unablated")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(n, [str(v) for v in n], fontsize=7)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(class_names[c] if class_names is not None else f"class {c}", fontsize=9)
        ax.set_xlabel("N", fontsize=8)
        ax.set_ylabel("balanced acc.", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    return str(out_path)
