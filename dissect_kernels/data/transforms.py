"""Image preprocessing without torchvision: resize (PIL), to-tensor and normalise (numpy).
Presets: ImageNet mean/std (GD, DB) and NetDissect-Lite's Caffe mean with one std of 0.224."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# NDL: subtract the RGB mean (124.6901, 118.6897, 109.5388) and divide by 255 * 0.224.
NDL_MEAN = (124.6901 / 255, 118.6897 / 255, 109.5388 / 255)
NDL_STD = (0.224, 0.224, 0.224)


class Resize:
    """Resize a PIL image (or HWC uint8 array) to size x size (or (h, w)) with PIL bilinear."""

    def __init__(self, size, resample=Image.BILINEAR):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.resample = resample

    def __call__(self, img):
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        h, w = self.size
        if img.size == (w, h):
            return img
        return img.resize((w, h), self.resample)


class ToTensor:
    """PIL image or HWC uint8 array -> float32 tensor [3, H, W] in [0, 1]."""

    def __call__(self, img):
        arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image must be HxWx3, got shape {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


class Normalize:
    """(x - mean) / std per channel on a float tensor [3, H, W] in [0, 1]."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalised tensor back to [0, 1] (for display)."""
        return x * self.std.to(x.device) + self.mean.to(x.device)


class Compose:
    """Apply transforms in order."""

    def __init__(self, *steps):
        self.steps = [s for s in steps if s is not None]

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


def imagenet_transform(size=None) -> Compose:
    """Optional resize, to-tensor, ImageNet normalisation (the default)."""
    return Compose(Resize(size) if size else None, ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD))


def ndl_transform(size=None) -> Compose:
    """Optional resize, to-tensor, NetDissect-Lite's Caffe mean and single std 0.224."""
    return Compose(Resize(size) if size else None, ToTensor(), Normalize(NDL_MEAN, NDL_STD))


NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "ndl": (NDL_MEAN, NDL_STD)}


def named_transform(name: str, size=None) -> Compose:
    """A transform by preset name: "imagenet" or "ndl"."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {name!r}; expected one of {sorted(NORMALIZATIONS)}")
    return Compose(Resize(size) if size else None, ToTensor(), Normalize(*NORMALIZATIONS[name]))


def parse_normalization(value) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A normalisation as (mean, std) per channel: a preset name ("imagenet", "ndl"), a pair
    (mean, std) of numbers or of 3-tuples, or text 'MEAN,STD' / 'M1,M2,M3,S1,S2,S3'."""
    if isinstance(value, str) and value in NORMALIZATIONS:
        return NORMALIZATIONS[value]
    if isinstance(value, str):
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            nums = []
        if len(nums) not in (2, 6):
            raise ValueError(f"normalize must be 'imagenet', 'ndl', 'MEAN,STD' or six numbers "
                             f"'M1,M2,M3,S1,S2,S3', got {value!r}")
        value = (nums[0], nums[1]) if len(nums) == 2 else (nums[:3], nums[3:])
    mean, std = value
    mean = tuple(float(m) for m in mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3
    std = tuple(float(s) for s in std) if isinstance(std, (list, tuple)) else (float(std),) * 3
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalize needs 3 means and 3 positive stds, got mean={mean}, std={std}")
    return mean, std


def normalized_transform(size=None, normalize="imagenet") -> Compose:
    """Optional resize, to-tensor, then (x - mean) / std with `normalize` (see
    parse_normalization)."""
    mean, std = parse_normalization(normalize)
    return Compose(Resize(size) if size else None, ToTensor(), Normalize(mean, std))
