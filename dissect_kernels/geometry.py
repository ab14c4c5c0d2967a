"""Upsampling geometry: per-axis maps from target pixels to source coordinates with a boundary
policy, turned into small index/weight tables that every backend evaluates identically.

A geometry has two parts: where each target pixel samples the source (the tables), and the
*arithmetic* that blends the four source taps (the same for every backend, so integer counts
are identical across reference, C++, CUDA and Triton). Three arithmetic modes let one kernel
reproduce each reference implementation bit for bit (docs/conventions.md):

- "separable" (0): fp32 weights; r = w0*a + w1*b on each source row, then v = wy0*r0 + wy1*r1,
  every product and sum rounded to fp32 (no FMA). Positions computed in float64 and rounded
  once. This engine's own arithmetic ("exact"), NetDissect's receptive-field geometry.
- "grid-sample" (1): what torch.nn.functional.grid_sample(bilinear, align_corners=True)
  computes from davidbau/dissect's and gandissect's float32 grid. Positions in float32 as the
  grid and grid_sample compute them; corner weights w_ij = fl32(wy_i * wx_j); the blend is the
  fused chain fma(a11, w11, fma(a10, w10, fma(a01, w01, a00 * w00))) that torch's CPU (AVX2)
  and CUDA kernels both evaluate. Taps outside the map read 0 ("zero") or the coordinate is
  clamped first ("border").
- "pillow" (2): PIL's bilinear resize of a mode-'F' image (NetDissect-Lite's
  scipy.misc.imresize(mode='F')): per-pixel coefficients computed in float64 and normalised to
  sum 1, horizontal pass summed in float64 and rounded to fp32, then the vertical pass the same
  way. Enlarging only (PIL averages more than two pixels when shrinking).

Tables carry fp32 weights (w0, w1: every mode's bounds and the separable / grid-sample blends)
and their float64 values (d0, d1: the pillow blend; equal to w0, w1 in the other modes).

Every reference's geometry is an instance (REFERENCE-CONVENTIONS §2):
- "half-pixel"     F.interpolate(bilinear, align_corners=False); this engine's default;
- "align-corners"  F.interpolate(bilinear, align_corners=True);
- "zero-pad"       the half-pixel map, neighbours outside the map read 0 (separable fp32);
- "grid-sample"    davidbau/dissect's upsampler: its float32 grid through grid_sample, zeros;
- "grid-sample-border"  gandissect's upsample_grid with padding_mode='border' (align_corners=True,
                   the PyTorch 0.4/1.0 behaviour it was written for);
- "pillow"         NetDissect-Lite's imresize(mode='F');
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
ARITHMETIC = {"separable": 0, "grid-sample": 1, "pillow": 2}


class AxisTable(NamedTuple):
    """Source taps and weights for one output axis: indices i0, i1 (int32), fp32 weights w0, w1,
    their float64 values d0, d1 (the pillow blend reads these), and the arithmetic code
    (ARITHMETIC) the kernels blend with. A tap outside the map has weight 0."""

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor
    d0: torch.Tensor
    d1: torch.Tensor
    arith: int = 0

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(i0, i1, w0, w1, d0, d1): what the kernels read."""
        return tuple(self[:6])

    def to(self, device) -> "AxisTable":
        return AxisTable(*(t.to(device) for t in self.tensors), self.arith)

    def spec(self) -> list[int]:
        """The six tensors' addresses and the arithmetic code, for the C++ entry points."""
        return [t.data_ptr() for t in self.tensors] + [int(self.arith)]


AffineRule = Callable[[int, int], tuple[float, float]]  # (n_src, n_dst) -> (scale, offset)


def _half_pixel(n_src: int, n_dst: int) -> tuple[float, float]:
    scale = n_src / n_dst
    return scale, 0.5 * scale - 0.5


def _align_corners(n_src: int, n_dst: int) -> tuple[float, float]:
    return ((n_src - 1) / (n_dst - 1) if n_dst > 1 else 0.0), 0.0


def _grid_default(n_src: int, n_dst: int) -> tuple[float, float]:
    """davidbau/dissect's and gandissect's default scale_offset (target = s * source + o), in
    their float64 arithmetic: s = target / source, o = s/2 - 1/2 (pixel centres line up)."""
    s = float(n_dst) / n_src
    return s, 0.5 * s - 0.5


@dataclass(frozen=True)
class Geometry:
    """How target pixels map to source coordinates, per axis, what lies outside, and the
    arithmetic of the blend. For "separable" the rules give x_src = scale * x_dst + offset;
    for "grid-sample" they give the references' scale_offset (x_dst = s * x_src + o), which
    their float32 grid is built from; "pillow" uses only the sizes."""

    rule_y: AffineRule
    rule_x: AffineRule
    boundary: str = "clamp"
    name: str = "custom"
    arithmetic: str = "separable"

    def __post_init__(self):
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"geometry boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        if self.arithmetic not in ARITHMETIC:
            raise ValueError(f"geometry arithmetic must be one of {sorted(ARITHMETIC)}, got {self.arithmetic!r}")

    @staticmethod
    def named(name: "str | Geometry") -> "Geometry":
        """Resolve a geometry name (see PRESETS) or pass a Geometry through."""
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
    def receptive_field(offset, size, stride, ratio=2) -> "Geometry":
        """NetDissect's geometry: source cell i sits at the centre of its receptive field,
        ((size//2 + offset) + i*stride) // ratio in target pixels (composed Caffe -pad, RF size,
        stride; ratio = image / segmentation size); linear between centres, clamped beyond.
        Each argument is one int for both axes or a (y, x) pair."""
        pairs = [v if isinstance(v, (tuple, list)) else (v, v) for v in (offset, size, stride, ratio)]
        rules = []
        for o, s, t, r in zip(*pairs):
            start, step = (int(s) // 2 + int(o)) // int(r), int(t) // int(r)
            if step <= 0:
                raise ValueError(f"receptive_field: stride//ratio must be positive, got {t}//{r}")
            rules.append(lambda n, d, start=start, step=step: (1.0 / step, -start / step))
        return Geometry(rules[0], rules[1], "clamp", "receptive-field")

    @staticmethod
    def grid_sample(scale_offset=None, image_size=None, boundary: str = "zero") -> "Geometry":
        """davidbau/dissect's upsampler through grid_sample (align_corners=True): without
        scale_offset pixel centres line up; with scale_offset ((sy, oy), (sx, ox)) mapping
        feature pixels to image pixels (its conv-list mapping) and image_size (iy, ix), each
        is rescaled to the target as that code does: s*(T-1)/(N-1), o*(T-1)/(N-1)."""
        if scale_offset is None:
            return Geometry(_grid_default, _grid_default, boundary, "grid-sample", "grid-sample")
        rules = []
        for axis, (s, o) in enumerate(scale_offset):
            n = None if image_size is None else image_size[axis]
            rules.append(_scaled_rule(float(s), float(o), n))
        return Geometry(rules[0], rules[1], boundary, "grid-sample", "grid-sample")

    def tables(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[AxisTable, AxisTable]:
        """(y table, x table) for resampling a src_hw map to dst_hw."""
        maps = self.affine_maps(src_hw, dst_hw)
        return build_tables(maps, tuple(src_hw), tuple(dst_hw))

    def affine_maps(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> "AffineMaps":
        """The computed (scale, offset) per axis, the boundary and the arithmetic: everything
        the tables depend on besides the sizes, as plain values (a cache key, and what the
        custom ops take)."""
        sy, oy = self.rule_y(src_hw[0], dst_hw[0])
        sx, ox = self.rule_x(src_hw[1], dst_hw[1])
        return AffineMaps(float(sy), float(oy), float(sx), float(ox), self.boundary, self.arithmetic)


def _scaled_rule(s: float, o: float, image: int | None) -> AffineRule:
    def rule(n_src: int, n_dst: int) -> tuple[float, float]:
        if image is None:
            return s, o
        return s * (n_dst - 1) / (image - 1), o * (n_dst - 1) / (image - 1)
    return rule


class AffineMaps(NamedTuple):
    """One resampling's per-axis maps (see Geometry for what scale/offset mean per arithmetic),
    its boundary policy and arithmetic."""

    scale_y: float
    offset_y: float
    scale_x: float
    offset_x: float
    boundary: str
    arithmetic: str = "separable"


PRESETS = {
    "half-pixel": Geometry(_half_pixel, _half_pixel, "clamp", "half-pixel"),
    "align-corners": Geometry(_align_corners, _align_corners, "clamp", "align-corners"),
    "zero-pad": Geometry(_half_pixel, _half_pixel, "zero", "zero-pad"),
    "grid-sample": Geometry(_grid_default, _grid_default, "zero", "grid-sample", "grid-sample"),
    "grid-sample-border": Geometry(_grid_default, _grid_default, "border", "grid-sample-border",
                                   "grid-sample"),
    "pillow": Geometry(_half_pixel, _half_pixel, "clamp", "pillow", "pillow"),
}


def build_tables(maps: AffineMaps, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[AxisTable, AxisTable]:
    """(y table, x table) on the CPU for `maps` (AffineMaps) and the sizes."""
    build = {"separable": axis_table, "grid-sample": grid_sample_table,
             "pillow": lambda s, o, n, d, b: pillow_table(n, d)}.get(maps.arithmetic)
    if build is None:
        raise ValueError(f"geometry arithmetic must be one of {sorted(ARITHMETIC)}, got {maps.arithmetic!r}")
    return (build(maps.scale_y, maps.offset_y, src_hw[0], dst_hw[0], maps.boundary),
            build(maps.scale_x, maps.offset_x, src_hw[1], dst_hw[1], maps.boundary))


@lru_cache(maxsize=256)
def device_tables(maps: AffineMaps, src_hw: tuple[int, int], dst_hw: tuple[int, int],
                  device: torch.device) -> tuple[AxisTable, AxisTable]:
    """(y table, x table) on `device`, built and copied once per (maps, sizes, device): the ops
    call this for every batch. Callers must not modify the returned tensors."""
    ytab, xtab = build_tables(maps, src_hw, dst_hw)
    return ytab.to(device), xtab.to(device)


def _check_axis(n_src: int, n_dst: int, *numbers: float) -> None:
    if n_src < 1 or n_dst < 1:
        raise ValueError(f"axis sizes must be >= 1, got source {n_src}, target {n_dst}")
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"geometry scale/offset must be finite, got {', '.join(map(str, numbers))}")


def _table(i0, i1, w0, w1, arith: int, d0=None, d1=None) -> AxisTable:
    """AxisTable from numpy taps (indices clipped into the map) and weights."""
    w0f, w1f = w0.astype(np.float32), w1.astype(np.float32)
    d0 = w0f.astype(np.float64) if d0 is None else d0
    d1 = w1f.astype(np.float64) if d1 is None else d1
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return AxisTable(t(i0.astype(np.int32)), t(i1.astype(np.int32)), t(w0f), t(w1f), t(d0), t(d1), arith)


def axis_table(scale: float, offset: float, n_src: int, n_dst: int, boundary: str) -> AxisTable:
    """Separable taps for x_src = scale * x_dst + offset, computed in float64, rounded once."""
    _check_axis(n_src, n_dst, scale, offset)
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
    return _table(np.clip(i0, 0, n_src - 1), np.clip(i1, 0, n_src - 1), w0, w1, ARITHMETIC["separable"])


def grid_sample_table(s: float, o: float, n_src: int, n_dst: int, boundary: str) -> AxisTable:
    """grid_sample's taps (bilinear, align_corners=True) for the references' float32 grid
    g = (t - o) * (2 / (s * max(1, n_src - 1))) - 1 (t = 0 .. n_dst-1, every operation in fp32
    with the float64 constants rounded to fp32 first, as torch does), then x = (g + 1) *
    ((n_src - 1) / 2) in fp32, clamped to [0, n_src - 1] for "border"/"clamp"; weights
    w1 = x - floor(x), w0 = 1 - w1 in fp32; a tap outside the map weighs 0."""
    _check_axis(n_src, n_dst, s, o)
    if s == 0:
        raise ValueError("grid-sample geometry: scale must be non-zero (a scale_offset with an image size "
                         "cannot map onto a 1-pixel target: the references' grid divides by zero there)"
                         if n_dst == 1 else "grid-sample geometry: scale must be non-zero")
    f32 = np.float32
    t = np.arange(n_dst, dtype=f32)
    g = (t - f32(o)) * f32(2 / (s * max(1, n_src - 1))) - f32(1)
    x = ((g + f32(1)) * (f32(n_src - 1) / f32(2))).astype(f32)
    if boundary in ("clamp", "border"):
        x = np.minimum(f32(n_src - 1), np.maximum(x, f32(0)))
    x0 = np.floor(x)
    w1 = (x - x0).astype(f32)
    w0 = (f32(1) - w1).astype(f32)
    i0 = x0.astype(np.int64)
    i1 = i0 + 1
    w0 = np.where((i0 >= 0) & (i0 <= n_src - 1), w0, f32(0))
    w1 = np.where((i1 >= 0) & (i1 <= n_src - 1), w1, f32(0))
    return _table(np.clip(i0, 0, n_src - 1), np.clip(i1, 0, n_src - 1), w0, w1, ARITHMETIC["grid-sample"])


def pillow_table(n_src: int, n_dst: int) -> AxisTable:
    """PIL's bilinear coefficients for one axis (ImagingResample, box = the whole image):
    centre = (x + 0.5) * n_src / n_dst; taps j in [int(centre - 0.5), int(centre + 1.5)) ∩
    [0, n_src) weigh max(0, 1 - |j - centre + 0.5|), normalised by their sum, all in float64.
    Enlarging axes have at most two non-zero taps, which is what the kernels blend."""
    _check_axis(n_src, n_dst)
    if n_dst < n_src:
        raise ValueError(f"geometry 'pillow' reproduces PIL's bilinear resize only when enlarging: "
                         f"{n_src} -> {n_dst} pixels would average more than two source pixels "
                         "(use geometry 'half-pixel' for this layer)")
    scale = n_src / n_dst
    centre = (np.arange(n_dst, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(centre - 1.0 + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(centre + 1.0 + 0.5), n_src).astype(np.int64) - xmin
    taps = np.arange(3)[None, :]                          # ksize = 3 when enlarging
    dist = np.abs(((xmin[:, None] + taps) - centre[:, None]) + 0.5)
    w = np.where((taps < xmax[:, None]) & (dist < 1.0), 1.0 - dist, 0.0)
    total = (w[:, 0] + w[:, 1]) + w[:, 2]                 # PIL's sequential float64 sum
    k = w / np.where(total != 0.0, total, 1.0)[:, None]
    first = np.argmax(k > 0, axis=1)                       # the (at most two) non-zero taps
    rows = np.arange(n_dst)
    d0 = k[rows, first]
    d1 = k[rows, np.minimum(first + 1, 2)] * (first < 2)
    i0 = xmin + first
    return _table(i0, np.minimum(i0 + 1, n_src - 1), d0, d1, ARITHMETIC["pillow"], d0, d1)
