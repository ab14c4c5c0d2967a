"""The compose analysis' page: per layer, each unit's best single concept against its best
formula (a scatter of the two IoUs) and a table of the units a formula fits best."""
from __future__ import annotations

from dissect_kernels.report.analyses import table
from dissect_kernels.report.html import esc
from dissect_kernels.report.plots import SERIES, figure_img, new_figure, styled

SHOWN_UNITS = 40


@styled
def iou_scatter(rec: dict):
    """Per layer: single-concept IoU (x) against best-formula IoU (y), coloured by formula length."""
    layers = rec["layers"]
    fig = new_figure(4.0 * len(layers), 3.6)
    for i, (layer, lr) in enumerate(layers.items()):
        ax = fig.add_subplot(1, len(layers), i + 1)
        for n in (1, 2, 3):
            pts = [(x["iou"], x["formula_iou"]) for x in lr["units"] if x["length"] == n]
            if pts:
                ax.scatter(*zip(*pts), s=10, color=SERIES[n - 1], label=f"length {n}")
        top = max([x["formula_iou"] for x in lr["units"]] + [0.05])
        ax.plot([0, top], [0, top], color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("best single concept IoU")
        ax.set_ylabel("best formula IoU")
        ax.set_title(layer, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def compose_page(rec: dict) -> tuple[str, str]:
    """(body HTML, one-line summary) of compose.json."""
    p = rec["parameters"]
    parts = ["<h1>Compositional labels</h1>",
             f"<p>Each unit's best formula of up to {esc(str(p['max_length']))} concepts joined by AND, OR and "
             f"AND NOT (beam width {esc(str(p['beam']))}), scored by the IoU of the formula's mask with the unit's "
             "thresholded mask over all images, next to its best single concept under the same score "
             "(Mu &amp; Andreas 2020).</p>", figure_img(iou_scatter(rec), "single-concept IoU against formula IoU")]
    for layer, lr in rec["layers"].items():
        s = lr["summary"]
        parts.append(f"<h2>{esc(layer)}</h2><p>{s['compositional']} of {lr['units_total']} units are best labelled "
                     f"by a formula; mean IoU {s['mean_iou_single']:.3f} (single) and {s['mean_iou_formula']:.3f} "
                     "(formula).</p>")
        units = sorted(lr["units"], key=lambda x: -x["formula_iou"])[:SHOWN_UNITS]
        rows = [[x["unit"], x["label"], x["iou"], x["formula"] or "-", x["formula_iou"], x["formula_iou"] - x["iou"]]
                for x in units]
        parts.append(table(["unit", "single concept", "IoU", "best formula", "IoU", "gain"], rows,
                           caption=f"the {len(units)} units with the highest formula IoU"))
    layer, lr = next(iter(rec["layers"].items()))
    return "\n".join(parts), (f"{layer}: {lr['summary']['compositional']}/{lr['units_total']} units labelled "
                              "by a formula")
