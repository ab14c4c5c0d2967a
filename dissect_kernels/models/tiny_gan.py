"""The embedded default generator for `dissect-kernels gan`: a tiny hand-built generator whose
middle layer has planted units (known units draw known concepts), and its exact segmenter.

z [B, 48] -> layer1 (linear: six smooth random fields on an 8x8 grid) -> layer2 (bilinear x2 +
depthwise smoothing, 16x16) -> layer3 (1x1 conv + ReLU: 24 units; planted units are
ReLU(gain*(field_c - bias)) of concept c's field, mixed units respond to two concept fields,
noise units to fields no concept uses) -> layer4 (1x1 conv to one logit per palette class,
bilinear x4 to 64x64) -> render (argmax class painted with its palette colour, in [-1, 1]).
Every pixel is exactly a palette colour, so PaletteSegmenter recovers the class map exactly.
Weights are built by scripts/build_tiny_gan.py; which units cause which concept is recorded
in assets/tiny_gan.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_GAN_WEIGHTS = ASSETS / "tiny_gan.safetensors"
TINY_GAN_INFO = ASSETS / "tiny_gan.json"

# Class 0 is the background; colours are RGB in [0, 1] (rendered as 2x-1 in [-1, 1]).
CLASS_NAMES = ["background", "tree", "door", "sun", "water"]
CLASS_COLORS = [(0.62, 0.62, 0.62), (0.10, 0.55, 0.15), (0.55, 0.30, 0.10),
                (1.00, 0.85, 0.10), (0.10, 0.30, 0.90)]
CATEGORY_NAMES = ["object", "stuff"]
CATEGORY_OF = [0, 0, 0, 0, 1]          # background (unused by IoU), tree, door, sun: object; water: stuff

Z_DIM, NUM_FIELDS, FIELD_DIMS, NUM_UNITS = 48, 6, 8, 24


def palette_tensor() -> torch.Tensor:
    """float32 [C, 3] palette colours in the generator's output range [-1, 1]."""
    return torch.tensor(CLASS_COLORS, dtype=torch.float32) * 2 - 1


class Render(nn.Module):
    """Paint each pixel with the colour of its argmax class. Under autograd the image carries
    a straight-through gradient from softmax(logits / temperature), so that soft class scores
    of the rendered image can be differentiated (alpha optimisation); the values are exact."""

    def __init__(self, palette: torch.Tensor, temperature: float = 0.1):
        super().__init__()
        self.register_buffer("palette", palette.clone(), persistent=False)
        self.temperature = temperature

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        hard = F.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        image = torch.einsum("bkhw,kc->bchw", hard, self.palette.to(logits.dtype))
        if torch.is_grad_enabled() and logits.requires_grad:
            soft = torch.einsum("bkhw,kc->bchw", torch.softmax(logits / self.temperature, 1),
                                self.palette.to(logits.dtype))
            image = image + (soft - soft.detach())
        return image


class Linear(nn.Linear):
    """nn.Linear computed as a per-row multiply-and-sum, so every sample's output is bitwise
    the same whatever the batch size (BLAS picks batch-dependent blockings)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None, :] * self.weight[None]).sum(-1) + self.bias


class Pointwise(nn.Conv2d):
    """1x1 convolution as a per-pixel multiply-and-sum (batch-size invariant, see Linear)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight[:, :, 0, 0]
        return (x[:, None] * w[None, :, :, None, None]).sum(2) + self.bias[None, :, None, None]


class Depthwise3x3(nn.Conv2d):
    """Depthwise 3x3 convolution with replicate padding as nine shifted multiply-adds in a
    fixed order (batch-size invariant, see Linear)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
        out = self.bias[None, :, None, None].expand_as(x).clone()
        for dy in range(3):
            for dx in range(3):
                out = out + xp[:, :, dy:dy + H, dx:dx + W] * self.weight[None, :, 0, dy, dx, None, None]
        return out


class TinyGenerator(nn.Module):
    """z [B, z_dim] -> image [B, 3, 64, 64] in [-1, 1] through named layers layer1..layer4.
    Every op is per sample with a fixed arithmetic order: outputs do not depend on the batch."""

    def __init__(self, z_dim: int = Z_DIM, num_fields: int = NUM_FIELDS, num_units: int = NUM_UNITS,
                 num_classes: int = len(CLASS_NAMES)):
        super().__init__()
        self.z_dim = z_dim
        self.layer1 = nn.Sequential(Linear(z_dim, num_fields * 64), nn.Unflatten(1, (num_fields, 8, 8)))
        self.layer2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    Depthwise3x3(num_fields))
        self.layer3 = nn.Sequential(Pointwise(num_fields, num_units), nn.ReLU())
        self.layer4 = nn.Sequential(Pointwise(num_units, num_classes),
                                    nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))
        self.render = Render(palette_tensor()[:num_classes])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.z_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {shape}")
        return self.render(self.layer4(self.layer3(self.layer2(self.layer1(z)))))


class PaletteSegmenter:
    """Segment images painted from a palette: each pixel gets the class of its nearest palette
    colour (squared RGB distance; ties -> lower class id). Returns int64 [B, 1, H, W]."""

    def __init__(self, palette, concept_names, *, category_names=("concept",), category_of=None):
        self.palette = torch.as_tensor(palette, dtype=torch.float32)
        if self.palette.dim() != 2 or self.palette.shape[1] != 3:
            raise ValueError(f"palette must have shape [C, 3], got {tuple(self.palette.shape)}")
        self.num_classes = int(self.palette.shape[0])
        self.concept_names = list(concept_names)
        if len(self.concept_names) != self.num_classes:
            raise ValueError(f"concept_names has {len(self.concept_names)} names for {self.num_classes} colours")
        self.category_names = list(category_names)
        self.category_of = torch.zeros(self.num_classes, dtype=torch.int64) if category_of is None \
            else torch.as_tensor(category_of, dtype=torch.int64)

    def _distances(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must have shape [B, 3, H, W], got {shape}")
        p = self.palette.to(images.device, images.dtype)
        return ((images[:, None] - p[None, :, :, None, None]) ** 2).sum(2)   # [B, C, H, W]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._distances(images).argmin(1, keepdim=True)

    def soft_scores(self, images: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
        """Differentiable class probabilities [B, C, H, W]: softmax(-distance^2 / temperature)."""
        return torch.softmax(-self._distances(images) / temperature, dim=1)


def default_segmenter() -> PaletteSegmenter:
    """The exact segmenter of the default generator (class 0 = background)."""
    return PaletteSegmenter(palette_tensor(), CLASS_NAMES, category_names=CATEGORY_NAMES,
                            category_of=CATEGORY_OF)


def tiny_gan_info() -> dict:
    """The planted truth: layer, units of each concept, mixed and noise units (assets JSON)."""
    if not TINY_GAN_INFO.is_file():
        raise FileNotFoundError(f"tiny GAN info not found: {TINY_GAN_INFO} (run scripts/build_tiny_gan.py)")
    return json.loads(TINY_GAN_INFO.read_text())


def load_default_generator(device=None) -> TinyGenerator:
    """The shipped TinyGenerator in eval mode with its weights (safetensors, no network)."""
    from safetensors.torch import load_file

    if not TINY_GAN_WEIGHTS.is_file():
        raise FileNotFoundError(f"tiny GAN weights not found: {TINY_GAN_WEIGHTS} (run scripts/build_tiny_gan.py)")
    model = TinyGenerator()
    model.load_state_dict(load_file(str(TINY_GAN_WEIGHTS)))
    model.eval()
    return model.to(device) if device is not None else model


__all__ = ["TinyGenerator", "PaletteSegmenter", "Render", "load_default_generator",
           "default_segmenter", "tiny_gan_info", "palette_tensor", "CLASS_NAMES", "CATEGORY_NAMES"]
