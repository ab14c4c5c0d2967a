"""`dissect-kernels dissect`: label the units of a classifier's layers with concepts. With no
arguments it dissects the embedded default (a small CNN shipped with the package) on a freshly
written synthetic Broden-format dataset and ends with the report's path."""
from __future__ import annotations

import argparse
from pathlib import Path

from dissect_kernels.io.lock import locked

from dissect_kernels.cli.common import (DEFAULT_SYNTHETIC_IMAGES, add_input_args, add_run_args, check_device,
                                       load_model, load_weights, one_line, open_dataset, parse_bytes, prepare_out)

DEFAULT_OUT = "dissect_results"


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `dissect` subcommand to an argparse subparsers object."""
    d = sub.add_parser("dissect", help="label the units of a classifier's layers with concepts",
                       description="Two streaming passes (quantile thresholds, then the fused "
                                   "IoU tally) over a Broden-format dataset; writes "
                                   "results.safetensors, units.csv, summary.json and the report "
                                   "site: index.html and a page per layer.")
    d.add_argument("--model", help="'module.path:factory' returning an nn.Module "
                                   "(default: the embedded small CNN)")
    d.add_argument("--weights", help="state dict (.safetensors, or a torch file) for --model, or for "
                                     "the embedded SmallCNN's architecture without --model")
    d.add_argument("--layers", help="comma-separated layers to dissect, e.g. layer3,layer4 (default for "
                                    "the embedded model: its two last conv blocks). A layer may carry "
                                    "its layout: NAME:LAYOUT[,grid=HxW][,prefix=K][,select=S][,input] "
                                    "with LAYOUT nchw (default; any strides), nhwc, tokens ([B, T, C]: "
                                    "K class/register tokens first, then an HxW patch grid, square if "
                                    "not given) or tokens_seq_first ([T, B, C]); select=INDEX|KEY picks "
                                    "a tensor from a tuple/dict output; input takes the module's input. "
                                    "E.g. 'blocks.6:tokens,prefix=1' for a ViT block")
    d.add_argument("--dataset", default="synthetic",
                   help="'broden:PATH' (or PATH) of a Broden-format copy, or 'synthetic[:N]' to "
                        f"write N synthetic images (default: synthetic, N={DEFAULT_SYNTHETIC_IMAGES})")
    d.add_argument("--convention", default="exact",
                   help="exact (default), netdissect, netdissect-lite, dissect or gandissect: "
                        "which tool's thresholds, upsampling, union and detector rules to follow; "
                        "change single rules in brackets, e.g. 'netdissect-lite[stale_category_flag=true]' "
                        "(docs/conventions.md)")
    d.add_argument("--receptive-fields", metavar="LAYER:OFFSET,SIZE,STRIDE[;...]",
                   help="receptive field of a layer in image pixels for --convention netdissect (first "
                        "pixel of cell 0, width, step; six numbers for y then x); by default traced "
                        "from the model's convolutions and pools")
    d.add_argument("--quantile", type=float, help="threshold quantile (default: the convention's)")
    d.add_argument("--thresholds", metavar="PATH",
                   help="fixed per-unit thresholds instead of the quantile pass: a results folder "
                        "(e.g. an earlier run of the same layers) or its results.safetensors")
    d.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    d.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    d.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    d.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "triton", "reference"],
                   help="tally kernel backend (default: auto = cuda > triton > cpu by device)")
    d.add_argument("--top-k", type=int, help="exemplar images per unit (default: the convention's)")
    d.add_argument("--rotation", type=int, metavar="SEED",
                   help="also dissect each layer under a random orthogonal rotation of its units")
    d.add_argument("--max-images", type=int, help="use only the first N images of the dataset")
    d.add_argument("--num-workers", type=int, default=None,
                   help="image-decoding worker processes (default: one less than the cores, at most 4)")
    add_input_args(d)
    add_run_args(d)
    d.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="memory the run may use, e.g. 8G: quantiles stay exact only where they fit, the "
                        "activation cache gets the rest, and a run that cannot fit stops before it starts "
                        "(default: no limit; the estimate is printed either way)")
    d.add_argument("--seed", type=int, default=1,
                   help="seed of the synthetic dataset (default 1: images the default model "
                        "never saw in training, which used seed 0)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=run)
    return d


def print_top_units(result, n: int = 12) -> None:
    """A short table of the best units of every layer."""
    for name, layer in result.layers.items():
        order = layer.best_iou.argsort(descending=True)[:n].tolist()
        dets = int(layer.detector.sum())
        print(f"\n{name}: {dets}/{len(layer.best_iou)} detectors, "
              f"{len(set(layer.best_label[layer.detector].tolist()))} unique concepts")
        print(f"  {'unit':>5}  {'label':<22} {'category':<10} {'IoU':>6}  det")
        for u in order:
            label = int(layer.best_label[u])
            cat = int(layer.best_category[u])
            print(f"  {u + result.unit_base:>5}  {layer.concept_names[label]:<22} "
                  f"{layer.category_names[cat] if cat >= 0 else '-':<10} "
                  f"{float(layer.best_iou[u]):6.3f}  {'*' if bool(layer.detector[u]) else ''}")


def _model_and_layers(args):
    """(model, layer names) from --model/--weights/--layers, checked before any data is read."""
    from dissect_kernels.engine.layers import as_specs, parse_layers
    if args.layers is not None and not args.layers.strip(" ,"):
        raise SystemExit("--layers is empty: name at least one module (e.g. --layers layer3,layer4)")
    if args.model:
        model, layers = load_model(args.model, args.weights), args.layers
        if layers is None:
            raise SystemExit("--layers is required with --model (e.g. --layers layer3,layer4)")
    else:
        from dissect_kernels.models import DEFAULT_LAYERS, load_default_model
        model = load_default_model()
        if args.weights:
            load_weights(model, args.weights, "the embedded", "SmallCNN")
        layers = args.layers or ",".join(DEFAULT_LAYERS)
        print("dissecting the embedded default model (a small CNN trained on synthetic "
              "Broden-format data); see --help to dissect your own")
    try:
        return model, as_specs(model, parse_layers(layers))
    except (ValueError, LookupError) as err:
        raise SystemExit(f"--layers: {one_line(err)}") from err


def _check_numbers(args) -> None:
    from dissect_kernels.conventions import get_convention
    from dissect_kernels.receptive_field import parse_receptive_fields
    try:
        get_convention(args.convention)
        args.receptive_fields = parse_receptive_fields(args.receptive_fields or "") or None
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--convention/--receptive-fields: {one_line(err)}") from None
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--top-k", args.top_k, 1),
                             ("--max-images", args.max_images, 1), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < low:
            raise SystemExit(f"{flag} must be >= {low}, got {value}")
    if args.quantile is not None and not 0 < args.quantile < 1:
        raise SystemExit(f"--quantile must lie in (0, 1), got {args.quantile}")


def _thresholds(path: str | None):
    """--thresholds: a results folder (or its results.safetensors), checked before any pass."""
    if path is None:
        return None
    folder = Path(path)
    folder = folder.parent if folder.name == "results.safetensors" else folder
    from dissect_kernels.io import load_results
    try:
        load_results(folder)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--thresholds {path!r}: {one_line(err)}") from None
    return folder


def run(args) -> int:
    out_dir = Path(args.out)
    check_device(args.device)
    model, names = _model_and_layers(args)
    _check_numbers(args)
    thresholds = _thresholds(args.thresholds)
    prepare_out(out_dir, Path(DEFAULT_OUT))
    with locked(out_dir):
        result = _run(args, model, names, thresholds, out_dir)
    _print_summary(result, out_dir)
    return 0


def _run(args, model, names, thresholds, out_dir: Path):
    import dissect_kernels as dk
    dataset = open_dataset(args.dataset, out_dir, args.seed, args.max_images, image_size=args.image_size,
                           normalize=args.normalize, strict=args.strict)
    return dk.dissect(model, names, dataset, thresholds=thresholds, resume=not args.fresh, strict=args.strict,
                      convention=args.convention, receptive_fields=args.receptive_fields,
                      quantile=args.quantile, batch_size=args.batch_size,
                      device=args.device, out_dir=out_dir, progress=not args.quiet, backend=args.backend,
                      rotation=args.rotation, top_k=args.top_k, num_workers=args.num_workers,
                      memory_budget=args.memory_budget)


def _print_summary(result, out_dir: Path) -> None:
    """The best units, the stage timings, what was skipped, where the files are."""
    print_top_units(result)
    stages = {k[6:]: v for k, v in result.timing.items() if k.startswith("stage ")}
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) +
          f" (passes {sum(v for k, v in result.timing.items() if k in ('quantiles', 'tally', 'exemplars')):.1f})")
    if result.skipped:
        print(f"\nskipped {result.skipped} samples {result.skip_reasons} (listed in summary.json)")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"\nresults: {out_dir / 'units.csv'}, {out_dir / 'results.safetensors'}")
    print(f"report:  {(out_dir / 'index.html').resolve()}  (open it in a browser)")
