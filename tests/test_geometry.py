"""Upsampling geometries against independent implementations: F.interpolate (half-pixel,
align-corners), F.grid_sample (zero-pad, affine maps), scipy RectBivariateSpline (NetDissect's
receptive-field centres); and tally counts against F.interpolate + strict `>`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import RectBivariateSpline

import dissect_kernels as dk
from dissect_kernels import _native
from dissect_kernels.geometry import Geometry, axis_table
from dissect_kernels.reference.tally import upsample

needs_cpu = pytest.mark.skipif(_native.native("_C") is None, reason="dissect_kernels._C not built")
sizes = dict(h=st.integers(1, 9), w=st.integers(1, 9), H=st.integers(1, 40), W=st.integers(1, 40),
             seed=st.integers(0, 2**31 - 1))


def rand_maps(seed, B, U, h, w):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, U, h, w, generator=g) * 3 + 1


def up(acts, geometry, H, W):
    return upsample(acts, *Geometry.named(geometry).tables(acts.shape[-2:], (H, W)))


def close(a, b):
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-5 * scale)


@settings(max_examples=60, deadline=None)
@given(**sizes)
def test_half_pixel_and_align_corners_match_interpolate(h, w, H, W, seed):
    acts = rand_maps(seed, 2, 3, h, w)
    close(up(acts, "half-pixel", H, W), F.interpolate(acts, (H, W), mode="bilinear", align_corners=False))
    close(up(acts, "align-corners", H, W), F.interpolate(acts, (H, W), mode="bilinear", align_corners=True))


def grid_for(geometry, h, w, H, W):
    """grid_sample grid (align_corners=False) placing target pixel (y, x) at the geometry's
    source coordinate x_src = scale * x + offset."""
    (sy, oy), (sx, ox) = geometry.rule_y(h, H), geometry.rule_x(w, W)
    ys = sy * torch.arange(H, dtype=torch.float64) + oy
    xs = sx * torch.arange(W, dtype=torch.float64) + ox
    gy = (2 * ys + 1) / h - 1
    gx = (2 * xs + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    return grid[None].float()


@settings(max_examples=60, deadline=None)
@given(**sizes)
def test_zero_pad_matches_grid_sample_on_pixel_centres(h, w, H, W, seed):
    """davidbau/dissect: grid_sample(zeros) at target pixel centres ((x+0.5)/W*2-1)."""
    acts = rand_maps(seed, 1, 4, h, w)
    ys = (torch.arange(H) + 0.5) / H * 2 - 1
    xs = (torch.arange(W) + 0.5) / W * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    want = F.grid_sample(acts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    close(up(acts, "zero-pad", H, W), want)


@settings(max_examples=60, deadline=None)
@given(**sizes, sy=st.floats(-2.0, 3.0), oy=st.floats(-6.0, 6.0), sx=st.floats(-2.0, 3.0),
       ox=st.floats(-6.0, 6.0), boundary=st.sampled_from(["clamp", "border", "zero"]))
def test_affine_matches_grid_sample(h, w, H, W, seed, sy, oy, sx, ox, boundary):
    """Any affine map: zero = grid_sample(zeros); clamp/border = grid_sample(border)."""
    geometry = Geometry.affine(sy, oy, sx, ox, boundary)
    acts = rand_maps(seed, 1, 3, h, w)
    want = F.grid_sample(acts.double(), grid_for(geometry, h, w, H, W).double(), mode="bilinear",
                         padding_mode="zeros" if boundary == "zero" else "border", align_corners=False)
    close(upsample(acts, *geometry.tables((h, w), (H, W))), want)


@settings(max_examples=50, deadline=None)
@given(h=st.integers(2, 9), w=st.integers(2, 9), H=st.integers(1, 60), W=st.integers(1, 60),
       offset=st.integers(-20, 5), size=st.integers(1, 60), stride_steps=st.integers(1, 10),
       ratio=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_receptive_field_matches_rect_bivariate_spline(h, w, H, W, offset, size, stride_steps, ratio, seed):
    """NetDissect upsampleL: linear spline through receptive-field centres, clamped beyond."""
    stride = stride_steps * ratio
    acts = rand_maps(seed, 1, 2, h, w)
    start, step = (size // 2 + offset) // ratio, stride // ratio
    cy, cx = start + step * np.arange(h), start + step * np.arange(w)
    want = np.stack([RectBivariateSpline(cy, cx, acts[0, u].double().numpy(), kx=1, ky=1)(
        np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)) for u in range(2)])
    got = up(acts, Geometry.receptive_field(offset, size, stride, ratio), H, W)
    close(got[0], torch.from_numpy(want))


@settings(max_examples=80, deadline=None)
@given(n_src=st.integers(1, 12), n_dst=st.integers(1, 50), scale=st.floats(-3.0, 3.0),
       offset=st.floats(-8.0, 8.0), boundary=st.sampled_from(["clamp", "border", "zero"]))
def test_table_invariants(n_src, n_dst, scale, offset, boundary):
    """What the CPU kernel's skip bound relies on: weights >= 0, w0 + w1 <= 1 (+ fp32 rounding),
    == 1 for clamp-like tables; indices in range."""
    t = axis_table(scale, offset, n_src, n_dst, boundary)
    s = t.w0.double() + t.w1.double()
    assert (t.w0 >= 0).all() and (t.w1 >= 0).all()
    assert (s <= 1 + 1e-6).all()
    if boundary != "zero":
        assert ((s - 1).abs() <= 1e-6).all()
    for i in (t.i0, t.i1):
        assert i.dtype == torch.int32 and (i >= 0).all() and (i < n_src).all()


def test_geometry_bad_input():
    with pytest.raises(ValueError, match="unknown geometry"):
        Geometry.named("nearest")
    with pytest.raises(ValueError, match="stride"):
        Geometry.receptive_field(0, 3, 1, 2)
    with pytest.raises(ValueError, match="finite"):
        axis_table(math.nan, 0.0, 3, 5, "clamp")
    with pytest.raises(ValueError, match="sizes"):
        axis_table(1.0, 0.0, 0, 5, "clamp")


# ---------------------------------------------------- tally == F.interpolate + strict `>` counts
def thresholds_in_gaps(values: torch.Tensor, gen, margin: float) -> torch.Tensor:
    """Per unit, a threshold halfway inside a gap of >= 2*margin between sorted values near a
    random rank, so fp32 differences between implementations cannot flip any comparison."""
    out = []
    for row in values:
        v = row.double().sort().values
        v = torch.cat([v.new_tensor([v[0] - 1]), v, v.new_tensor([v[-1] + 1])])
        gaps = torch.nonzero(v[1:] - v[:-1] > 2 * margin).flatten()
        pick = gaps[torch.randint(0, len(gaps), (1,), generator=gen)]
        out.append(float((v[pick] + v[pick + 1]) / 2))
    return torch.tensor(out)


@needs_cpu
@settings(max_examples=30, deadline=None)
@given(**sizes, B=st.integers(1, 3), U=st.integers(1, 9), C=st.integers(2, 30),
       align=st.booleans())
def test_tally_counts_match_interpolate(h, w, H, W, seed, B, U, C, align):
    gen = torch.Generator().manual_seed(seed)
    acts = rand_maps(seed, B, U, h, w)
    upf = F.interpolate(acts, (H, W), mode="bilinear", align_corners=align)
    t = thresholds_in_gaps(upf.transpose(0, 1).reshape(U, -1), gen, 1e-4)
    labels = torch.randint(0, C, (B, H, W), generator=gen)
    mask = upf > t[None, :, None, None]
    b, u, y, x = mask.nonzero(as_tuple=True)
    want = torch.bincount(u * C + labels[b, y, x], minlength=U * C).reshape(U, C)
    want[:, 0] = 0
    r = dk.tally(acts, t, labels, num_concepts=C, geometry="align-corners" if align else "half-pixel",
                 backend="cpu")
    assert torch.equal(r.intersection, want)
    assert torch.equal(r.active, mask.sum((2, 3)))
