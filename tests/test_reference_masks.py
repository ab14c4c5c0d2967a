"""Each preset's upsampling against the reference library it reproduces, bit for bit: every
backend's dk.upsample equals torch.nn.functional.grid_sample on davidbau/dissect's float32 grid
(zeros; gandissect's border), and PIL.Image.resize(BILINEAR) of a mode-'F' image (NetDissect-
Lite's imresize), on random sizes (non-square, non-integer factors, 1-pixel maps); thresholded
masks are then identical too, for the strict `>` of every reference."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import dissect_kernels as dk
from dissect_kernels import _native

CPU_BACKENDS = ["reference", "triton"] + (["cpu"] if _native.native("_C") is not None else [])
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nd_grid(data_hw, target_hw, scale_offset=None, image_size=None):
    """davidbau/dissect's upsample_grid, written from its description: per axis a float32 grid
    g = (t - o) * (2 / (s * max(1, n - 1))) - 1 for target pixel t, in (x, y) order."""
    axes = []
    for axis, (n, T) in enumerate(zip(data_hw, target_hw)):
        if scale_offset is None:
            s = float(T) / n
            o = 0.5 * s - 0.5
        else:
            s, o = scale_offset[axis]
            if image_size is not None:
                s, o = s * (T - 1) / (image_size[axis] - 1), o * (T - 1) / (image_size[axis] - 1)
        axes.append((torch.arange(T, dtype=torch.float) - o) * (2 / (s * max(1, n - 1))) - 1)
    ty, tx = axes
    H, W = target_hw
    return torch.stack((tx[None, :].expand(H, W), ty[:, None].expand(H, W)), 2)[None]


def maps(seed: int, B: int, U: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, U, h, w, generator=g) * 10.0 ** torch.randint(-3, 4, (1,), generator=g).item()
    x[torch.rand(B, U, h, w, generator=g) < 0.2] = 0.0   # ReLU-like zeros and exact ties
    return x


def masks_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """Values bit for bit, and the strict-`>` mask at thresholds taken from the values."""
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {got.numel()} values differ"
    for t in want.flatten()[:: max(1, want.numel() // 7)]:
        assert torch.equal(got > t, want > t)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=25, **SETTINGS)
@given(h=st.integers(1, 9), w=st.integers(1, 9), H=st.integers(1, 57), W=st.integers(1, 57),
       padding=st.sampled_from(["zeros", "border"]), seed=st.integers(0, 2**31 - 1))
def test_grid_sample_presets_equal_grid_sample(backend, h, w, H, W, padding, seed):
    if backend == "triton":
        H, W = min(H, 9), min(W, 9)     # the interpreter is slow
    acts = maps(seed, 2, 3, h, w)
    want = F.grid_sample(acts, nd_grid((h, w), (H, W)).expand(2, H, W, 2), mode="bilinear",
                         padding_mode=padding, align_corners=True)
    geometry = "grid-sample" if padding == "zeros" else "grid-sample-border"
    masks_equal(dk.upsample(acts, (H, W), geometry=geometry, backend=backend), want)
    if padding == "zeros":   # the "dissect" convention picks it
        masks_equal(dk.upsample(acts, (H, W), convention="dissect", backend=backend), want)


@settings(max_examples=20, **SETTINGS)
@given(h=st.integers(1, 13), w=st.integers(1, 13), H=st.integers(8, 120), W=st.integers(8, 120),
       s=st.tuples(st.sampled_from([8, 16, 32]), st.sampled_from([8, 16, 32])),
       o=st.tuples(st.floats(-2.0, 40.0), st.floats(-2.0, 40.0)), image=st.integers(64, 260),
       seed=st.integers(0, 2**31 - 1))
def test_grid_sample_conv_mapping_equals_grid_sample(h, w, H, W, s, o, image, seed):
    """davidbau/dissect's AlexNet path: scale_offset from the conv list, rescaled to the target."""
    acts = maps(seed, 1, 4, h, w)
    so = ((float(s[0]), o[0]), (float(s[1]), o[1]))
    want = F.grid_sample(acts, nd_grid((h, w), (H, W), so, (image, image)), mode="bilinear",
                         padding_mode="zeros", align_corners=True)
    got = dk.upsample(acts, (H, W), geometry=dk.Geometry.grid_sample(so, (image, image)))
    masks_equal(got, want)


def pil_resize(a: np.ndarray, H: int, W: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # Image.fromarray(mode=...)
        img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.array(img.resize((W, H), Image.BILINEAR))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=25, **SETTINGS)
@given(h=st.integers(1, 11), w=st.integers(1, 11), dh=st.integers(0, 60), dw=st.integers(0, 60),
       seed=st.integers(0, 2**31 - 1))
def test_pillow_preset_equals_pil_resize(backend, h, w, dh, dw, seed):
    H, W = h + dh, w + dw
    if backend == "triton":
        H, W = min(H, max(h, 17)), min(W, max(w, 17))
    acts = maps(seed, 1, 3, h, w)
    want = torch.stack([torch.from_numpy(pil_resize(acts[0, u].numpy(), H, W)) for u in range(3)])[None]
    masks_equal(dk.upsample(acts, (H, W), convention="netdissect-lite", backend=backend), want)


def test_pillow_refuses_to_shrink():
    with pytest.raises(ValueError, match="only when enlarging.*half-pixel"):
        dk.upsample(torch.rand(1, 1, 8, 8), (4, 8), geometry="pillow")


@pytest.mark.parametrize("geometry,arith", [("grid-sample", 1), ("pillow", 2), ("half-pixel", 0)])
def test_tables_carry_their_arithmetic(geometry, arith):
    ytab, xtab = dk.Geometry.named(geometry).tables((3, 5), (7, 11))
    assert ytab.arith == xtab.arith == arith
    assert ytab.d0.dtype == torch.float64 and len(ytab.spec()) == 7
