"""Image perturbations for the robustness analysis, with the labels transformed the same way:
additive noise k * U[0, 1] (pixel units, 0-255; labels unchanged), rotation about the image
centre (bilinear for images, nearest for labels; outside the image: the dataset's mean colour
and unlabelled), and rearrangement into an n x n grid of shuffled patches (one permutation per
image, the same for its labels). Randomness is seeded by (seed, dataset index), so a sample is
perturbed identically in every pass, batch size and shard.

PerturbedSource stacks every perturbation of a batch into one batch (perturbation-major), so
the dataset is decoded once and each pass runs the model once on all perturbations."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dissect_kernels.engine.sources import Batch

DEFAULT_PERTURBATIONS = ("noise-1", "noise-5", "noise-10", "noise-100", "rotate-10", "rotate-45", "rotate-90",
                         "shuffle-4", "shuffle-8")
KINDS = ("none", "noise", "rotate", "shuffle")


@dataclass(frozen=True)
class Perturbation:
    """kind 'none', 'noise' (amount k: pixel units), 'rotate' (degrees, counter-clockwise) or
    'shuffle' (n: an n x n grid of patches)."""

    kind: str
    amount: float = 0.0

    @property
    def name(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}-{self.amount:g}"

    @staticmethod
    def parse(text: str) -> "Perturbation":
        """'none', 'noise-K', 'rotate-DEG' or 'shuffle-N'."""
        m = re.fullmatch(r"\s*(none|noise|rotate|shuffle)(?:-([0-9.]+))?\s*", str(text))
        if not m or (m.group(1) != "none") != (m.group(2) is not None):
            raise ValueError(f"perturbation {text!r}: expected none, noise-K, rotate-DEGREES or shuffle-N "
                             "(e.g. noise-100, rotate-45, shuffle-8)")
        p = Perturbation(m.group(1), float(m.group(2) or 0))
        if p.kind == "shuffle" and (p.amount != int(p.amount) or p.amount < 1):
            raise ValueError(f"perturbation {text!r}: shuffle-N needs a whole number of patches N >= 1")
        return p


def parse_perturbations(items) -> list[Perturbation]:
    """Perturbations (strings or Perturbation), 'none' first and once, names unique."""
    out = [Perturbation("none")]
    for item in ([items] if isinstance(items, str) else items):
        p = item if isinstance(item, Perturbation) else Perturbation.parse(item)
        if p.name not in [q.name for q in out]:
            out.append(p)
    return out


def _generator(seed: int, index: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) * 7 + salt)


def patch_permutations(n: int, indices: torch.Tensor, seed: int) -> torch.Tensor:
    """[B, n*n] a random permutation of the patches per sample."""
    return torch.stack([torch.randperm(n * n, generator=_generator(seed, i, 1)) for i in indices.tolist()])


def shuffle_patches(x: torch.Tensor, n: int, perms: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] cut into n x n patches, patch j of the result = patch perms[b, j] of x."""
    B, C, H, W = x.shape
    if H % n or W % n:
        raise ValueError(f"shuffle-{n}: a {H}x{W} map does not split into {n}x{n} equal patches "
                         f"(images and label maps must be multiples of {n}: pass image_size=)")
    p = x.reshape(B, C, n, H // n, n, W // n).permute(0, 1, 2, 4, 3, 5).reshape(B, C, n * n, H // n, W // n)
    idx = perms.to(x.device).view(B, 1, n * n, 1, 1).expand(B, C, n * n, H // n, W // n)
    p = p.gather(2, idx)
    return p.reshape(B, C, n, n, H // n, W // n).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)


def rotate(x: torch.Tensor, degrees: float, mode: str) -> torch.Tensor:
    """x [B, C, H, W] rotated counter-clockwise about its centre; exact for multiples of 90."""
    quarter = degrees / 90.0
    if quarter == int(quarter):
        return torch.rot90(x, int(quarter) % 4, dims=(2, 3))
    t = math.radians(-degrees)          # affine_grid maps output to input coordinates
    B, _, H, W = x.shape
    theta = torch.tensor([[math.cos(t), math.sin(t) * H / W, 0.0], [-math.sin(t) * W / H, math.cos(t), 0.0]],
                         dtype=torch.float32, device=x.device)
    grid = F.affine_grid(theta.expand(B, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)


def perturb_images(p: Perturbation, x: torch.Tensor, indices: torch.Tensor, seed: int,
                   pixel_scale: torch.Tensor) -> torch.Tensor:
    """Normalised images [B, 3, H, W] under p; pixel_scale [3] = 1 / (255 * std) per channel."""
    if p.kind == "noise":
        u = torch.stack([torch.rand(x.shape[1:], generator=_generator(seed, i, 0)) for i in indices.tolist()])
        return x + p.amount * u.to(x.device) * pixel_scale.to(x.device).view(1, -1, 1, 1)
    if p.kind == "rotate":
        return rotate(x, p.amount, "bilinear")
    if p.kind == "shuffle":
        return shuffle_patches(x, int(p.amount), patch_permutations(int(p.amount), indices, seed))
    return x


def perturb_labels(p: Perturbation, labels: torch.Tensor, indices: torch.Tensor, seed: int) -> torch.Tensor:
    """Label layers [B, L, H, W] (int) transformed as perturb_images transforms the images."""
    if p.kind == "rotate":
        return rotate(labels.float(), p.amount, "nearest").round().to(labels.dtype)
    if p.kind == "shuffle":
        return shuffle_patches(labels, int(p.amount), patch_permutations(int(p.amount), indices, seed))
    return labels


def pixel_scale(dataset) -> torch.Tensor:
    """[3]: one pixel unit (1/255) in the model's normalised input, from the dataset's (mean,
    std); a dataset without one is taken to give images in [0, 1]."""
    norm = getattr(dataset, "normalization", None)
    std = torch.ones(3) if norm is None else torch.as_tensor(norm[1], dtype=torch.float32).reshape(-1).expand(3)
    return 1.0 / (255.0 * std)


class PerturbedSource:
    """A DatasetSource whose batches hold every perturbation of their samples, stacked
    perturbation-major: indices, labels and image labels repeated / transformed per
    perturbation, images transformed on the model's device."""

    def __init__(self, base, perturbations: list[Perturbation], *, seed: int = 0, scale=None):
        self.base, self.perturbations, self.seed = base, list(perturbations), int(seed)
        self.scale = pixel_scale(base.meta) if scale is None else scale

    def shard(self, rank: int, world: int) -> "PerturbedSource":
        return PerturbedSource(self.base.shard(rank, world), self.perturbations, seed=self.seed, scale=self.scale)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def num_samples(self) -> int:
        return self.base.num_samples * len(self.perturbations)

    def batches(self, start: int, fields=("image", "labels")):
        for b in self.base.batches(start, fields=fields):
            yield None if b is None else self._stack(b)

    def _stack(self, b: Batch) -> Batch:
        P, idx = len(self.perturbations), b.indices
        data = {}
        if b.data.get("labels") is not None:
            data["labels"] = torch.cat([perturb_labels(p, b.data["labels"], idx, self.seed) for p in self.perturbations])
        if b.data.get("image_labels") is not None:
            data["image_labels"] = b.data["image_labels"].repeat(P, 1)
        first = b.prepare or (lambda x: x.float())

        def prepare(x):
            x = first(x)
            return torch.cat([perturb_images(p, x, idx, self.seed, self.scale) for p in self.perturbations])
        return Batch(b.inputs, idx.repeat(P), data, prepare)

    def skips(self):
        return self.base.skips()

    def restore_skips(self, skips) -> None:
        self.base.restore_skips(skips)
