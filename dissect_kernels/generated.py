"""Generated samples for GAN dissection and ACE: z per sample index (so shards, resumes and batch
sizes see the same samples), and the segmenter that labels the generated images (its classes,
names and categories, and a checked call)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def sample_z(indices: torch.Tensor, z_dim: int, seed: int = 0, device=None) -> torch.Tensor:
    """Standard normal z [B, z_dim], row i drawn from a generator seeded by (seed, indices[i]),
    so a sample's z depends only on its index: shards, resumes and batch sizes agree."""
    rows = []
    for i in indices.tolist():
        state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(i),)).generate_state(2, np.uint64)
        g = torch.Generator().manual_seed(int(state[0] & np.uint64(0x7FFFFFFFFFFFFFFF)))
        rows.append(torch.randn(z_dim, generator=g))
    z = torch.stack(rows) if rows else torch.zeros(0, z_dim)
    return z.to(device) if device is not None else z


def make_z_sampler(generator: nn.Module, seed: int, z_dim: int | None, z_sampler, device):
    """indices -> z on device: the caller's z_sampler, or sample_z with the generator's z_dim."""
    if z_sampler is not None:
        if not callable(z_sampler):
            raise TypeError(f"z_sampler must be a callable indices -> z, got {type(z_sampler).__name__}")
        return lambda idx: z_sampler(idx).to(device)
    z_dim = z_dim if z_dim is not None else getattr(generator, "z_dim", None)
    if not isinstance(z_dim, int) or z_dim < 1:
        raise ValueError("pass z_dim=... or z_sampler=... (the generator has no integer z_dim attribute)")
    return lambda idx: sample_z(idx, z_dim, seed, device)


def segmenter_info(segmenter) -> tuple[int, list[str], list[str], torch.Tensor]:
    """(num_classes, concept_names, category_names, category_of) of a segmenter; names and
    categories default to class_<i> and one category "concept"."""
    C = getattr(segmenter, "num_classes", None)
    if not isinstance(C, int) or C < 2:
        raise ValueError(f"segmenter must have an integer num_classes >= 2 (class 0 = background), got {C!r}")
    names = list(getattr(segmenter, "concept_names", None) or [f"class_{i}" for i in range(C)])
    cats = list(getattr(segmenter, "category_names", None) or ["concept"])
    cat_of = getattr(segmenter, "category_of", None)
    cat_of = torch.zeros(C, dtype=torch.int64) if cat_of is None else torch.as_tensor(cat_of, dtype=torch.int64)
    if len(names) != C or cat_of.shape != (C,):
        raise ValueError(f"segmenter has {C} classes but {len(names)} concept_names and category_of "
                         f"of shape {tuple(cat_of.shape)}")
    if int(cat_of.min()) < 0 or int(cat_of.max()) >= len(cats):
        raise ValueError(f"segmenter.category_of holds ids outside [0, {len(cats)})")
    return C, names, cats, cat_of


def segment(segmenter, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Run the segmenter and check its output: int64 [B, L, H, W] ids in [0, num_classes)."""
    with torch.no_grad():
        seg = segmenter(images)
    B = images.shape[0]
    if not isinstance(seg, torch.Tensor) or seg.dim() not in (3, 4) or seg.shape[0] != B:
        shape = tuple(seg.shape) if isinstance(seg, torch.Tensor) else type(seg).__name__
        raise ValueError(f"segmenter must return class ids of shape [B, H, W] or [B, L, H, W] with "
                         f"B={B}, got {shape}")
    if seg.dtype.is_floating_point or seg.dtype == torch.bool:
        raise TypeError(f"segmenter must return integer class ids, got {seg.dtype}")
    seg = seg[:, None] if seg.dim() == 3 else seg
    lo, hi = int(seg.min()), int(seg.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"segmenter returned class ids in [{lo}, {hi}] but num_classes={num_classes} "
                         f"(ids must lie in [0, {num_classes}))")
    return seg.long()
