"""Pages of the papers' analyses (robustness, rotation, pca, compare): each returns (body HTML,
one-line summary) from the analysis' JSON record, with its figures inline (report.plots style)."""
from __future__ import annotations

from dissect_kernels.report.html import esc, fixed
from dissect_kernels.report.plots import figure_img, new_figure, series_bar, styled, SERIES


def table(head: list[str], rows: list[list], caption: str = "") -> str:
    """An HTML table, every cell escaped (numbers shown with fixed())."""
    def cell(v):
        return f'<td class="num">{fixed(v)}</td>' if isinstance(v, float) else f"<td>{esc(str(v))}</td>"
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f"<table>{cap}<thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr></thead><tbody>"
            + "".join(f"<tr>{''.join(cell(v) for v in r)}</tr>" for r in rows) + "</tbody></table>")


def robustness_page(rec: dict) -> tuple[str, str]:
    """Detectors, unique concepts and label retention per perturbation and layer; accuracy."""
    layers = rec["layers"]
    names = [p["name"] for p in rec["perturbations"]]
    parts = ["<h1>Robustness to perturbations</h1>",
             "<p>The same layers dissected on perturbed images (labels transformed alike); a unit is "
             "<em>retained</em> when it is a detector of the same concept as on clean images.</p>"]
    fig = series_bar(names, [(layer, [lr["summary"][n]["detectors"] for n in names]) for layer, lr in layers.items()],
                     ylabel="detectors", title="Detectors per perturbation")
    parts.append(figure_img(fig, "detectors per perturbation and layer"))
    for layer, lr in layers.items():
        rows = [[n, s["detectors"], s["unique_concepts"], s["retained"], s["retention"]]
                for n, s in lr["summary"].items()]
        parts.append(f"<h2>{esc(layer)}</h2>" + table(["perturbation", "detectors", "unique concepts", "retained",
                                                        "retention"], rows))
    if rec.get("accuracy"):
        rows = [[n, a["accuracy"], a["balanced_accuracy"]] for n, a in rec["accuracy"].items()]
        parts.append("<h2>Classifier accuracy</h2>" + table(["perturbation", "accuracy", "balanced accuracy"], rows))
    first = next(iter(layers.values()))["summary"]
    worst = min(first.items(), key=lambda kv: kv[1]["retention"])
    return "\n".join(parts), f"lowest retention: {worst[0]} ({worst[1]['retention']:.0%})"
