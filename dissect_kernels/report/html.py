"""The HTML dissection report: one self-contained report.html (inline CSS, JS and bar graphs,
exemplar strips by relative path) that works from file:// with no server."""
from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from dissect_kernels.conventions import CONVENTIONS
from dissect_kernels.report.plots import detector_bars, figure_svg, svg_data_uri
from dissect_kernels.io import atomic_write, ensure_dir
from dissect_kernels.results import DissectionResult, LayerResult, unit_rows

REPORT_FILE = "report.html"
esc = html.escape


def asset(name: str) -> str:
    """Text of a packaged report asset (report.css, report.js)."""
    return resources.files("dissect_kernels.report").joinpath(name).read_text(encoding="utf-8")


def html_page(title: str, body: str) -> str:
    """A complete page with the report's inline style and sort/filter script."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>\n{asset('report.css')}</style>\n</head>\n"
            f"<body>\n{body}\n<script>\n{asset('report.js')}</script>\n</body>\n</html>\n")


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def meta_table(rows: list[tuple[str, object]]) -> str:
    """Two-column key/value table; dicts and lists are shown as compact JSON."""
    out = ['<table class="meta">']
    for k, v in rows:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str) if v else "-"
        out.append(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def detector_rule(convention: str) -> str:
    conv = CONVENTIONS.get(convention)
    if conv is None:
        return f"the detector rule of convention {convention}"
    rule = f"IoU {'>' if conv.detector_strict else '≥'} {conv.detector_iou:g}"
    if conv.detector_iqr is not None:
        rule += f" and IQR > {conv.detector_iqr:g}"
    return rule


def _cell(text: str, v=None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if v is not None:
        attrs += f' data-v="{esc(str(v))}"'
    return f"<td{attrs}>{esc(text)}</td>"


def unit_table(out_dir: Path, lr: LayerResult, unit_base: int) -> str:
    """Sortable table of every unit: number, label, category, IoU, threshold, detector, strip."""
    with_iqr = lr.iqr is not None
    heads = ["unit", "label", "category", "IoU"] + (["IQR"] if with_iqr else []) + \
        ["threshold", "detector", "exemplars"]
    out = [f'<table class="units sortable" data-layer="{esc(lr.layer)}">',
           "<thead><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead>", "<tbody>"]
    for row in unit_rows(lr, unit_base):
        n, det, iou, thr = row["unit"], row["detector"], row["iou"], row["threshold"]
        cells = [_cell(str(n), n, "num"), _cell(row["label"]), _cell(row["category"]),
                 _cell(fmt(iou), repr(iou), "num")]
        if with_iqr:
            cells.append(_cell(fmt(row["iqr"]), repr(row["iqr"]), "num"))
        cells += [_cell(fmt(thr), repr(thr), "num"), _cell("yes" if det else "no", int(det), "detector")]
        rel = row["exemplar"]
        if rel and (out_dir / rel).is_file():
            cells.append(f'<td><img class="strip" loading="lazy" src="{esc(quote(rel))}" '
                         f'alt="unit {n} top images"></td>')
        else:
            cells.append("<td>-</td>")
        out.append(f'<tr class="{"det" if det else "nondet"}">' + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def layer_section(out_dir: Path, lr: LayerResult, result: DissectionResult, idx: int) -> str:
    n_det, uniq = lr.num_detectors, len(lr.unique_concepts())
    parts = [f'<section id="layer-{idx}">', f"<h2>{esc(lr.layer)}</h2>",
             f'<p class="summary"><b>{n_det}/{lr.num_units}</b> units are detectors covering '
             f"<b>{uniq}</b> unique concepts ({esc(detector_rule(result.convention))}).</p>"]
    fig = detector_bars(lr)
    if fig is not None:
        parts.append(f'<img class="bargraph" alt="detectors per concept in {esc(lr.layer)}" '
                     f'src="{svg_data_uri(figure_svg(fig))}">')
    facts = list(lr.extra.items())
    if lr.rotation_info:
        facts.insert(0, ("rotation", lr.rotation_info))
    if facts:
        parts.append(meta_table(facts))
    parts += [unit_table(out_dir, lr, result.unit_base), "</section>"]
    return "\n".join(parts)


def report_body(out_dir: Path, result: DissectionResult, title: str) -> str:
    base = result.unit_base
    meta = [("convention", result.convention),
            ("unit numbering", f"units are numbered from {base}"),
            ("model", result.model), ("dataset", result.dataset),
            ("parameters", result.parameters),
            ("skipped samples", f"{result.skipped} " + (json.dumps(result.skip_reasons)
                                                         if result.skip_reasons else "")),
            ("timing (s)", {k: round(v, 3) for k, v in result.timing.items()}),
            ("created", f"{result.created} (dissect_kernels {result.version})")]
    nav = " · ".join(f'<a href="#layer-{i}">{esc(name)}</a>' for i, name in enumerate(result.layers))
    parts = [f"<h1>{esc(title)}</h1>", meta_table(meta), f"<p>Layers: {nav}</p>",
             '<div class="controls"><label><input type="checkbox" id="detectors-only"> '
             "detectors only</label> (click a column header to sort)</div>"]
    parts += [layer_section(out_dir, lr, result, i) for i, lr in enumerate(result.layers.values())]
    return "\n".join(parts)


def write_report(out_dir, result: DissectionResult, *, title: str = "Network dissection report") -> Path:
    """Write out_dir/report.html (atomically) for `result`; exemplar strips are linked by their
    relative paths when the files exist. Returns the report's path."""
    if not isinstance(result, DissectionResult):
        raise TypeError(f"result must be a DissectionResult, got {type(result).__name__}")
    result.validate()
    out = ensure_dir(out_dir)
    page = html_page(title, report_body(out, result, title))
    atomic_write(out, {REPORT_FILE: lambda p: Path(p).write_text(page, encoding="utf-8")})
    return out / REPORT_FILE
