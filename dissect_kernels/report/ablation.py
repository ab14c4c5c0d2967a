"""The files of a classifier ablation run: ablation.safetensors / .csv / .json and its report
site (index.html, ablation.html: the drop per class as a figure and a sortable table, then a
card per class with its top units and balanced accuracy vs N; N beyond the layer's units is
shown once, as 'all'), plus a standalone grid plot (plot_ablation)."""
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
from dissect_kernels.report.html import esc, fixed, meta_table, num_cell
from dissect_kernels.report.palette import REFERENCE, SERIES
from dissect_kernels.report.plots import (figure_img, figure_svg, new_figure, series_bar, styled,
                                          svg_data_uri)
from dissect_kernels.report.site import INDEX_FILE, MANIFEST_FILE, Site

TABLE_UNITS = 10          # units per class in the HTML table and the CSV's top_units column
ABLATION_PAGE = "ablation.html"
FILES = ("ablation.safetensors", "ablation.csv", "ablation.json", ABLATION_PAGE, INDEX_FILE, MANIFEST_FILE)
SORTED = ' aria-sort="descending"'    # the column the class table arrives sorted by


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


def shown_columns(top_n: list[int], units: int) -> list[tuple[int, int, str]]:
    """The N columns worth showing: (column, N, label) for each N below the layer's unit count,
    then the first N >= units once, labelled 'all U' (larger N ablate the same units)."""
    out = [(t, n, str(n)) for t, n in enumerate(top_n) if n < units]
    rest = [(t, n) for t, n in enumerate(top_n) if n >= units]
    if rest:
        out.append((rest[0][0], units, f"all {units}"))
    return out


@styled
def class_plot(res, c: int, name: str, columns: list[tuple[int, int, str]]) -> str:
    """SVG: balanced accuracy vs N, top-N ablated and all but the top N ablated."""
    fig = new_figure(3.9, 2.7)
    ax = fig.add_subplot(1, 1, 1)
    n = [v for _, v, _ in columns]
    ax.plot(n, [float(res.topn_balanced[c, t]) for t, _, _ in columns], "o-", color=SERIES[1],
            label="top-N ablated")
    ax.plot(n, [float(res.allbut_balanced[c, t]) for t, _, _ in columns], "s-", color=SERIES[0],
            label="all but top-N ablated")
    ax.axhline(float(res.baseline_balanced[c]), ls="--", color=REFERENCE, label="unablated")
    ax.axhline(0.5, ls=":", color="#bbbbbb", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(n, [lab.replace("all ", "all\n") for _, _, lab in columns])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("N (units ablated, ranked for this class)")
    ax.set_ylabel("balanced accuracy")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout(pad=0.4)
    return figure_svg(fig)


def overview_figure(res, names: list[str], columns) -> str:
    """HTML: the drop in balanced accuracy per class (most hurt first) for the smallest N and
    for N = 5 (or the largest shown N below it)."""
    pick = [columns[0]] + [col for col in columns if col[1] <= 5][-1:]
    pick = list(dict.fromkeys(pick))
    drops = {t: [float(res.baseline_balanced[c] - res.topn_balanced[c, t]) for c in range(len(names))]
             for t, _, _ in pick}
    order = sorted(range(len(names)), key=lambda c: (-drops[pick[-1][0]][c], c))
    fig = series_bar([names[c] for c in order],
                     [(f"top {lab} ablated", [drops[t][c] for c in order]) for t, _, lab in pick],
                     ylabel="drop in balanced accuracy", title="Drop in balanced accuracy per class, "
                     "most affected first")
    return figure_img(fig, "drop in balanced accuracy per class")


def class_table(res, names: list[str], rows: list[dict], columns) -> str:
    """Sortable: every class with its baseline, its drop for each shown N and its top units."""
    t5 = [col for col in columns if col[1] <= 5][-1]
    heads = [("class", "ascending"), ("positives", "descending"), ("balanced accuracy", "descending"),
             (f"drop, top {columns[0][2]}", "descending"), (f"drop, top {t5[2]}", "descending"),
             ("top units", "ascending")]
    ths = "".join(f'<th scope="col" data-first="{f}"{SORTED if i == 4 else ""}>{esc(h)}</th>'
                  for i, (h, f) in enumerate(heads))
    drop = lambda c, t: float(res.baseline_balanced[c] - res.topn_balanced[c, t])  # noqa: E731
    order = sorted(range(len(names)), key=lambda c: (-drop(c, t5[0]), c))
    trs = "".join(f'<tr><td data-v="{esc(names[c])}"><a href="#class-{c}">{esc(names[c])}</a></td>'
                  f'{num_cell(rows[c]["positives"], str(rows[c]["positives"]))}'
                  f'{num_cell(rows[c]["baseline_balanced"])}{num_cell(drop(c, columns[0][0]))}'
                  f'{num_cell(drop(c, t5[0]))}<td>{esc(", ".join(rows[c]["top_units"].split()[:3]))}</td></tr>'
                  for c in order)
    return (f'<div class="table-wrap"><table class="units sortable"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{trs}</tbody></table></div>")


def class_card(res, rank, c: int, name: str, row: dict, columns, split: str) -> str:
    """One class: its baseline, the plot vs N, its top units (ranked on the rank split) and the
    numbers behind the plot."""
    pos = {int(u): i for i, u in enumerate(rank.units.tolist())}
    units = [(int(u), float(d)) for u, d in zip(row["top_units"].split(), row["top_unit_drops"].split())]
    trs = "".join(f"<tr>{num_cell(i, str(i))}{num_cell(u, str(u))}"
                  f"{num_cell(float(rank.single_balanced[pos[u], c]))}{num_cell(d)}</tr>"
                  for i, (u, d) in enumerate(units, 1))
    nrows = "".join(f"<tr><td>{esc(lab)}</td>{num_cell(float(res.topn_balanced[c, t]))}"
                    f"{num_cell(float(res.allbut_balanced[c, t]))}</tr>" for t, _, lab in columns)
    return (f'<section class="card" id="class-{c}"><h3>{esc(name)}</h3>'
            f'<p class="stats">{row["positives"]} positives · precision {fixed(row["baseline_precision"])}'
            f' · recall {fixed(row["baseline_recall"])} · balanced accuracy '
            f'<b>{fixed(row["baseline_balanced"])}</b></p>'
            f'<img class="figure" alt="balanced accuracy vs N for {esc(name)}" '
            f'src="{svg_data_uri(class_plot(res, c, name, columns))}">'
            f'<table class="units compact"><caption>top units, each ablated alone ({esc(split)} split)</caption>'
            "<thead><tr><th>rank</th><th>unit</th><th>balanced acc.</th><th>drop</th></tr></thead>"
            f"<tbody>{trs}</tbody></table>"
            "<details><summary>balanced accuracy for each N</summary><table class=\"units compact\">"
            "<thead><tr><th>N</th><th>top N ablated</th><th>all but top N</th></tr></thead>"
            f"<tbody>{nrows}</tbody></table></details></section>")


def render_html(res, rank, names, rows, meta: dict) -> str:
    """The body of ablation.html: what was done, the drop per class (figure and sortable table),
    then a card per class; figures inline (offline)."""
    columns = shown_columns(res.top_n.tolist(), int(meta.get("units") or rank.units.numel()))
    parts = [f"<h1>Unit ablation: layer {esc(meta['layer'])}</h1>",
             "<p>Units are ranked per class by the drop in balanced accuracy ((recall + TNR) / 2) "
             f"when each is zeroed alone, on the <b>{esc(meta['rank_split'])}</b> split; the top-N "
             f"units, and all units but the top N, are then zeroed on the <b>{esc(meta['eval_split'])}"
             "</b> split. Each output is a binary presence classifier (logit &gt; 0)."
             + (f" N of {columns[-1][1]} or more ablates every unit: shown once, as \u201c{esc(columns[-1][2])}"
                "\u201d." if columns[-1][2].startswith("all") else "") + "</p>",
             overview_figure(res, names, columns), class_table(res, names, rows, columns),
             '<h2>Classes</h2><div class="cards">']
    parts += [class_card(res, rank, c, nm, row, columns, meta["rank_split"])
              for c, (nm, row) in enumerate(zip(names, rows))]
    parts += ["</div>", "<h2>Run details</h2>", meta_table([(k, v) for k, v in meta.items() if k != "seconds"])]
    return "\n".join(parts)


def ablation_site(res, rank, names, rows, meta: dict) -> Site:
    """The run's report site: index.html and ablation.html."""
    columns = shown_columns(res.top_n.tolist(), int(meta.get("units") or rank.units.numel()))
    site = Site("Unit ablation", f"layer {meta['layer']} · {len(names)} classes · "
                f"{meta.get('eval_images', '?')} evaluation images",
                overview=lambda folder: "<h2>Summary</h2>" + overview_figure(res, names, columns)
                + "<h2>Run details</h2>" + meta_table([(k, v) for k, v in meta.items() if k != "seconds"]))
    site.add(ABLATION_PAGE, f"{meta['layer']}: unit ablation", lambda folder: render_html(res, rank, names, rows, meta),
             section="Ablation", summary="per class: its top units and its balanced accuracy with them ablated")
    return site


def write_ablation(out: Path, res, rank, names, positives, meta: dict) -> list[Path]:
    """All files at once (temp files + os.replace; none are replaced on error): the three data
    files, ablation.html, index.html and site.json."""
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
    pages = ablation_site(res, rank, names, rows, meta).writers(out)
    paths = atomic_write(out, {
        "ablation.safetensors": lambda p: save_file(state, str(p), metadata={"classes": json.dumps(names)}),
        "ablation.csv": lambda p: Path(p).write_text(buf.getvalue(), encoding="utf-8"),
        "ablation.json": lambda p: Path(p).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8"),
        **pages})
    return sorted(paths, key=lambda p: FILES.index(p.name))


@styled
def plot_ablation(result, out_path, *, classes: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """One panel per class (a grid in one image, saved at 2x for sharpness): balanced accuracy
    vs N with the top-N units ablated and with all but the top N ablated, the unablated level
    dashed. Returns the path."""
    C = result.baseline_balanced.shape[0]
    classes = list(range(C)) if classes is None else list(classes)
    ncol = max(1, math.ceil(math.sqrt(len(classes))))
    nrow = math.ceil(len(classes) / ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    n = result.top_n.numpy()
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    for ax, c in zip(axes.flat, classes):
        ax.plot(n, result.topn_balanced[c].numpy(), "o-", color=SERIES[1], label="top-N ablated")
        ax.plot(n, result.allbut_balanced[c].numpy(), "s-", color=SERIES[0], label="all but top-N ablated")
        ax.axhline(float(result.baseline_balanced[c]), ls="--", color=REFERENCE, label="unablated")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(n, [str(v) for v in n])
        ax.set_ylim(0.0, 1.02)
        ax.set_title(class_names[c] if class_names is not None else f"class {c}")
        ax.set_xlabel("N")
        ax.set_ylabel("balanced accuracy")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=200)
    return str(out_path)
