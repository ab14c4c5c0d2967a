"""`dissect-kernels` command line (also `python -m dissect_kernels`).

With no arguments it dissects the embedded default: a small CNN shipped with the package, on a
freshly written synthetic Broden-format dataset, and ends with the report's path."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

DEFAULT_OUT = "dissect_results"
DEFAULT_SYNTHETIC_IMAGES = 600


def one_line(err, limit: int = 400) -> str:
    """An exception's message on one line (load_state_dict's are multi-line), at most `limit`
    characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build_from_spec(spec: str, flag: str = "--model"):
    """Import `module.path:callable` and call it with no arguments; user errors exit with one
    line naming `flag`."""
    if ":" not in spec:
        raise SystemExit(f"{flag} must look like 'module.path:factory', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"{flag} {spec!r}: cannot import it ({err})") from err
    try:
        return factory()
    except Exception as err:  # noqa: BLE001 - the user's factory; say which one failed
        raise SystemExit(f"{flag} {spec!r}: calling it failed ({type(err).__name__}: "
                         f"{one_line(err)})") from err


def load_model(spec: str, weights: str | None, flag: str = "--model"):
    """Build `module.path:factory` and load a safetensors (or torch) state dict into it."""
    import torch

    model = build_from_spec(spec, flag)
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"{flag} {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, weights, flag, spec)
    return model


def load_weights(model, weights: str, flag: str, spec: str) -> None:
    """Load a safetensors (or torch) state dict into `model`; user errors exit with one line."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise SystemExit(f"--weights {weights!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise SystemExit(f"--weights {weights!r}: cannot read a state dict from it "
                         f"({one_line(err)})") from err
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise SystemExit(f"--weights {weights!r} do not fit {flag} {spec!r}: "
                         f"{one_line(err)}") from err


def open_dataset(spec: str, out_dir: Path, seed: int, max_images: int | None):
    """'synthetic[:N]' writes a synthetic Broden-format dataset under out_dir; 'broden:PATH'
    or a plain PATH reads a Broden copy."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        try:
            n = int(spec.split(":", 1)[1]) if ":" in spec else DEFAULT_SYNTHETIC_IMAGES
        except ValueError:
            raise SystemExit(f"--dataset {spec!r}: expected synthetic:N with N a number") from None
        from dissect_kernels.data import make_synthetic_broden
        try:
            root = make_synthetic_broden(out_dir / "synthetic_broden", n_images=n, seed=seed)
        except OSError as err:
            raise SystemExit(f"--out {str(out_dir)!r}: cannot write the synthetic dataset "
                             f"there ({one_line(err)})") from err
    else:
        root = Path(spec.split(":", 1)[1] if spec.startswith("broden:") else spec)
        if not root.is_dir():
            raise SystemExit(f"--dataset {spec!r}: {root} is not a folder")
    from dissect_kernels.data import BrodenDataset
    try:
        return BrodenDataset(root, max_images=max_images)
    except (OSError, ValueError, LookupError) as err:
        raise SystemExit(f"--dataset {spec!r}: not a readable Broden-format dataset "
                         f"({one_line(err)})") from err


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


def cmd_dissect(args) -> int:
    import dissect_kernels as dk
    from dissect_kernels.conventions import CONVENTIONS

    out_dir = Path(args.out)
    if args.model:
        model = load_model(args.model, args.weights)
        layers = args.layers
    else:
        from dissect_kernels.models import DEFAULT_LAYERS, load_default_model
        model = load_default_model()
        layers = args.layers or ",".join(DEFAULT_LAYERS)
        print("dissecting the embedded default model (a small CNN trained on synthetic "
              "Broden-format data); see --help to dissect your own")
    names = [s.strip() for s in (layers or "").split(",") if s.strip()]
    if not names:
        raise SystemExit("--layers is required with --model (e.g. --layers layer3,layer4)")
    for name in names:
        try:
            dk.get_module(model, name)
        except LookupError as err:
            raise SystemExit(f"--layers: {one_line(err)}") from err
    if args.convention not in CONVENTIONS:
        raise SystemExit(f"--convention {args.convention!r} is not one of {sorted(CONVENTIONS)}")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--top-k", args.top_k, 1),
                             ("--max-images", args.max_images, 1), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < low:
            raise SystemExit(f"{flag} must be >= {low}, got {value}")
    if args.quantile is not None and not 0 < args.quantile < 1:
        raise SystemExit(f"--quantile must lie in (0, 1), got {args.quantile}")
    dataset = open_dataset(args.dataset, out_dir, args.seed, args.max_images)
    from dissect_kernels.results import ensure_dir
    try:
        ensure_dir(out_dir)
    except OSError as err:
        raise SystemExit(f"--out {str(out_dir)!r}: {one_line(err)}") from err
    result = dk.dissect(model, names, dataset,
                        convention=args.convention, quantile=args.quantile,
                        batch_size=args.batch_size, device=args.device, out_dir=out_dir,
                        progress=not args.quiet, backend=args.backend, rotation=args.rotation,
                        top_k=args.top_k, num_workers=args.num_workers)
    print_top_units(result)
    if result.skipped:
        print(f"\nskipped {result.skipped} samples {result.skip_reasons} (listed in summary.json)")
    print(f"\nresults: {out_dir / 'units.csv'}, {out_dir / 'results.safetensors'}")
    print(f"report:  {(out_dir / 'report.html').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dissect-kernels",
        description="Network Dissection and GAN Dissection with fused kernels. "
                    "Run with no arguments to dissect the embedded default model.")
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("dissect", help="label the units of a classifier's layers with concepts",
                       description="Two streaming passes (quantile thresholds, then the fused "
                                   "IoU tally) over a Broden-format dataset; writes "
                                   "results.safetensors, units.csv, summary.json, report.html.")
    d.add_argument("--model", help="'module.path:factory' returning an nn.Module "
                                   "(default: the embedded small CNN)")
    d.add_argument("--weights", help="state dict for --model (.safetensors, or a torch file)")
    d.add_argument("--layers", help="comma-separated module names to dissect, e.g. layer3,layer4 "
                                    "(default for the embedded model: its two last conv blocks)")
    d.add_argument("--dataset", default="synthetic",
                   help="'broden:PATH' (or PATH) of a Broden-format copy, or 'synthetic[:N]' to "
                        f"write N synthetic images (default: synthetic, N={DEFAULT_SYNTHETIC_IMAGES})")
    d.add_argument("--convention", default="exact",
                   help="exact (default), netdissect, netdissect-lite, dissect or gandissect: "
                        "which tool's thresholds, upsampling, union and detector rules to follow")
    d.add_argument("--quantile", type=float, help="threshold quantile (default: the convention's)")
    d.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    d.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    d.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    d.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "triton", "reference"],
                   help="tally kernel backend (default: auto = cuda > triton > cpu by device)")
    d.add_argument("--top-k", type=int, help="exemplar images per unit (default: the convention's)")
    d.add_argument("--rotation", type=int, metavar="SEED",
                   help="also dissect each layer under a random orthogonal rotation of its units")
    d.add_argument("--max-images", type=int, help="use only the first N images of the dataset")
    d.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    d.add_argument("--seed", type=int, default=1,
                   help="seed of the synthetic dataset (default 1: images the default model "
                        "never saw in training, which used seed 0)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=cmd_dissect)
    from dissect_kernels.cli_gan import add_gan_parser
    add_gan_parser(sub)
    from dissect_kernels.cli_ablate import add_ablate_parser
    add_ablate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or ["dissect"])
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, LookupError, OSError) as err:
        if os.environ.get("DK_TRACEBACK"):
            raise
        # bad data or an unwritable --out: one line, no traceback (DK_TRACEBACK=1 shows it)
        raise SystemExit(f"dissect-kernels: error: {one_line(err)}") from err


if __name__ == "__main__":
    sys.exit(main())
