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


@styled
def loading_panels(concepts: list[dict], most: int = 6, units: int = 10):
    """First-component loadings on the strongest units, one small panel per concept."""
    shown = concepts[:most]
    cols = min(3, max(1, len(shown)))
    rows = (len(shown) + cols - 1) // cols
    fig = new_figure(3.6 * cols, 2.3 * rows + 0.3)
    for i, c in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        load = c["components"][0]["loadings"]
        top = sorted(range(len(load)), key=lambda u: -abs(load[u]))[:units]
        ax.bar(range(len(top)), [load[u] for u in top], color=SERIES[0])
        ax.set_xticks(range(len(top)), [str(u) for u in top], rotation=90)
        ax.set_title(f"{c['concept']} (share {c['top_share']:.2f})", fontsize=9)
        ax.set_xlabel("unit", fontsize=8)
    if shown:
        fig.axes[0].set_ylabel("PC1 loading")
    fig.tight_layout()
    return fig


def pca_page(rec: dict) -> tuple[str, str]:
    """Per layer: the largest loading share per concept (a ranked bar), loading panels, a table."""
    from dissect_kernels.report.plots import ranked_bar
    parts = ["<h1>PCA of concepts: one unit or a combination?</h1>",
             "<p>Per concept, the SVD of the layer's standardised activations on the concept's pixels. The "
             "<em>share</em> is the largest squared loading of the first component on one unit (1: one unit "
             "carries the concept; 1/U: spread over all U units); <em>effective units</em> = 1 / sum of "
             "squared shares.</p>"]
    total = one = 0
    for layer, lr in rec["layers"].items():
        cs = lr["concepts"]
        total, one = total + len(cs), one + sum(c["carried_by"] == "one unit" for c in cs)
        parts.append(f"<h2>{esc(layer)}</h2>")
        if not cs:
            parts.append("<p>No concept has pixels in this dataset.</p>")
            continue
        parts.append(figure_img(ranked_bar([(c["concept"], c["top_share"], c["category"]) for c in cs],
                                           ylabel="largest loading share", title=f"{layer}: PC1 share of the top unit"),
                                f"{layer}: largest loading share per concept"))
        parts.append(figure_img(loading_panels(cs), f"{layer}: first-component loadings"))
        rows = [[c["concept"], c["category"], c["pixels"], c["top_unit"], c["top_share"], c["effective_units"],
                 c["components"][0]["explained"], c["carried_by"]] for c in cs]
        parts.append(table(["concept", "category", "pixels", "top unit", "share", "effective units",
                            "PC1 explains", "carried by"], rows))
    return "\n".join(parts), f"{one}/{total} concepts carried by one unit"


@styled
def overlap_matrix(rec: dict):
    """The summary figure: detectors and unique concepts per side, and the pairwise Jaccard
    overlap of their detected concept sets."""
    sides = [s["name"] for s in rec["sides"]]
    n = len(sides)
    jac = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for p in rec["pairs"]:
        i, j = sides.index(p["a"]), sides.index(p["b"])
        jac[i][j] = jac[j][i] = p["jaccard"] if p["jaccard"] is not None else float("nan")
    fig = new_figure(4.0 + 0.9 * n, 2.6 + 0.25 * n)
    ax = fig.add_subplot(1, 2, 1)
    xs = range(n)
    ax.bar([x - 0.2 for x in xs], [s["detectors"] for s in rec["sides"]], 0.4, color=SERIES[0], label="detectors")
    ax.bar([x + 0.2 for x in xs], [s["unique_concepts"] for s in rec["sides"]], 0.4, color=SERIES[1],
           label="unique concepts")
    ax.set_xticks(list(xs), sides, rotation=90)
    ax.set_ylim(top=1.3 * max([s["detectors"] for s in rec["sides"]] + [1]))
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax2 = fig.add_subplot(1, 2, 2)
    im = ax2.imshow(jac, vmin=0, vmax=1, cmap="Blues")
    ax2.set_xticks(list(xs), sides, rotation=90)
    ax2.set_yticks(list(xs), sides)
    ax2.grid(False)
    for i in range(n):
        for j in range(n):
            ax2.text(j, i, f"{jac[i][j]:.2f}", ha="center", va="center", fontsize=8,
                     color="white" if jac[i][j] > 0.6 else "black")
    ax2.set_title("shared concepts (Jaccard)", fontsize=10)
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return fig


def compare_page(rec: dict) -> tuple[str, str]:
    """Category histograms side by side, the summary figure, shared concepts, matched units."""
    sides = rec["sides"]
    cats = sorted({k for s in sides for k in s["categories"]})
    parts = ["<h1>Comparison of representations</h1>",
             "<p>What each dissected layer detects, side by side; units are matched by their label. (For "
             "a unit-by-unit agreement check of two result sets of the same layer, use "
             "<code>dissect-kernels compare</code>.)</p>",
             figure_img(series_bar(cats, [(s["name"], [s["categories"].get(k, {}).get("detectors", 0) for k in cats])
                                          for s in sides], ylabel="detectors", title="Detectors per concept category"),
                        "detectors per concept category and compared layer"),
             figure_img(overlap_matrix(rec), "detectors, concepts and pairwise overlap"),
             table(["layer", "units", "detectors", "unique concepts"] + cats,
                   [[s["name"], s["units"], s["detectors"], s["unique_concepts"]]
                    + [s["categories"].get(k, {}).get("unique_concepts", 0) for k in cats] for s in sides],
                   caption="unique concepts per category in the last columns")]
    for p in rec["pairs"]:
        parts.append(f"<h2>{esc(p['a'])} vs {esc(p['b'])}</h2>" + table(
            ["shared concepts", "only in " + p["a"], "only in " + p["b"], "Jaccard"],
            [[", ".join(p["shared_concepts"]) or "-", ", ".join(p["only_a"]) or "-", ", ".join(p["only_b"]) or "-",
              p["jaccard"] if p["jaccard"] is not None else "-"]]))
    rows = [[c["concept"], c["category"]] + [", ".join(map(str, c["units"][s["name"]])) or "-" for s in sides]
            for c in rec["concepts"]]
    parts.append("<h2>Units matched by label</h2>" + table(["concept", "category"] + [s["name"] for s in sides], rows))
    first = rec["pairs"][0]
    return "\n".join(parts), (f"{len(sides)} layers; {first['a']} and {first['b']} share "
                              f"{len(first['shared_concepts'])} concepts")
