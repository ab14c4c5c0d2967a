"""A layer's page: its detector count, the detectors-per-concept bar graph and the sortable
table of its units (highest IoU first; sortable by unit, label, category, IoU, ...), each unit
with its exemplar strip (mask overlaid) on the row beneath. Every dissection layer gets its own
page (layer-<name>.html): a layer of a real network has hundreds of units with ten images each,
and one page per layer keeps each page quick to open and its table the only one on it."""
from __future__ import annotations

import math
from pathlib import Path

from dissect_kernels.conventions import CONVENTIONS
from dissect_kernels.report.exemplars import safe_name
from dissect_kernels.report.html import decimals_for, esc, meta_table, num_cell, strip_img
from dissect_kernels.report.palette import category_chip
from dissect_kernels.report.plots import detector_bars, figure_img
from dissect_kernels.results import DissectionResult, LayerResult, unit_rows

SORTED = ' aria-sort="descending"'    # the column the table arrives sorted by


def layer_file(layer: str) -> str:
    """The page of a layer: layer-<file-safe name>.html."""
    return f"layer-{safe_name(layer)}.html"


def detector_rule(convention: str) -> str:
    conv = CONVENTIONS.get(convention)
    if conv is None:
        return f"the detector rule of convention {convention}"
    rule = f"IoU {'>' if conv.detector_strict else '≥'} {conv.detector_iou:g}"
    if conv.detector_iqr is not None:
        rule += f" and IQR > {conv.detector_iqr:g}"
    return rule


def layer_summary_line(lr: LayerResult) -> str:
    """Plain text: 'D of U units are detectors of N unique concepts'."""
    return (f"{lr.num_detectors} of {lr.num_units} units are detectors of "
            f"{len(lr.unique_concepts())} unique concepts")


def median_magnitude(values) -> float:
    """The median |value| of a column (its typical size: what its decimals are chosen by)."""
    mags = sorted(abs(float(v)) for v in values if v == v)
    return mags[len(mags) // 2] if mags else 0.0


def unit_table(folder: Path, lr: LayerResult, unit_base: int) -> str:
    """Every unit, highest IoU first (ties by unit): one <tbody> per unit holding its numbers and,
    on a second row, its exemplar strip, so that sorting moves both together."""
    rows = sorted(unit_rows(lr, unit_base), key=lambda r: (-r["iou"] if r["iou"] == r["iou"] else math.inf,
                                                           r["unit"]))     # NaN IoU last
    with_iqr = lr.iqr is not None
    thr_dec = decimals_for([median_magnitude([r["threshold"] for r in rows])])
    heads = [("unit", "ascending"), ("label", "ascending"), ("category", "ascending"),
             ("IoU", "descending")] + ([("IQR", "descending")] if with_iqr else []) + \
            [("threshold", "descending"), ("detector", "descending")]
    ths = "".join(f'<th scope="col" data-first="{first}"{SORTED if name == "IoU" else ""}>{name}</th>'
                  for name, first in heads)
    out = [f'<div class="table-wrap"><table class="units sortable grouped" data-layer="{esc(lr.layer)}">',
           f"<thead><tr>{ths}</tr></thead>"]
    for row in rows:
        n, det = row["unit"], row["detector"]
        cells = [num_cell(n, str(n)), f'<td class="label">{esc(row["label"])}</td>',
                 f'<td data-v="{esc(row["category"])}">{category_chip(row["category"])}</td>',
                 num_cell(row["iou"])]
        if with_iqr:
            cells.append(num_cell(row["iqr"]))
        cells += [num_cell(row["threshold"], decimals=thr_dec),
                  f'<td class="detector" data-v="{int(det)}">{"yes" if det else "no"}</td>']
        img = strip_img(folder, row["exemplar"], f"unit {n} ({row['label']}): top images, mask outlined")
        strip = f'<tr class="strip"><td colspan="{len(heads)}">{img}</td></tr>' if img else ""
        out.append(f'<tbody class="{"det" if det else "nondet"}" id="unit-{n}">'
                   f'<tr>{"".join(cells)}</tr>{strip}</tbody>')
    out.append("</table></div>")
    return "\n".join(out)


def layer_facts(lr: LayerResult) -> str:
    """The layer's extra facts (shape, rotation, the ACE ranking with a link to its page)."""
    parts, facts = [], dict(lr.extra)
    ace = facts.pop("ace", None)
    if isinstance(ace, dict) and ace.get("page"):
        top = ", ".join(str(u) for u in ace.get("top_units", []))
        parts.append(f'<p>Causal effects: <a href="{esc(str(ace["page"]))}">units ranked by their average '
                     f'causal effect on {esc(str(ace.get("concept", "")))}</a>'
                     f'{" (top units " + esc(top) + ")" if top else ""}.</p>')
    elif ace is not None:
        facts["ace"] = ace
    if lr.rotation_info:
        facts = {"rotation": lr.rotation_info, **facts}
    if facts:
        parts.append(meta_table(list(facts.items())))
    return "\n".join(parts)


def layer_page(folder: Path, lr: LayerResult, result: DissectionResult, kind: str) -> str:
    """The body of a layer's page."""
    uniq = len(lr.unique_concepts())
    parts = [f"<h1>{esc(kind)}: layer {esc(lr.layer)}</h1>",
             f'<p class="summary"><b>{lr.num_detectors}</b> of <b>{lr.num_units}</b> units are '
             f"detectors ({esc(detector_rule(result.convention))}), covering <b>{uniq}</b> unique "
             f"concepts. Units are numbered from {result.unit_base}.</p>", layer_facts(lr)]
    fig = detector_bars(lr)
    if fig is not None:
        parts.append(figure_img(fig, f"detector units per concept in {lr.layer}"))
    parts.append('<div class="controls"><label><input type="checkbox" class="detectors-only"> '
                 'detectors only</label> <label>label contains <input type="search" class="label-filter" '
                 'size="12"></label> <span class="hint">click a column header to sort; click '
                 "images to enlarge</span></div>")
    parts.append(unit_table(folder, lr, result.unit_base))
    return "\n".join(p for p in parts if p)


__all__ = ["layer_file", "layer_page", "unit_table", "detector_rule", "layer_summary_line"]
