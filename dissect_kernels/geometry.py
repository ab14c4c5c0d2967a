"""Upsampling geometry: per-axis affine maps x_src = scale * x_dst + offset with a boundary
policy, turned into small index/weight tables that every backend evaluates identically.

Every reference's geometry is an instance (REFERENCE-CONVENTIONS §2):
- "half-pixel"     F.interpolate(bilinear, align_corners=False), PIL bilinear (NDL), GD's
                   intended grid (border padding == clamping the coordinate);
- "align-corners"  F.interpolate(bilinear, align_corners=True);
- "zero-pad"       davidbau/dissect: the half-pixel map, neighbours outside the map read 0;
- Geometry.receptive_field(...)  NetDissect: linear through receptive-field centres, clamped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
import torch

BOUNDARIES = ("clamp", "zero", "border")


class AxisTable(NamedTuple):
    """Source indices and weights for one output axis (int32, int32, float32, float32)."""

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor

    def to(self, device) -> "AxisTable":
        return AxisTable(*(t.to(device) for t in self))


AffineRule = Callable[[int, int], tuple[float, float]]  # (n_src, n_dst) -> (scale, offset)


def _half_pixel(n_src: int, n_dst: int) -> tuple[float, float]:
    scale = n_src / n_dst
    return scale, 0.5 * scale - 0.5


def _align_corners(n_src: int, n_dst: int) -> tuple[float, float]:
    return ((n_src - 1) / (n_dst - 1) if n_dst > 1 else 0.0), 0.0


@dataclass(frozen=True)
class Geometry:
    """How target pixels map to source coordinates, per axis, and what lies outside."""

    rule_y: AffineRule
    rule_x: AffineRule
    boundary: str = "clamp"
    name: str = "custom"

    def __post_init__(self):
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"geometry boundary must be one of {BOUNDARIES}, got {self.boundary!r}")

    @staticmethod
    def named(name: "str | Geometry") -> "Geometry":
        """Resolve a geometry name ("half-pixel", "align-corners", "zero-pad") or pass through."""
        if isinstance(name, Geometry):
            return name
        if name not in PRESETS:
            raise ValueError(f"unknown geometry {name!r}; expected one of {sorted(PRESETS)} or a Geometry")
        return PRESETS[name]

    @staticmethod
    def affine(scale_y: float, offset_y: float, scale_x: float, offset_x: float,
               boundary: str = "clamp") -> "Geometry":
        """A fixed affine map per axis, independent of the sizes."""
        return Geometry(lambda s, d: (scale_y, offset_y), lambda s, d: (scale_x, offset_x),
                        boundary, "affine")

    @staticmethod
    def receptive_field(offset: int, size: int, stride: int, ratio: int = 2) -> "Geometry":
        """NetDissect's geometry: source cell i sits at the centre of its receptive field,
        ((size//2 + offset) + i*stride) // ratio in target pixels (composed Caffe -pad, RF size,
        stride; ratio = image / segmentation size); linear between centres, clamped beyond."""
        start = (size // 2 + offset) // ratio
        step = stride // ratio
        if step <= 0:
            raise ValueError(f"receptive_field: stride//ratio must be positive, got {stride}//{ratio}")
        rule = lambda s, d: (1.0 / step, -start / step)  # noqa: E731
        return Geometry(rule, rule, "clamp", "receptive-field")

    def tables(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[AxisTable, AxisTable]:
        """(y table, x table) for resampling a src_hw map to dst_hw."""
        return (axis_table(*self.rule_y(src_hw[0], dst_hw[0]), src_hw[0], dst_hw[0], self.boundary),
                axis_table(*self.rule_x(src_hw[1], dst_hw[1]), src_hw[1], dst_hw[1], self.boundary))

    def affine_maps(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> "AffineMaps":
        """The computed (scale, offset) per axis and the boundary: everything the tables depend
        on besides the sizes, as plain numbers (a cache key, and what the custom ops take)."""
        sy, oy = self.rule_y(src_hw[0], dst_hw[0])
        sx, ox = self.rule_x(src_hw[1], dst_hw[1])
        return AffineMaps(float(sy), float(oy), float(sx), float(ox), self.boundary)


class AffineMaps(NamedTuple):
    """One resampling's per-axis maps x_src = scale * x_dst + offset and its boundary policy."""

    scale_y: float
    offset_y: float
    scale_x: float
    offset_x: float
    boundary: str


PRESETS = {
    "half-pixel": Geometry(_half_pixel, _half_pixel, "clamp", "half-pixel"),
    "align-corners": Geometry(_align_corners, _align_corners, "clamp", "align-corners"),
    "zero-pad": Geometry(_half_pixel, _half_pixel, "zero", "zero-pad"),
}


@lru_cache(maxsize=256)
def device_tables(maps: AffineMaps, src_hw: tuple[int, int], dst_hw: tuple[int, int],
                  device: torch.device) -> tuple[AxisTable, AxisTable]:
    """(y table, x table) on `device`, built and copied once per (maps, sizes, device): the ops
    call this for every batch. Callers must not modify the returned tensors."""
    ytab = axis_table(maps.scale_y, maps.offset_y, src_hw[0], dst_hw[0], maps.boundary)
    xtab = axis_table(maps.scale_x, maps.offset_x, src_hw[1], dst_hw[1], maps.boundary)
    return ytab.to(device), xtab.to(device)


def axis_table(scale: float, offset: float, n_src: int, n_dst: int, boundary: str) -> AxisTable:
    """Bilinear taps for x_src = scale * x_dst + offset, computed in float64, rounded once."""
    if n_src < 1 or n_dst < 1:
        raise ValueError(f"axis sizes must be >= 1, got source {n_src}, target {n_dst}")
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise ValueError(f"geometry scale/offset must be finite, got {scale}, {offset}")
    x = scale * np.arange(n_dst, dtype=np.float64) + offset
    if boundary in ("clamp", "border"):
        x = np.clip(x, 0.0, n_src - 1)
    x0 = np.floor(x)
    w1 = x - x0
    w0 = 1.0 - w1
    i0 = x0.astype(np.int64)
    i1 = i0 + 1
    if boundary == "zero":
        w0 = np.where((i0 >= 0) & (i0 <= n_src - 1), w0, 0.0)
        w1 = np.where((i1 >= 0) & (i1 <= n_src - 1), w1, 0.0)
    i0 = np.clip(i0, 0, n_src - 1)
    i1 = np.clip(i1, 0, n_src - 1)
    return AxisTable(torch.from_numpy(i0.astype(np.int32)), torch.from_numpy(i1.astype(np.int32)),
                     torch.from_numpy(w0.astype(np.float32)), torch.from_numpy(w1.astype(np.float32)))
