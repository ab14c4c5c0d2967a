"""Generated vs real statistics ("what a GAN cannot generate"): the segmenter's per-class pixel
and image frequencies on generated samples and on a folder of real images, and the classes the
generator under- or over-produces. Both sides are one pass of the engine with one accumulator
(ClassFrequency: integer counts, exact to merge): the generator's samples, then the real images
through an identity model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dissect_kernels.engine import IndexSource, IntegerCounts, Pass, run_passes
from dissect_kernels.generated import make_z_sampler, segment, segmenter_info
from dissect_kernels.ops.segment_stats import segment_stats


class ClassFrequency(IntegerCounts):
    """Per class: pixels [C] and images holding it [C] (int64); images and pixels seen."""

    needs_output = True

    def __init__(self, segmenter, num_classes: int):
        self.segmenter, self.C = segmenter, num_classes
        self.counts = {"pixels": torch.zeros(num_classes, dtype=torch.int64),
                       "images": torch.zeros(num_classes, dtype=torch.int64),
                       "num_images": torch.zeros((), dtype=torch.int64),
                       "num_pixels": torch.zeros((), dtype=torch.int64)}

    def update(self, step) -> None:
        seg = segment(self.segmenter, step.output, self.C)
        n = segment_stats(seg, self.C).cpu()                                    # [B, C]
        c = self.counts
        c["pixels"] += n.sum(0)
        c["images"] += (n > 0).sum(0)
        c["num_images"] += n.shape[0]
        c["num_pixels"] += n.shape[0] * seg.shape[-1] * seg.shape[-2]



@dataclass
class GeneratedVsReal:
    """Class frequencies of both sides ({"pixels", "images", "num_images", "num_pixels"}); a
    class is under-produced when real images hold at least min_fraction of their pixels in it
    and the generator's pixel fraction is below 1/factor of the real one (over-produced: the
    reverse, the generator's fraction above min_fraction)."""

    concept_names: list[str]
    generated: dict[str, torch.Tensor]
    real: dict[str, torch.Tensor]
    factor: float
    min_fraction: float

    def fractions(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel fraction [C], image fraction [C]) of "generated" or "real"."""
        c = getattr(self, side)
        return (c["pixels"].double() / max(1, int(c["num_pixels"])),
                c["images"].double() / max(1, int(c["num_images"])))

    def ratio(self) -> torch.Tensor:
        """[C] generated / real pixel fraction (inf where real is 0 and generated is not, NaN
        where both are)."""
        return self.fractions("generated")[0] / self.fractions("real")[0]

    def under_produced(self) -> list[int]:
        """Class ids (not background), most under-produced first."""
        g, r = self.fractions("generated")[0], self.fractions("real")[0]
        ids = [c for c in range(1, len(g)) if r[c] >= self.min_fraction and g[c] * self.factor < r[c]]
        return sorted(ids, key=lambda c: float(g[c] / r[c]))

    def over_produced(self) -> list[int]:
        g, r = self.fractions("generated")[0], self.fractions("real")[0]
        ids = [c for c in range(1, len(g)) if g[c] >= self.min_fraction and g[c] > self.factor * r[c]]
        return sorted(ids, key=lambda c: -float(g[c] / r[c].clamp(min=1e-12)))

    def to_json(self) -> dict:
        """The documented generated_vs_real.json (docs/gan.md)."""
        (gp, gi), (rp, ri) = self.fractions("generated"), self.fractions("real")
        r6 = lambda x: None if x != x or x in (float("inf"), float("-inf")) else round(float(x), 6)  # noqa: E731
        ratio = self.ratio()
        return {"kind": "generated_vs_real", "num_generated": int(self.generated["num_images"]),
                "num_real": int(self.real["num_images"]), "factor": self.factor,
                "min_fraction": self.min_fraction,
                "under_produced": [self.concept_names[c] for c in self.under_produced()],
                "over_produced": [self.concept_names[c] for c in self.over_produced()],
                "classes": [{"class": n, "generated_pixel_fraction": r6(gp[c]), "real_pixel_fraction": r6(rp[c]),
                             "generated_image_fraction": r6(gi[c]), "real_image_fraction": r6(ri[c]),
                             "pixel_ratio": r6(ratio[c])} for c, n in enumerate(self.concept_names)]}


def _frequency(model, source, segmenter, C: int, device, progress: bool, desc: str) -> dict:
    out = run_passes(model, source, [Pass("frequency", lambda results: {"f": ClassFrequency(segmenter, C)})],
                     device=device, progress=progress, check_finite=False, desc=desc)
    return out.results["frequency"]["f"]


def generated_vs_real(generator: nn.Module, segmenter, real, *, num_samples: int = 64, seed: int = 0,
                      batch_size: int = 16, max_real: int | None = None, factor: float = 2.0,
                      min_fraction: float = 0.01, z_sampler: Callable | None = None,
                      z_dim: int | None = None, device=None, progress: bool = False) -> GeneratedVsReal:
    """Segment num_samples generated samples (z as in dissect_generator) and the real images
    (a folder, read by data.ImageFolder at the generated images' size, or a tensor [N, 3, H, W]
    in [-1, 1]) and compare the class frequencies (see GeneratedVsReal)."""
    from dissect_kernels.data.image_folder import ImageFolder
    C, names, _, _ = segmenter_info(segmenter)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not factor > 1 or not 0 <= min_fraction < 1:
        raise ValueError(f"factor must be > 1 and min_fraction in [0, 1), got {factor!r}, {min_fraction!r}")
    dev = torch.device(device) if device is not None else next(
        (p.device for p in generator.parameters()), torch.device("cpu"))
    z_of = make_z_sampler(generator, seed, z_dim, z_sampler, dev)
    gen = _frequency(generator, IndexSource(num_samples, z_of, batch_size=batch_size), segmenter, C, dev,
                     progress, "generated")
    if isinstance(real, torch.Tensor):
        if real.dim() != 4 or real.shape[1] != 3 or len(real) == 0:
            raise ValueError(f"real images must be a [N, 3, H, W] tensor, got {tuple(real.shape)}")
        images = real[:max_real] if max_real else real
        load = lambda idx: images[idx].float().to(dev)   # noqa: E731
        n_real = len(images)
    else:
        with torch.no_grad():
            size = tuple(generator(z_of(torch.arange(1))).shape[-2:])
        folder = ImageFolder(real, size, max_images=max_real)
        load = lambda idx: folder.batch(idx).to(dev)     # noqa: E731
        n_real = len(folder)
    rea = _frequency(nn.Identity(), IndexSource(n_real, load, batch_size=batch_size), segmenter, C, dev,
                     progress, "real")
    return GeneratedVsReal(names, gen, rea, float(factor), float(min_fraction))
