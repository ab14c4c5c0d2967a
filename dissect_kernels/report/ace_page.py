"""The ACE page of a GAN dissection (ace.html beside report.html): units ranked by their average
causal effect on a concept, with their dissection label, exemplars and before/after strips."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from dissect_kernels.report.exemplars import render_strip
from dissect_kernels.report.html import REPORT_FILE, esc, fmt, html_page, meta_table
from dissect_kernels.report.plots import figure_svg, grouped_bar, svg_data_uri
from dissect_kernels.io import atomic_write, ensure_dir
from dissect_kernels.results import LayerResult

ACE_FILE = "ace.html"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image_strip(out_dir, rel: str, images: torch.Tensor, size: int = 64) -> str:
    """Plain strip of generator images (no shading) saved as PNG at out_dir/rel."""
    pix = to_uint8(images)
    strip = render_strip(pix, np.ones(pix.shape[:3], dtype=bool), size=size, contour_color=None)
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, format="PNG")
    return rel


def ace_page(out_dir, lr: LayerResult, ranking, concept_name: str, *, unit_base: int = 0,
             strips: dict[int, dict[str, str]] | None = None, top: int = 24) -> str:
    """The HTML of ace.html: a bar chart of every unit's ACE and a table of the `top` units by
    ACE (unit, dissection label, IoU, ACE, class fraction ablated/inserted, exemplars,
    before/after strips {unit: {"original"|"ablated"|"inserted": relative path}}); images are
    linked when they exist under out_dir."""
    out = Path(out_dir)
    strips = strips or {}
    ace = ranking.ace.tolist()
    order = ranking.order.tolist()
    fig = grouped_bar([(f"ACE on {concept_name}", [(str(u + unit_base), ace[u]) for u in order])],
                      ylabel="ACE (class fraction)")
    parts = [f"<h1>Average causal effect on {esc(concept_name)}: layer {esc(lr.layer)}</h1>",
             f'<p><a href="{REPORT_FILE}">dissection report</a></p>',
             meta_table([("mode", ranking.mode), ("samples", ranking.num_samples),
                         ("class fraction, unedited", fmt(float(ranking.original)))]),
             f'<img class="bargraph" alt="ACE per unit" src="{svg_data_uri(figure_svg(fig))}">',
             '<table class="units sortable"><thead><tr><th>unit</th><th>label</th><th>IoU</th>'
             "<th>ACE</th><th>ablated</th><th>inserted</th><th>exemplars</th><th>before / after</th>"
             "</tr></thead><tbody>"]
    for u in order[:top]:
        ex = lr.exemplar_strips.get(u)
        ex_cell = f'<img class="strip" src="{esc(quote(ex))}">' if ex and (out / ex).is_file() else "-"
        ba = strips.get(u, {})
        ba_cell = "<br>".join(f'{esc(k)}: <img class="strip" src="{esc(quote(p))}">'
                              for k, p in ba.items() if (out / p).is_file()) or "-"
        parts.append(f"<tr><td class=\"num\">{u + unit_base}</td><td>{esc(lr.unit_label(u))}</td>"
                     f"<td class=\"num\">{fmt(float(lr.best_iou[u]))}</td>"
                     f"<td class=\"num\" data-v=\"{ace[u]!r}\">{fmt(ace[u])}</td>"
                     f"<td class=\"num\">{fmt(float(ranking.ablated[u]))}</td>"
                     f"<td class=\"num\">{fmt(float(ranking.inserted[u]))}</td>"
                     f"<td>{ex_cell}</td><td>{ba_cell}</td></tr>")
    parts.append("</tbody></table>")
    return html_page(f"ACE on {concept_name}", "\n".join(parts))


def write_ace_page(out_dir, lr: LayerResult, ranking, concept_name: str, **kw) -> Path:
    """Write out_dir/ace.html (atomically); see ace_page."""
    out = ensure_dir(out_dir)
    page = ace_page(out, lr, ranking, concept_name, **kw)
    atomic_write(out, {ACE_FILE: lambda p: Path(p).write_text(page, encoding="utf-8")})
    return out / ACE_FILE
