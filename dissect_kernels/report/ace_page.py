"""The ACE page of a GAN dissection (ace.html in the run's report site): units ranked by their
average causal effect on a concept: a bar chart (bars coloured by the category of each unit's
dissection label), a sortable table of every unit, then for the top units a card with their
dissection exemplars and generated samples unedited, with the unit ablated and inserted, one
above the other so the change reads at a glance (the cards wrap, so no window is too narrow)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from dissect_kernels.report.exemplars import STRIP_TILE, render_strip
from dissect_kernels.report.html import esc, fixed, meta_table, num_cell, strip_img
from dissect_kernels.report.palette import category_chip
from dissect_kernels.report.plots import bars_that_fit, figure_img, ranked_bar
from dissect_kernels.report.site import add_page
from dissect_kernels.report.units import layer_file
from dissect_kernels.results import LayerResult

ACE_FILE = "ace.html"
SORTED = ' aria-sort="descending"'
KIND_CAPTIONS = {"original": "generated, unedited", "ablated": "unit ablated (set to 0)",
                 "inserted": "unit inserted (set to k)"}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image_strip(out_dir, rel: str, images: torch.Tensor, size: int = STRIP_TILE) -> str:
    """Plain strip of generator images (no shading) saved as PNG at out_dir/rel."""
    pix = to_uint8(images)
    strip = render_strip(pix, np.ones(pix.shape[:3], dtype=bool), size=size, contour_color=None)
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, format="PNG")
    return rel


def ace_table(lr: LayerResult, ranking, order: list[int], unit_base: int, carded: set[int],
              concept: str) -> str:
    """Every unit by ACE (sortable): rank, unit (linking its card), label, category, IoU, ACE and
    the concept's pixel fraction with the unit ablated / inserted."""
    ace = ranking.ace.tolist()
    heads = "".join(f'<th scope="col" data-first="{f}"{SORTED if h == "ACE" else ""}>{esc(h)}</th>' for h, f in (
        ("rank", "ascending"), ("unit", "ascending"), ("label", "ascending"), ("category", "ascending"),
        ("IoU", "descending"), ("ACE", "descending"), (f"{concept}, ablated", "descending"),
        (f"{concept}, inserted", "descending")))
    rows = []
    for rank, u in enumerate(order, 1):
        n = u + unit_base
        unit = f'<a href="#ace-unit-{n}">{n}</a>' if u in carded else str(n)
        rows.append(f'<tr>{num_cell(rank, str(rank))}<td class="num" data-v="{n}">{unit}</td>'
                    f'<td class="label">{esc(lr.unit_label(u))}</td>'
                    f'<td data-v="{esc(lr.unit_category(u))}">{category_chip(lr.unit_category(u))}</td>'
                    f'{num_cell(float(lr.best_iou[u]))}'
                    f'<td class="num" data-v="{ace[u]!r}">{fixed(ace[u], 3, sign=True)}</td>'
                    f'{num_cell(float(ranking.ablated[u]))}{num_cell(float(ranking.inserted[u]))}</tr>')
    return ('<div class="table-wrap"><table class="units sortable">'
            f"<thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def unit_card(folder: Path, lr: LayerResult, ranking, u: int, rank: int, unit_base: int,
              strips: dict[str, str], concept: str) -> str:
    """One unit: its numbers, its dissection exemplars, then the samples unedited / ablated /
    inserted, one strip above the other."""
    n = u + unit_base
    figs = []
    ex = strip_img(folder, lr.exemplar_strips.get(u), f"unit {n}: top generated samples, mask outlined")
    if ex:
        figs.append(f"<figure>{ex}<figcaption>top samples in the dissection (mask outlined)</figcaption></figure>")
    for kind in ("original", "ablated", "inserted"):
        img = strip_img(folder, strips.get(kind), f"unit {n}: {KIND_CAPTIONS[kind]}")
        if img:
            figs.append(f"<figure>{img}<figcaption>{esc(KIND_CAPTIONS[kind])}</figcaption></figure>")
    return (f'<section class="card" id="ace-unit-{n}"><h3>#{rank}: unit {n} \u00b7 '
            f'{esc(lr.unit_label(u))} {category_chip(lr.unit_category(u))}</h3>'
            f'<p class="stats">ACE <b>{fixed(float(ranking.ace[u]), 3, sign=True)}</b> \u00b7 '
            f'{esc(concept)} fraction ablated {fixed(float(ranking.ablated[u]))}, inserted '
            f'{fixed(float(ranking.inserted[u]))} \u00b7 IoU {fixed(float(lr.best_iou[u]))}</p>'
            f'<div class="figures">{"".join(figs) or "<p>no images</p>"}</div></section>')


def ace_page(folder, lr: LayerResult, ranking, concept_name: str, *, unit_base: int = 0,
             strips: dict[int, dict[str, str]] | None = None, top: int = 12) -> str:
    """The body of ace.html: bar chart of the units' ACE (the most that fit), the table of every
    unit, and cards for the `top` units; strips = {unit: {"original"|"ablated"|"inserted":
    path relative to folder}}; images are shown only when their files exist in folder."""
    folder, strips = Path(folder), strips or {}
    order = ranking.order.tolist()
    ace = ranking.ace.tolist()
    shown = order[:bars_that_fit()]
    fig = ranked_bar([(str(u + unit_base), ace[u], lr.unit_category(u)) for u in shown],
                     ylabel=f"ACE on {concept_name}",
                     title=f"{lr.layer}: average causal effect of each unit on {concept_name}"
                           + (f" (top {len(shown)} of {len(order)})" if len(shown) < len(order) else ""))
    carded = set(order[:top])
    parts = [f"<h1>Average causal effect on {esc(concept_name)}: layer {esc(lr.layer)}</h1>",
             f"<p>Each unit of <a href=\"{esc(quote(layer_file(lr.layer)))}\">{esc(lr.layer)}</a> is "
             f"ablated (set to 0) and inserted (set to a high value k) everywhere; ACE is the change "
             f"in the fraction of {esc(concept_name)} pixels the segmenter finds ({esc(ranking.mode)}), "
             f"averaged over {ranking.num_samples} samples. Bars are coloured by the category of the "
             "unit's dissection label.</p>",
             meta_table([("mode", ranking.mode), ("samples", ranking.num_samples),
                         (f"{concept_name} fraction, unedited", fixed(float(ranking.original)))]),
             figure_img(fig, f"ACE on {concept_name} per unit"),
             ace_table(lr, ranking, order, unit_base, carded, concept_name),
             f"<h2>The top {len(carded)} units</h2>"]
    parts += [unit_card(folder, lr, ranking, u, rank, unit_base, strips.get(u, {}), concept_name)
              for rank, u in enumerate(order[:top], 1)]
    return "\n".join(parts)


def write_ace_page(out_dir, lr: LayerResult, ranking, concept_name: str, **kw) -> Path:
    """Write out_dir/ace.html into the run's report site (atomically, with its index); see
    ace_page."""
    body = ace_page(out_dir, lr, ranking, concept_name, **kw)
    return add_page(out_dir, ACE_FILE, f"ACE on {concept_name}", body, section="Causal effects",
                    summary=ace_summary(ranking, concept_name, kw.get("unit_base", 0)))


def ace_summary(ranking, concept_name: str, unit_base: int = 0) -> str:
    """One line for the index: the top units by ACE."""
    top = ranking.order[:3].tolist()
    return (f"units ranked by causal effect on {concept_name}; top: "
            + ", ".join(f"{u + unit_base} ({fixed(float(ranking.ace[u]), 2, sign=True)})" for u in top))
