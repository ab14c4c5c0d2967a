"""The shipped tiny generator's companions for the causal analyses of `dissect-kernels gan`:
its "real" images (the training distribution it stands in for, in which water is more common
than the generator makes it) and its artifact score (grey haze: the share of grey background
pixels, which only the eight noise units of layer3 add: they feed nothing but the background
logit, so they are the planted artifact units)."""
from __future__ import annotations

import torch

from dissect_kernels.models.tiny_gan import ASSETS, CLASS_NAMES, palette_tensor

REAL_IMAGES = ASSETS / "tiny_gan_real"
REAL_SEED, REAL_COUNT = 1000, 48
WATER_DIMS, WATER_SCALE = slice(24, 32), 2.5      # z dims of the water field, and their scale


def real_z(indices: torch.Tensor) -> torch.Tensor:
    """The "real" distribution's z: standard normal (seed REAL_SEED) with the water field's
    dims scaled by WATER_SCALE, so real scenes hold more water than the generator draws."""
    from dissect_kernels.generated import sample_z
    z = sample_z(indices, 48, REAL_SEED)
    z[:, WATER_DIMS] *= WATER_SCALE
    return z


def haze_score(images: torch.Tensor, tolerance: float = 0.05) -> torch.Tensor:
    """Artifact score per image [B] float64: the fraction of pixels within `tolerance` (per
    channel, in [-1, 1]) of the background grey."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape [B, 3, H, W], got {shape}")
    grey = palette_tensor()[CLASS_NAMES.index("background")].to(images.device, images.dtype)
    near = ((images - grey[None, :, None, None]).abs() <= tolerance).all(1)
    return near.double().mean((1, 2))


__all__ = ["REAL_IMAGES", "haze_score", "real_z"]
