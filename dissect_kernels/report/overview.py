"""The index of a dissection run (classifier or GAN): the summary figure across layers (detector
units and unique concepts per category per layer, as in the NetDissect paper), a table of the
same numbers linking each layer's page, the rotation test beside the unrotated layers when it
was run, and the run's details (model, dataset, parameters, timing)."""
from __future__ import annotations

from dissect_kernels.report.html import esc, meta_table
from dissect_kernels.report.palette import category_chip, category_order
from dissect_kernels.report.plots import figure_img, layer_summary
from dissect_kernels.report.site import href
from dissect_kernels.report.units import detector_rule, layer_file
from dissect_kernels.results import DissectionResult, LayerResult


def per_category(lr: LayerResult) -> dict[str, tuple[int, int]]:
    """{category: (detector units, unique concepts)} over the layer's detectors."""
    units: dict[str, int] = {}
    concepts: dict[str, set[int]] = {}
    for c, k in zip(lr.best_label[lr.detector].tolist(), lr.best_category[lr.detector].tolist()):
        name = lr.category_names[k] if k >= 0 else "-"
        units[name] = units.get(name, 0) + 1
        concepts.setdefault(name, set()).add(c)
    return {name: (units[name], len(concepts[name])) for name in units}


def layer_table(result: DissectionResult) -> str:
    """Per layer: units, detectors, unique concepts, then unique concepts per category."""
    counts = {name: per_category(lr) for name, lr in result.layers.items()}
    cats = category_order({c for per in counts.values() for c in per})
    head = "".join(f"<th scope=\"col\">{category_chip(c)}</th>" for c in cats)
    rows = []
    for name, lr in result.layers.items():
        per = counts[name]
        cells = "".join(f'<td class="num">{per.get(c, (0, 0))[1]}</td>' for c in cats)
        rows.append(f'<tr><th scope="row"><a href="{href(layer_file(name))}">{esc(name)}</a></th>'
                    f'<td class="num">{lr.num_units}</td><td class="num">{lr.num_detectors}</td>'
                    f'<td class="num">{len(lr.unique_concepts())}</td>{cells}</tr>')
    return ('<div class="table-wrap"><table class="numbers"><thead><tr><th scope="col">layer</th>'
            '<th scope="col">units</th><th scope="col">detectors</th><th scope="col">unique concepts'
            f"</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            '<p class="note">The category columns count unique concepts detected in each category.</p>')


def rotation_table(result: DissectionResult) -> str:
    """The axis-alignment test: each rotated layer beside the layer it rotates."""
    rows = []
    for name, lr in result.layers.items():
        source = (lr.rotation_info or {}).get("of")
        base = result.layers.get(source) if source else None
        if not lr.rotation_info or base is None:
            continue
        rows.append(f'<tr><th scope="row"><a href="{href(layer_file(source))}">{esc(source)}</a></th>'
                    f'<td class="num">{base.num_detectors}</td><td class="num">{len(base.unique_concepts())}</td>'
                    f'<td><a href="{href(layer_file(name))}">{esc(name)}</a></td>'
                    f'<td class="num">{lr.num_detectors}</td><td class="num">{len(lr.unique_concepts())}</td></tr>')
    if not rows:
        return ""
    return ("<h2>Rotation test</h2><p>Each layer dissected again after a random orthogonal rotation "
            "of its units. Far fewer detectors in the rotated basis mean the network's own units "
            "are aligned with the concepts (NetDissect's axis-alignment test).</p>"
            '<div class="table-wrap"><table class="numbers"><thead><tr><th scope="col">layer</th>'
            '<th scope="col">detectors</th><th scope="col">unique concepts</th><th scope="col">rotated</th>'
            '<th scope="col">detectors</th><th scope="col">unique concepts</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def run_details(result: DissectionResult) -> str:
    skipped = str(result.skipped) + (f" ({', '.join(f'{k}: {v}' for k, v in result.skip_reasons.items())})"
                                      if result.skip_reasons else "")
    return "<h2>Run details</h2>" + meta_table([
        ("convention", result.convention), ("detector rule", detector_rule(result.convention)),
        ("unit numbering", f"units are numbered from {result.unit_base}"),
        ("model", result.model), ("dataset", result.dataset), ("parameters", result.parameters),
        ("skipped samples", skipped), ("warnings", "; ".join(result.warnings) or "none"), ("timing (s)", {k: round(v, 2) for k, v in result.timing.items()}),
        ("created", f"{result.created} (dissect_kernels {result.version})")])


def dissection_overview(result: DissectionResult) -> str:
    """The index content below the page list."""
    rows = [(name, per_category(lr)) for name, lr in result.layers.items()]
    parts = ["<h2>Detectors across layers</h2>"]
    if any(lr.num_detectors for lr in result.layers.values()):
        parts.append(figure_img(layer_summary(rows), "detector units and unique concepts per category per layer"))
    else:
        parts.append("<p>No unit of any layer is a detector.</p>")
    parts += [layer_table(result), rotation_table(result), run_details(result)]
    return "\n".join(p for p in parts if p)
