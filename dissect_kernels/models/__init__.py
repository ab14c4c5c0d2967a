"""Shipped models: the small CNN whose weights ship as safetensors (the embedded default)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dissect_kernels.models.small_cnn import SmallCNN

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "default_cnn.safetensors"
DEFAULT_CONFIG = ASSETS / "default_cnn.json"
DEFAULT_LAYERS = ("conv3", "conv4")   # the layers `dissect-kernels dissect` reads by default


def default_model_info() -> dict:
    """The training record of the shipped CNN: widths, target concept names, dataset arguments
    (make_synthetic_broden seed, size), normalisation, layers to dissect, accuracy."""
    if not DEFAULT_CONFIG.is_file():
        raise FileNotFoundError(f"default model config not found: {DEFAULT_CONFIG} "
                                f"(run scripts/train_default_model.py)")
    return json.loads(DEFAULT_CONFIG.read_text())


def load_default_model(device=None) -> SmallCNN:
    """The shipped SmallCNN in eval mode with its trained weights (safetensors, no network)."""
    from safetensors.torch import load_file

    if not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(f"default model weights not found: {DEFAULT_WEIGHTS} "
                                f"(run scripts/train_default_model.py)")
    info = default_model_info()
    model = SmallCNN(len(info["targets"]), tuple(info["widths"]))
    model.load_state_dict(load_file(str(DEFAULT_WEIGHTS)))
    model.eval()
    return model.to(device) if device is not None else model


__all__ = ["SmallCNN", "load_default_model", "default_model_info", "DEFAULT_WEIGHTS", "DEFAULT_CONFIG",
           "DEFAULT_LAYERS"]
