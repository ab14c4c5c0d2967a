"""What the gan commands share: the model flags, and building the generator, its layer and the
segmenter from them (checked before any sample is drawn; errors are one line naming the flag)."""
from __future__ import annotations

from pathlib import Path

DEFAULT_OUT = Path("results/gan")


def add_model_args(p) -> None:
    """The flags every gan analysis command shares: the model's, samples, output."""
    add_generator_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    p.add_argument("--seed", type=int, default=0, help="z of sample i depends only on (seed, i) (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the generator's device)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder; the page joins its report site (default: {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_generator_args(p) -> None:
    """--generator, --weights, --segmenter, --layer (every gan command)."""
    p.add_argument("--generator", help="'module.path:factory' returning the generator (default: the "
                                       "shipped tiny GAN)")
    p.add_argument("--weights", help="state dict (.safetensors or a torch file) for --generator, or for "
                                     "the shipped tiny GAN's architecture without --generator")
    p.add_argument("--segmenter", help="'module.path:factory' returning a segmenter (see "
                                       "dissect_kernels.segmenters), or hf:FOLDER for a local Hugging Face "
                                       "semantic-segmentation model (default: the tiny GAN's palette segmenter)")
    p.add_argument("--layer", default=None, help="layer, a module name or NAME:LAYOUT,... as in "
                                                 "`dissect --layers` (default: the tiny GAN's layer3)")


def load_segmenter(spec: str | None):
    """--segmenter: hf:FOLDER, module:factory, or None (the tiny GAN's palette segmenter)."""
    from dissect_kernels.cli.common import build_from_spec, one_line
    from dissect_kernels.segmenters import check_segmenter, hf_segmenter
    if spec is None:
        from dissect_kernels.models.tiny_gan import default_segmenter
        return default_segmenter()
    if spec.startswith("hf:"):
        try:
            seg = hf_segmenter(spec[3:])
        except (ImportError, ValueError) as err:
            raise SystemExit(f"--segmenter {spec!r}: {one_line(err)}") from err
    else:
        seg = build_from_spec(spec, "--segmenter")
    try:
        check_segmenter(seg)
    except TypeError as err:
        raise SystemExit(f"--segmenter {spec!r}: {one_line(err)}") from None
    return seg


def load_gan(args):
    """(generator, layer, segmenter) from the flags, checked before any sample is drawn."""
    from dissect_kernels.cli.common import load_model, load_weights, one_line
    from dissect_kernels.engine.layers import as_specs, parse_layer
    from dissect_kernels.models.tiny_gan import load_default_generator, tiny_gan_info
    if args.generator:
        gen = load_model(args.generator, args.weights, "--generator").eval()
        if args.layer is None:
            raise SystemExit("--layer is required with --generator")
    else:
        gen = load_default_generator()
        if args.weights:
            load_weights(gen, args.weights, "the shipped", "tiny GAN")
    try:
        layer = as_specs(gen, parse_layer(args.layer or tiny_gan_info()["layer"]))[0]
    except (ValueError, LookupError) as err:
        raise SystemExit(f"--layer: {one_line(err)}") from err
    return gen, layer, load_segmenter(args.segmenter)
