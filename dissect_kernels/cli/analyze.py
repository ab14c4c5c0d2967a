"""`dissect-kernels analyze <name>`: the papers' analyses (dissect_kernels.analysis.ANALYSES),
one sub-subcommand each, sharing `dissect`'s model, layer, dataset and run options; each writes
<out>/<name>.json and a page on the run's report site (docs/analyses.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dissect_kernels.cli.common import (DEFAULT_SYNTHETIC_IMAGES, add_input_args, add_run_args, check_device,
                                       open_dataset, prepare_out)
from dissect_kernels.cli.dissect import DEFAULT_OUT, _check_numbers, _model_and_layers


def add_parser(sub) -> argparse.ArgumentParser:
    """Add `analyze` and one subcommand per registered analysis."""
    from dissect_kernels.analysis import ANALYSES
    a = sub.add_parser("analyze", help="the papers' analyses: " + ", ".join(m.NAME for m in ANALYSES),
                       description="Analyses beyond labelling units; each writes <out>/<name>.json "
                                   "(schema: docs/analyses.md) and a page on the run's report site.")
    inner = a.add_subparsers(dest="analysis", metavar="NAME")
    for module in ANALYSES:
        p = inner.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run_cli)
    return a


def add_model_args(p, *, layers_help: str = "", max_images: int | None = None, thresholds: bool = True) -> None:
    """The model, layers, dataset and run options `dissect` takes (same names, same defaults);
    thresholds=False leaves out --convention, --quantile and --backend (for analyses that tally nothing)."""
    p.add_argument("--model", help="'module.path:factory' returning an nn.Module (default: the embedded small CNN)")
    p.add_argument("--weights", help="state dict (.safetensors or torch file) for --model or the embedded CNN")
    p.add_argument("--layers", help=layers_help or "comma-separated layers, as for `dissect` (default for the "
                                                   "embedded model: conv3,conv4)")
    p.add_argument("--dataset", default="synthetic",
                   help="'broden:PATH' (or PATH) of a Broden-format copy, or 'synthetic[:N]' "
                        f"(default: synthetic, N={DEFAULT_SYNTHETIC_IMAGES})")
    if thresholds:
        p.add_argument("--convention", default="exact", help="exact (default), netdissect, netdissect-lite, "
                                                            "dissect or gandissect (docs/conventions.md)")
        p.add_argument("--quantile", type=float, help="threshold quantile (default: the convention's)")
        p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "triton", "reference"],
                       help="tally kernel backend (default: auto)")
    else:
        p.set_defaults(convention="exact", quantile=None, backend="auto")
    p.add_argument("--max-images", type=int, default=max_images,
                   help="use only the first N images of the dataset" +
                        (f" (default {max_images}; 0: all)" if max_images else ""))
    p.add_argument("--num-workers", type=int, default=None, help="image-decoding worker processes")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic dataset (default 1)")
    add_input_args(p)
    add_run_args(p)
    add_out_args(p)
    p.set_defaults(top_k=None, receptive_fields=None)


def add_out_args(p) -> None:
    """--out, --batch-size, --device, --quiet."""
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the run folder to write into (default: {DEFAULT_OUT})")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def prepare(args):
    """(model, layer specs, dataset, out folder) from the shared options, checked in `dissect`'s order."""
    check_device(args.device)
    if args.max_images == 0:
        args.max_images = None
    model, layers = _model_and_layers(args)
    _check_numbers(args)
    out = prepare_out(Path(args.out), Path(DEFAULT_OUT))
    dataset = open_dataset(args.dataset, out, args.seed, args.max_images, image_size=args.image_size,
                           normalize=args.normalize, strict=args.strict)
    return model, layers, dataset, out


def common_kwargs(args) -> dict:
    """The keyword arguments every analysis function takes from the shared options."""
    return dict(convention=args.convention, quantile=args.quantile, batch_size=args.batch_size,
                device=args.device, progress=not args.quiet, backend=args.backend, resume=not args.fresh)

