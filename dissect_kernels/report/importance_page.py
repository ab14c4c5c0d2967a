"""The unit-importance page: per layer, scatter plots of each unit attribute against the
unit's mean per-class accuracy drop under ablation, the rank correlations overall and per class,
and the classes whose most important unit matters most."""
from __future__ import annotations

from dissect_kernels.report.analyses import table
from dissect_kernels.report.html import esc
from dissect_kernels.report.plots import SERIES, figure_img, new_figure, styled

LABELS = {"selectivity": "class selectivity", "weight_l1": "weight L1 norm", "best_iou": "best concept IoU",
          "mean_activation": "mean activation"}

SHORT = {"selectivity": "selectivity", "weight_l1": "weight L1", "best_iou": "IoU", "mean_activation": "activation"}


@styled
def attribute_scatter(layer: str, lr: dict):
    """One row of panels: each attribute (x) against the mean accuracy drop (y), one dot per unit."""
    fig = new_figure(3.0 * len(LABELS), 2.8)
    for i, (key, label) in enumerate(LABELS.items()):
        ax = fig.add_subplot(1, len(LABELS), i + 1)
        pts = [(x[key], x["mean_drop"]) for x in lr["units"] if x[key] is not None and x["mean_drop"] is not None]
        if pts:
            ax.scatter(*zip(*pts), s=9, color=SERIES[0])
        r = lr["spearman"][key]
        ax.set_title(f"{label}\nSpearman {'-' if r is None else f'{r:+.2f}'}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        if i == 0:
            ax.set_ylabel("mean accuracy drop")
    fig.suptitle(layer, fontsize=10)
    fig.tight_layout()
    return fig


def _r(r) -> str:
    return "-" if r is None else f"{r:+.2f}"


def importance_page(rec: dict) -> tuple[str, str]:
    """(body HTML, one-line summary) of importance.json."""
    parts = ["<h1>Unit importance</h1>",
             "<p>Each unit ablated alone (zeroed everywhere); the drop is the fall in a class's balanced accuracy "
             "(the model's output k predicts that concept k is present). Spearman rank correlations of each unit "
             "attribute with the mean drop over classes, and with each class's drop.</p>"]
    for layer, lr in rec["layers"].items():
        parts.append(f"<h2>{esc(layer)}</h2>")
        parts.append(figure_img(attribute_scatter(layer, lr), f"{layer}: unit attributes against accuracy drop"))
        rows = [[LABELS[a], _r(r), _r(lr["spearman_max_drop"][a])] for a, r in lr["spearman"].items()]
        parts.append(table(["attribute", "Spearman vs mean drop", "Spearman vs max drop"], rows))
        classes = sorted(lr["classes"].items(), key=lambda kv: -kv[1]["top_drop"])
        rows = [[t, c["baseline_balanced_accuracy"], c["top_unit"], c["top_drop"],
                 "-" if c["top_share"] is None else c["top_share"], *[_r(c["spearman"][a]) for a in LABELS]]
                for t, c in classes]
        parts.append(table(["class", "balanced accuracy", "top unit", "its drop", "share of drop",
                            *[f"\u03c1 {SHORT[a]}" for a in LABELS]], rows,
                           caption="per class (\u03c1: Spearman with the class's drops)"))
    layer, lr = next(iter(rec["layers"].items()))
    return "\n".join(parts), f"{layer}: Spearman(selectivity, drop) {_r(lr['spearman']['selectivity'])}"
