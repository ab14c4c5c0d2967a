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


@styled
def alpha_curves(rec: dict):
    """Per layer and measure: count vs alpha (partial rotations), the random rotations' mean +- std
    as a band, the unrotated count as a dashed line."""
    layers = rec["layers"]
    fig = new_figure(4.2 * 2, 2.8 * len(layers) + 0.4)
    for i, (layer, lr) in enumerate(layers.items()):
        for j, (key, name) in enumerate((("detectors", "detectors"), ("unique_concepts", "unique concepts"))):
            ax = fig.add_subplot(len(layers), 2, 2 * i + j + 1)
            xs = [p["alpha"] for p in lr["partial"]]
            ax.plot(xs, [p[key] for p in lr["partial"]], "o-", color=SERIES[0], label="partial rotation R^alpha")
            ax.axhline(lr["unrotated"][key], color="#555555", ls="--", lw=1, label="unrotated")
            m = lr["random"][key]
            if m["mean"] is not None:
                ax.axhspan(m["mean"] - m["std"], m["mean"] + m["std"], color=SERIES[1], alpha=0.25,
                           label=f"{len(lr['rotations'])} random rotations, mean +- std")
                ax.axhline(m["mean"], color=SERIES[1], lw=1)
            ax.set_xlabel("alpha")
            ax.set_ylabel(name)
            ax.set_title(f"{layer}: {name}", fontsize=10)
            ax.set_ylim(bottom=0)
    fig.axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def rotation_page(rec: dict) -> tuple[str, str]:
    """Counts unrotated, under random rotations (mean +- std) and along the partial-rotation path."""
    parts = ["<h1>Axis alignment: random and partial rotations</h1>",
             "<p>Each layer dissected in its own basis, in the bases of random orthogonal rotations of its "
             "units, and along the path R<sup>alpha</sup> from the identity (alpha = 0) to a random rotation R "
             "(alpha = 1). Fewer detectors away from alpha = 0 mean the layer's interpretable directions are "
             "aligned with its units.</p>", figure_img(alpha_curves(rec), "detectors and concepts against alpha")]
    for layer, lr in rec["layers"].items():
        rows = [["unrotated", lr["unrotated"]["detectors"], lr["unrotated"]["unique_concepts"]]]
        rows += [[f"random rotation (seed {r['seed']})", r["detectors"], r["unique_concepts"]] for r in lr["rotations"]]
        rnd = lr["random"]
        if rnd["detectors"]["mean"] is not None:
            rows.append(["random: mean", rnd["detectors"]["mean"], rnd["unique_concepts"]["mean"]])
            rows.append(["random: std", rnd["detectors"]["std"], rnd["unique_concepts"]["std"]])
        rows += [[f"partial alpha = {p['alpha']:g}", p["detectors"], p["unique_concepts"]] for p in lr["partial"]]
        parts.append(f"<h2>{esc(layer)}</h2>" + table(["basis", "detectors", "unique concepts"], rows))
    layer, lr = next(iter(rec["layers"].items()))
    mean = lr["random"]["detectors"]["mean"]
    return "\n".join(parts), (f"{layer}: {lr['unrotated']['detectors']} detectors unrotated, "
                              + ("" if mean is None else f"{mean:.1f} rotated"))
