"""Compare representations (GAN Dissection's comparisons across layers, models and datasets): two
or more dissections (any layers of any results folders) side by side: detectors and unique
concepts per concept category, the concepts they share, and units matched by label. Reads
finished results only (no pass over data). Not `dissect-kernels compare`, which checks that two
result sets of the SAME layer agree unit by unit (e.g. against a reference tool)."""
from __future__ import annotations

from pathlib import Path

from dissect_kernels.analysis.common import header, unit_record

NAME = "compare"
HELP = ("compare what two or more dissections found (layers of one model, two models, one model on two "
        "datasets): detectors per concept category side by side, shared concepts, units matched by label. "
        "(Not `dissect-kernels compare`, which checks that two result sets of the same layer agree.)")


def sides_of(runs, names=None) -> list[tuple[str, object]]:
    """[(name, LayerResult)] from runs: results folders (every layer), 'FOLDER:LAYER', DissectionResults,
    or (name, LayerResult) pairs; names override the default 'folder/layer' names."""
    from dissect_kernels.io import load_results
    sides = []
    for run in runs:
        if isinstance(run, tuple):
            sides.append(run)
            continue
        if isinstance(run, (str, Path)):
            folder, _, layer = str(run).partition(":") if not Path(str(run)).exists() else (str(run), "", "")
            result, label = load_results(folder), Path(folder).name
            if layer and layer not in result.layers:
                raise ValueError(f"{run!r}: no layer {layer!r} in {folder} (it has {sorted(result.layers)})")
        else:
            result, label, layer = run, "run", ""
        sides += [(f"{label}/{name}", lr) for name, lr in result.layers.items() if not layer or name == layer]
    if names is not None:
        if len(names) != len(sides):
            raise ValueError(f"{len(names)} names given for {len(sides)} dissected layers: "
                             f"{[n for n, _ in sides]}")
        sides = [(n, lr) for n, (_, lr) in zip(names, sides)]
    if len(sides) < 2 or len({n for n, _ in sides}) != len(sides):
        raise ValueError(f"need two or more differently named layers to compare, got {[n for n, _ in sides]}")
    return sides


def compare(runs, *, names=None, out_dir=None, report: bool = True) -> dict:
    """Compare the dissected layers of `runs` (see sides_of). Returns the compare.json record; with
    out_dir, writes it and a page on that run's report site."""
    sides = sides_of(runs, names)
    rec = header(NAME, None, None, {"sides": [n for n, _ in sides]})
    rec["sides"] = [_side(n, lr) for n, lr in sides]
    labels = {n: _detectors_by_concept(lr) for n, lr in sides}
    rec["pairs"] = [_pair(a, b, labels[a], labels[b]) for i, (a, _) in enumerate(sides) for b, _ in sides[i + 1:]]
    every = sorted({c for d in labels.values() for c in d})
    cat = {lr.concept_names[c]: lr.category_names[int(lr.category_of[c])] for _, lr in sides
           for c in lr.unique_concepts()}
    rec["concepts"] = [{"concept": c, "category": cat.get(c, "-"),
                        "units": {n: labels[n].get(c, []) for n, _ in sides}} for c in every]
    rec["layers"] = {n: {"units": _units(n, lr, labels)} for n, lr in sides}
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.analyses import compare_page
        write_analysis(out_dir, NAME, rec, "Comparison of representations", *compare_page(rec))
    return rec


def _detectors_by_concept(lr) -> dict[str, list[int]]:
    """Concept name -> the detector units labelled with it (by IoU, best first)."""
    out: dict[str, list[int]] = {}
    for u in sorted(range(lr.num_units), key=lambda u: -float(lr.best_iou[u])):
        if bool(lr.detector[u]):
            out.setdefault(lr.unit_label(u), []).append(u)
    return out


def _side(name: str, lr) -> dict:
    """One dissected layer: detectors and unique concepts, overall and per category."""
    cats: dict[str, dict] = {}
    for c, n in lr.detector_counts().items():
        k = lr.category_names[int(lr.category_of[c])]
        entry = cats.setdefault(k, {"detectors": 0, "unique_concepts": 0})
        entry["detectors"] += n
        entry["unique_concepts"] += 1
    return {"name": name, "layer": lr.layer, "units": lr.num_units, "detectors": lr.num_detectors,
            "unique_concepts": len(lr.unique_concepts()), "categories": cats}


def _pair(a: str, b: str, la: dict, lb: dict) -> dict:
    """Concepts both sides detect, those only one does, and their Jaccard overlap."""
    shared, union = sorted(set(la) & set(lb)), set(la) | set(lb)
    return {"a": a, "b": b, "shared_concepts": shared, "only_a": sorted(set(la) - set(lb)),
            "only_b": sorted(set(lb) - set(la)), "jaccard": len(shared) / len(union) if union else None}


def _units(name: str, lr, labels: dict) -> list[dict]:
    """Per unit: its label and, per other side, the detector units with the same label there."""
    out = []
    for u in range(lr.num_units):
        det, label = bool(lr.detector[u]), lr.unit_label(u)
        out.append(unit_record(lr.layer, u, side=name, label=label, category=lr.unit_category(u),
                               iou=float(lr.best_iou[u]), detector=det,
                               matches={o: d.get(label, []) for o, d in labels.items() if o != name} if det else {}))
    return out


def add_arguments(p) -> None:
    """RUN [RUN ...] (folders or FOLDER:LAYER), --names, --out."""
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a dissection results folder (all its layers) or FOLDER:LAYER; two or more layers in all")
    p.add_argument("--names", help="comma-separated names for the compared layers, in order (default: folder/layer)")
    p.add_argument("--out", help="run folder to write compare.json and the page into (default: the first RUN's)")


def run_cli(args) -> int:
    """`dissect-kernels analyze compare`: print the table and the shared concepts."""
    from dissect_kernels.cli.common import prepare_out
    from dissect_kernels.io.lock import locked
    first = args.runs[0] if Path(args.runs[0]).exists() else args.runs[0].partition(":")[0]
    out = Path(args.out or first)
    try:
        sides = sides_of(args.runs, args.names.split(",") if args.names else None)
    except (OSError, ValueError) as err:
        raise SystemExit(f"analyze compare: {err}") from None
    prepare_out(out, Path("."))
    with locked(out):
        rec = compare(sides, out_dir=out)
    for s in rec["sides"]:
        print(f"{s['name']:<28} {s['detectors']:>4}/{s['units']:<4} detectors, {s['unique_concepts']:>3} concepts  "
              + ", ".join(f"{k} {v['detectors']}" for k, v in sorted(s["categories"].items())))
    for p in rec["pairs"]:
        j = "-" if p["jaccard"] is None else f"{p['jaccard']:.2f}"
        print(f"{p['a']} vs {p['b']}: {len(p['shared_concepts'])} shared concepts (Jaccard {j})")
    print(f"\nresults: {out / 'compare.json'}\nreport:  {(out / 'compare.html').resolve()}")
    return 0
