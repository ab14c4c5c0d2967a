"""The report pages of GAN dissection's further analyses, each drawn from its documented JSON
(docs/gan.md): context.html (where inserting a unit set makes its concept appear: a map over
the insertion grid and the rate per context class), artifacts.html (units ranked by their
effect on an artifact score, the score before and after ablating the top ones, the worst
samples before and after) and generated_vs_real.html (class frequencies of generated and real
images, the under-produced classes). `stage_analyses` writes the JSON and example strips into
a folder; `register_analyses` adds the pages to a run's site; `write_analysis` does both for
one analysis run alone (adding its page to the folder's existing site, if any)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dissect_kernels.io import atomic_write, ensure_dir, write_text
from dissect_kernels.report.ace_page import save_image_strip
from dissect_kernels.report.html import esc, fixed, meta_table, strip_img
from dissect_kernels.report.plots import figure_img, new_figure, series_bar, styled
from dissect_kernels.report.site import Site, add_page

SECTION = "Causal effects"
PAGES = {"context": ("context.html", "context.json", "Insertion context"),
         "artifacts": ("artifacts.html", "artifacts.json", "Artifact units"),
         "real": ("generated_vs_real.html", "generated_vs_real.json", "Generated vs real")}


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=1) + "\n"


def stage_analyses(stage: Path, analyses: dict) -> None:
    """analyses = {"context"|"artifacts"|"real": (json dict, {strip name: images [B, 3, H, W]})}:
    writes each JSON and its strips (images/<kind>/<name>.png) into `stage`."""
    for kind, (data, images) in analyses.items():
        (Path(stage) / PAGES[kind][1]).write_text(_json_text(data))
        for name, imgs in (images or {}).items():
            save_image_strip(stage, f"images/{kind}/{name}.png", imgs)


def register_analyses(site: Site, analyses: dict) -> None:
    """Add each analysis's page to `site` (section "Causal effects")."""
    for kind, (data, images) in analyses.items():
        file, _, title = PAGES[kind]
        site.add(file, title, lambda folder, k=kind, d=data, i=images: page(k, d, folder, list(i or {})),
                 section=SECTION, summary=summary(kind, data))


def write_analysis(out_dir, kind: str, data: dict, images: dict | None = None) -> Path:
    """One analysis run alone: its JSON and strips (atomically), then its page joins the
    folder's report site (index.html made if there is none). Returns the page's path."""
    out = ensure_dir(out_dir)
    file, json_file, title = PAGES[kind]
    writers = {json_file: lambda p: write_text(p, _json_text(data))}
    for name, imgs in (images or {}).items():
        writers[f"images/{kind}/{name}.png"] = lambda p, x=imgs: _save_strip(p, x)
    (out / "images" / kind).mkdir(parents=True, exist_ok=True)
    atomic_write(out, writers)
    return add_page(out, file, title, page(kind, data, out, list(images or {})), section=SECTION,
                    summary=summary(kind, data))


def _save_strip(path: Path, images: torch.Tensor) -> None:
    from dissect_kernels.report.ace_page import to_uint8
    from dissect_kernels.report.exemplars import render_strip
    import numpy as np
    pix = to_uint8(images)
    render_strip(pix, np.ones(pix.shape[:3], dtype=bool), contour_color=None).save(path, format="PNG")


def summary(kind: str, d: dict) -> str:
    """The index's one-line summary of an analysis (plain text)."""
    if kind == "context":
        rates = [c for c in d["by_context"] if c["appear_rate"] is not None and c["trials"]]
        best = max(rates, key=lambda c: c["appear_rate"], default=None)
        worst = min(rates, key=lambda c: c["appear_rate"], default=None)
        return (f"{d['concept']} from units {d['units']}: appears on {best['class']} "
                f"{fixed(best['appear_rate'], 2)}, on {worst['class']} {fixed(worst['appear_rate'], 2)}"
                if best else f"{d['concept']}: no insertions")
    if kind == "artifacts":
        after = "" if d["score_after"] is None else f" \u2192 {fixed(d['score_after'])}"
        return f"ablating units {d['ablated_units']}: score {fixed(d['score_before'])}{after}"
    under = ", ".join(d["under_produced"]) or "none"
    return f"under-produced: {under} ({d['num_generated']} generated vs {d['num_real']} real images)"


def page(kind: str, d: dict, folder: Path, strips: list[str]) -> str:
    """The body HTML of one analysis page."""
    return {"context": context_body, "artifacts": artifacts_body, "real": real_body}[kind](d, Path(folder), strips)


def _strips(folder: Path, kind: str, strips: list[str], captions: dict[str, str]) -> str:
    figs = []
    for name in strips:
        img = strip_img(folder, f"images/{kind}/{name}.png", captions.get(name, name))
        if img:
            figs.append(f"<figure>{img}<figcaption>{esc(captions.get(name, name))}</figcaption></figure>")
    return f'<div class="figures">{"".join(figs)}</div>' if figs else ""


@styled
def context_figure(d: dict):
    """Left: P(concept appears) at each grid location; right: per context class."""
    fig = new_figure(9.0, 4.2)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.36, top=0.9, wspace=0.35)
    im = ax.imshow(d["appear_rate"], vmin=0, vmax=1, cmap="viridis")
    ax.set_title(f"P({d['concept']} appears) per location", loc="left", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    rows = [c for c in d["by_context"] if c["trials"]]
    bx.bar(range(len(rows)), [c["appear_rate"] for c in rows], color="#4e79a7", width=0.7)
    bx.set_xticks(range(len(rows)), [f"{c['class'][:18]} ({c['trials']})" for c in rows], rotation=60, ha="right")
    bx.set_ylim(0, 1)
    bx.set_ylabel(f"P({d['concept']} appears)")
    bx.set_title("per context class (insertions)", loc="left", fontsize=10)
    return fig


def context_body(d: dict, folder: Path, strips: list[str]) -> str:
    rows = "".join(f"<tr><td>{esc(c['class'])}</td><td class=\"num\">{c['trials']}</td>"
                   f"<td class=\"num\">{c['appeared']}</td><td class=\"num\">{fixed(c['appear_rate'])}</td></tr>"
                   for c in d["by_context"] if c["trials"])
    gw = d["grid"][1]
    captions = {n: "generated, unedited" if n == "original" else
                f"inserted at grid cell (row {int(n.split('_')[-1]) // gw}, column {int(n.split('_')[-1]) % gw})"
                for n in strips}
    return (f"<h1>Insertion context: {esc(d['concept'])} from units {esc(str(d['units']))} of {esc(d['layer'])}</h1>"
            f"<p>The units are set to k (the values below) at each cell of a {d['grid'][0]}\u00d7{d['grid'][1]} "
            f"grid over the feature map, one location at a time, in {d['num_samples']} samples. An insertion "
            f"succeeds when the segmenter then finds {esc(d['concept'])} on at least "
            f"{fixed(d['min_coverage'], 2)} of the location's pixels. The context class is the class that "
            "held most of the location before the insertion: a concept appears only where its context "
            "allows it.</p>"
            + meta_table([("units", str(d["units"])), ("k", str(d["value"])), ("samples", d["num_samples"])])
            + figure_img(context_figure(d), f"where {d['concept']} appears when inserted")
            + '<div class="table-wrap"><table class="units"><thead><tr><th scope="col">context class</th>'
              '<th scope="col">insertions</th><th scope="col">appeared</th><th scope="col">rate</th></tr>'
              f"</thead><tbody>{rows}</tbody></table></div>"
            + _strips(folder, "context", strips, captions))


def artifacts_body(d: dict, folder: Path, strips: list[str]) -> str:
    top = d["units"][:min(24, len(d["units"]))]
    causal = d["ranking"] == "ablation"
    key = "effect" if causal else "correlation"
    fig = series_bar([str(u["unit"]) for u in top], [(key, [u[key] or 0.0 for u in top])],
                     ylabel="score drop when ablated" if causal else "correlation with the score",
                     title=f"{d['layer']}: units by {'causal effect on' if causal else 'correlation with'} the artifact score")
    rows = "".join(f"<tr><td class=\"num\">{u['rank']}</td><td class=\"num\">{u['unit']}</td>"
                   f"<td class=\"num\">{fixed(u['effect'], 4, sign=True)}</td>"
                   f"<td class=\"num\">{fixed(u['correlation'], 3, sign=True)}</td></tr>" for u in d["units"])
    after = "n/a (annotations score only unedited samples)" if d["score_after"] is None else fixed(d["score_after"], 4)
    captions = {"worst_original": "highest-scoring samples, unedited",
                "worst_ablated": f"the same samples, units {d['ablated_units']} ablated"}
    return (f"<h1>Artifact units of {esc(d['layer'])}</h1>"
            "<p>Each unit's <b>effect</b> is the mean artifact score minus the mean score with the unit "
            "ablated (set to 0): positive units cause the artifact. The correlation is that of the "
            "unit's mean activation with the score over the samples. The top units are then ablated "
            "together.</p>"
            + meta_table([("score", d.get("score", "")), ("ranking by", d["ranking"]), ("samples", d["num_samples"]),
                          ("ablated units", str(d["ablated_units"])), ("mean score before", fixed(d["score_before"], 4)),
                          ("mean score after", after)])
            + figure_img(fig, "artifact score effect per unit")
            + _strips(folder, "artifacts", strips, captions)
            + '<div class="table-wrap"><table class="units"><thead><tr><th scope="col">rank</th>'
              '<th scope="col">unit</th><th scope="col">effect</th><th scope="col">correlation</th></tr>'
              f"</thead><tbody>{rows}</tbody></table></div>")


def real_body(d: dict, folder: Path, strips: list[str]) -> str:
    names = [c["class"] for c in d["classes"]]
    fig = series_bar(names, [("real", [c["real_pixel_fraction"] or 0.0 for c in d["classes"]]),
                             ("generated", [c["generated_pixel_fraction"] or 0.0 for c in d["classes"]])],
                     ylabel="fraction of pixels", title="Class pixel frequency")
    under = set(d["under_produced"])
    rows = "".join(
        f"<tr><td>{esc(c['class'])}{' <b>(under-produced)</b>' if c['class'] in under else ''}</td>"
        + "".join(f'<td class="num">{fixed(c[k])}</td>' for k in (
            "real_pixel_fraction", "generated_pixel_fraction", "real_image_fraction", "generated_image_fraction"))
        + f'<td class="num">{fixed(c["pixel_ratio"], 2) if c["pixel_ratio"] is not None else "n/a"}</td></tr>'
        for c in d["classes"])
    heads = "".join(f'<th scope="col">{esc(h)}</th>' for h in (
        "class", "real pixels", "generated pixels", "real images", "generated images", "generated / real"))
    return ("<h1>Generated vs real: what the generator does not draw</h1>"
            f"<p>The segmenter labels {d['num_generated']} generated samples and {d['num_real']} real images. "
            f"A class is under-produced when real images give it at least {fixed(d['min_fraction'], 2)} of "
            f"their pixels and generated ones less than 1/{d['factor']:g} of that.</p>"
            + meta_table([("under-produced", ", ".join(d["under_produced"]) or "none"),
                          ("over-produced", ", ".join(d["over_produced"]) or "none")])
            + figure_img(fig, "class pixel fractions, real vs generated")
            + f'<div class="table-wrap"><table class="units"><thead><tr>{heads}</tr></thead><tbody>{rows}'
              "</tbody></table></div>"
            + _strips(folder, "real", strips, {"generated": "generated samples", "real": "real images"}))
