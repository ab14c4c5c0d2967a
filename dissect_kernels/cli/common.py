"""What every subcommand shares: one-line errors, building a model from `module:factory` plus
weights, opening a dataset (Broden copy or a freshly written synthetic one)."""
from __future__ import annotations

import importlib
from pathlib import Path

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


def open_dataset(spec: str, out_dir: Path, seed: int, max_images: int | None, *,
                 image_size: int | None = None, normalize: str | None = None, strict: bool = False):
    """'synthetic[:N]' writes a synthetic Broden-format dataset under out_dir; 'broden:PATH'
    or a plain PATH reads a Broden copy; images resized to image_size and normalised by
    `normalize` (imagenet by default)."""
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
    from dissect_kernels.data.transforms import parse_normalization
    try:
        norm = parse_normalization(normalize or "imagenet")
    except ValueError as err:
        raise SystemExit(f"--normalize {normalize!r}: {one_line(err)}") from None
    if image_size is not None and image_size < 8:
        raise SystemExit(f"--image-size must be >= 8 pixels, got {image_size}")
    try:
        return BrodenDataset(root, max_images=max_images, image_size=image_size, normalize=norm,
                             strict=strict)
    except (OSError, ValueError, LookupError) as err:
        raise SystemExit(f"--dataset {spec!r}: not a readable Broden-format dataset "
                         f"({one_line(err)})") from err


def add_input_args(p) -> None:
    """--image-size and --normalize: how dataset images become the model's input."""
    p.add_argument("--image-size", type=int, metavar="PIXELS",
                   help="resize every image to PIXELS x PIXELS first (default: as stored)")
    p.add_argument("--normalize", metavar="MEAN,STD",
                   help="input normalisation: imagenet (default), ndl (NetDissect-Lite's Caffe "
                        "mean, std 0.224), 'MEAN,STD' for all channels or 'M1,M2,M3,S1,S2,S3'")


def add_run_args(p, data: bool = True) -> None:
    """--fresh (ignore an earlier run's checkpoint) and, for dataset commands, --strict."""
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore (and remove) the checkpoint an interrupted earlier run left in --out")
    if data:
        p.add_argument("--strict", action="store_true",
                       help="stop at the first unreadable sample or bad index.csv row instead of skipping "
                            "and counting it")


def parse_bytes(text: str) -> int:
    """'4G', '512M', '2.5GiB', '1000000' -> bytes (argparse type)."""
    import argparse
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 4G, 512M or 1000000, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return value


def check_device(value: str | None) -> None:
    """A --device that cannot work here fails with one line (not a CUDA traceback)."""
    import torch
    if value is None:
        return
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise SystemExit(f"--device {value!r}: {one_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {value!r}: no usable CUDA GPU here (torch {torch.__version__} "
                         "sees none); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {value!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def prepare_out(out: Path, default: Path) -> Path:
    """Create the output folder; the default one (written into the current directory) gets a
    .gitignore of '*' so that a run inside a git checkout does not add its files."""
    from dissect_kernels.io import ensure_dir
    try:
        ensure_dir(out)
    except OSError as err:
        raise SystemExit(f"--out {str(out)!r}: {one_line(err)}") from err
    ignore = out / ".gitignore"
    if Path(out) == Path(default) and not ignore.exists():
        ignore.write_text("# written by dissect-kernels: results are not source files\n*\n")
    return out
