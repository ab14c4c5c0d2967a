"""LevelCounts: exact conditional counts of upsampled activations above fixed per-unit levels,
the mergeable accumulator behind GAN Dissection's IQR threshold search.

For U units and NL candidate levels t[u, j] it counts, over every pixel of every sample,
  above_all [U, NL]       pixels with value > t[u, j];
  above_cat [U, NL, K]    ... in samples where category k is present (GD's F_category);
  above_label [U, NL, C]  ... that hold label c in any layer (GD's F_label);
plus truth [C] (label pixels), category_pixels [K] and total_pixels. GD estimates these from
conditional quantile sketches; at fixed candidate levels they are a histogram, so we count
them exactly (strict `>`, the tally's comparison): one bucketize + bincount per batch.
"""
from __future__ import annotations

import torch

from dissect_kernels.ops import _checks
from dissect_kernels.ops.label_stats import label_stats

_COUNTS = ("above_all", "above_cat", "above_label", "truth", "category_pixels", "total_pixels")


class LevelCounts:
    """Streaming exact counts above levels [U, NL] (any order) for C concepts in K categories."""

    def __init__(self, levels: torch.Tensor, num_concepts: int, category_of: torch.Tensor, *,
                 num_categories: int | None = None, device=None, max_chunk: int = 1 << 24):
        levels = _checks.tensor("levels", levels, ndim=2, dtypes=(torch.float32, torch.float64))
        category_of = _checks.tensor("category_of", category_of, ndim=1, dtypes=_checks.INT_DTYPES)
        if category_of.shape[0] != num_concepts:
            raise ValueError(f"category_of has {category_of.shape[0]} entries, expected num_concepts={num_concepts}")
        self.device = torch.device(device) if device is not None else levels.device
        self.levels = levels.to(self.device, torch.float32)
        self.U, self.NL = levels.shape
        self.C = int(num_concepts)
        self.K = int(num_categories) if num_categories is not None else int(category_of.max()) + 1
        _checks.ids_in_range("category_of", category_of, self.K, "num_categories")
        self.category_of = category_of.to(self.device, torch.int64)
        # Sort each unit's levels ascending once; counts are kept in the caller's level order.
        self._sorted, self._order = torch.sort(self.levels, dim=1, stable=True)
        self.max_chunk = int(max_chunk)
        z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=self.device)  # noqa: E731
        self.above_all, self.above_cat = z(self.U, self.NL), z(self.U, self.NL, self.K)
        self.above_label, self.truth = z(self.U, self.NL, self.C), z(self.C)
        self.category_pixels, self.total_pixels = z(self.K), z(())

    def update(self, up: torch.Tensor, labels: torch.Tensor) -> None:
        """up [B, U, H, W] upsampled activations (float); labels [B, L, H, W] or [B, H, W] ids."""
        up = _checks.tensor("up", up, ndim=4, dtypes=_checks.FLOAT_DTYPES)
        labels = _checks.tensor("labels", labels, ndim=(3, 4), dtypes=_checks.INT_DTYPES)
        if labels.dim() == 3:
            labels = labels[:, None]
        B, U, H, W = up.shape
        if U != self.U:
            raise ValueError(f"up has {U} units but the levels have {self.U}")
        if labels.shape[0] != B or tuple(labels.shape[2:]) != (H, W):
            raise ValueError(f"labels {tuple(labels.shape)} must match up {tuple(up.shape)} in batch and size")
        dev = self.device
        up, labels = up.to(dev), labels.to(dev)
        stats = label_stats(labels, num_concepts=self.C, category_of=self.category_of,
                            num_categories=self.K)
        present = stats.present.to(torch.int64)                     # [B, K]
        self.truth += stats.pixels.sum(0)
        self.category_pixels += present.sum(0) * (H * W)
        self.total_pixels += B * H * W
        labels = _first_occurrence(labels.long())                  # [B, L, HW], repeats -> 0
        NB = self.NL + 1
        step = max(1, self.max_chunk // max(1, B * H * W))
        for u0 in range(0, U, step):
            u1 = min(U, u0 + step)
            n = u1 - u0
            x = up[:, u0:u1].float().permute(1, 0, 2, 3).reshape(n, -1)            # [n, B*HW]
            bucket = torch.searchsorted(self._sorted[u0:u1].contiguous(), x.contiguous())  # #levels < x
            unit = torch.arange(n, device=dev)[:, None]
            # Per sample histogram -> counts above each (sorted) level per sample.
            per_img = (unit * B + torch.arange(B, device=dev).repeat_interleave(H * W)[None]) * NB + bucket
            hist = torch.bincount(per_img.reshape(-1), minlength=n * B * NB).view(n, B, NB)
            above_img = _above(hist)                                                 # [n, B, NL]
            self.above_all[u0:u1] += self._unsort(above_img.sum(1), u0, u1)
            self.above_cat[u0:u1] += self._unsort(torch.einsum("nbj,bk->njk", above_img, present), u0, u1)
            # Per label histogram (any layer, each label once per pixel).
            bl = bucket.view(n, B, H * W)
            for layer in range(labels.shape[1]):
                lab = labels[:, layer]                                               # [B, HW]
                idx = (unit[:, :, None] * NB + bl) * self.C + lab[None]
                h = torch.bincount(idx.reshape(-1), minlength=n * NB * self.C).view(n, NB, self.C)
                h[:, :, 0] = 0
                self.above_label[u0:u1] += self._unsort(_above(h.transpose(1, 2)).transpose(1, 2), u0, u1)

    def _unsort(self, counts: torch.Tensor, u0: int, u1: int) -> torch.Tensor:
        """counts [n, NL, ...] in sorted-level order -> the caller's level order."""
        order = self._order[u0:u1]
        out = torch.empty_like(counts)
        idx = order.view(order.shape + (1,) * (counts.dim() - 2)).expand_as(counts)
        out.scatter_(1, idx, counts)
        return out

    def merge(self, other: "LevelCounts") -> "LevelCounts":
        """Add another shard's counts (same levels and concepts). Returns self."""
        if not torch.equal(self.levels.cpu(), other.levels.cpu()) or (self.C, self.K) != (other.C, other.K):
            raise ValueError("cannot merge LevelCounts with different levels or concept/category counts")
        for key in _COUNTS:
            getattr(self, key).add_(getattr(other, key).to(self.device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible): levels, category_of and the counts."""
        state = {key: getattr(self, key).clone() for key in _COUNTS}
        state.update(levels=self.levels.clone(), category_of=self.category_of.clone())
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not torch.equal(state["levels"].cpu().float(), self.levels.cpu()):
            raise ValueError("LevelCounts state was built for different levels")
        for key in _COUNTS:
            getattr(self, key).copy_(state[key])


def _above(hist: torch.Tensor) -> torch.Tensor:
    """hist [..., NL+1] over buckets (bucket = #sorted levels below the value) -> [..., NL]:
    entry k = values > sorted level k = sum of buckets k+1..NL."""
    rev = hist.flip(-1).cumsum(-1).flip(-1)
    return rev[..., 1:]


def _first_occurrence(labels: torch.Tensor) -> torch.Tensor:
    """[B, L, H, W] -> [B, L, HW] with a label repeated in an earlier layer at the same pixel
    set to 0 (so every label counts once per pixel: the any-layer rule)."""
    B, L = labels.shape[:2]
    flat = labels.reshape(B, L, -1).clone()
    for layer in range(1, L):
        dup = (flat[:, :layer] == flat[:, layer:layer + 1]).any(1)
        flat[:, layer][dup] = 0
    return flat
