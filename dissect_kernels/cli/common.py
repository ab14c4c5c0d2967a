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
