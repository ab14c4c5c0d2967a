"""`dissect-kernels compare A B`: compare two result sets unit by unit, whoever made them (this
engine's results folder, NetDissect-Lite's tally.csv folder, davidbau/dissect's report.json
folder, gandissect's dissect.json, in any mix). Prints the agreement, writes compare.json and
compare.png, and exits 1 when the IoUs differ by more than --iou-tolerance or fewer than
--min-same-label of the units keep their label.

`dissect-kernels export RESULTS --format FMT --out DIR` writes a results folder in a reference
tool's format (what `compare` and the tools' own readers read)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dissect_kernels.cli.common import one_line


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `compare` subcommand."""
    d = sub.add_parser("compare", help="compare two result sets (ours or a reference tool's) unit by unit",
                       description=__doc__.split("\n\n")[0])
    d.add_argument("a", help="results A: a folder or file of any supported format")
    d.add_argument("b", help="results B")
    d.add_argument("--layers", metavar="A[=B],...",
                   help="layer pairs to compare (default: the layers both have, or the only one of each)")
    d.add_argument("--layer-a", help="layer name of A when A is a one-layer reference folder (default: the folder name)")
    d.add_argument("--layer-b", help="layer name of B, likewise")
    d.add_argument("--quantile", type=float, default=0.99,
                   help="level at which davidbau/dissect's rq.npz sketch is read out (default 0.99)")
    d.add_argument("--iou-tolerance", type=float, default=1e-6,
                   help="largest |IoU_a - IoU_b| allowed on any unit (default 1e-6)")
    d.add_argument("--min-same-label", type=float, default=0.99,
                   help="smallest share of units with the same label (default 0.99)")
    d.add_argument("--out", default="compare_results", help="folder for compare.json and compare.png")
    d.set_defaults(run=run)
    _add_export(sub)
    return d


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write a results folder in a reference tool's format",
                       description="Write this engine's results as NetDissect-Lite (tally.csv + quantile.npy "
                                   "per layer), davidbau/dissect (report.json + rq.npz per layer) or "
                                   "gandissect (dissect.json) files.")
    e.add_argument("results", help="a results folder of this engine")
    e.add_argument("--format", required=True, choices=["netdissect-lite", "netdissect", "gandissect"],
                   help="the reference tool whose files to write")
    e.add_argument("--out", required=True, help="output folder")
    e.set_defaults(run=run_export)


def _pairs(text: str | None):
    if not text:
        return None
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        a, _, b = item.partition("=")
        pairs.append((a, b or a))
    return pairs


def run(args) -> int:
    from dissect_kernels.comparison import compare, pair_layers, summary_lines, within
    from dissect_kernels.io import ensure_dir, write_json
    from dissect_kernels.io.references import load_units
    from dissect_kernels.report.comparison_plot import save_comparison_figure
    try:
        a = load_units(args.a, layer=args.layer_a, quantile=args.quantile)
        b = load_units(args.b, layer=args.layer_b, quantile=args.quantile)
        pairs = pair_layers(a, b, _pairs(args.layers))
        results = compare(a, b, pairs)
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"dissect-kernels compare: {one_line(err)}") from None
    ok = within(results, args.iou_tolerance, args.min_same_label)
    print(f"A: {args.a} ({next(iter(a.values())).source})\nB: {args.b} ({next(iter(b.values())).source})")
    print("\n".join(summary_lines(results)))
    out = ensure_dir(args.out)
    write_json(Path(out) / "compare.json", dict(
        a=str(args.a), b=str(args.b), iou_tolerance=args.iou_tolerance, min_same_label=args.min_same_label,
        within_tolerance=ok, layers=[r.to_json() for r in results]))
    save_comparison_figure(Path(out) / "compare.png", [(a[x], b[y]) for x, y in pairs], results)
    print(f"{'within' if ok else 'OUTSIDE'} tolerance (|ΔIoU| <= {args.iou_tolerance:g}, same label >= "
          f"{100 * args.min_same_label:g}%); details: {Path(out) / 'compare.json'}, {Path(out) / 'compare.png'}")
    return 0 if ok else 1


def run_export(args) -> int:
    from dissect_kernels.io import load_results
    from dissect_kernels.io.references import export_results
    try:
        written = export_results(load_results(args.results), args.format, args.out)
    except (OSError, ValueError) as err:
        raise SystemExit(f"dissect-kernels export: {one_line(err)}") from None
    print("\n".join(str(p) for p in written))
    return 0
