"""Triton upsample: one program per (map, block of output pixels); the four taps of each pixel
are gathered from the tiny source map, blended in the tables' arithmetic mode exactly as
upsample.h (triton/blend.py; launched with enable_fp_fusion=False) and written as fp32."""
from __future__ import annotations

import triton
import triton.language as tl

from dissect_kernels.geometry import AxisTable
from dissect_kernels.triton import launch
from dissect_kernels.triton.blend import blend

BLOCK = 1024


@triton.jit
def _upsample_kernel(acts, s0, s1, s2, s3, yi0, yi1, yw0, yw1, yd0, yd1, xi0, xi1, xw0, xw1, xd0, xd1,
                     out, U, W, HW, BLOCK: tl.constexpr, ARITH: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)       # map index b * U + u
    p = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pm = p < HW
    y = p // W
    x = p % W
    base = acts + (m // U) * s0 + (m % U) * s1
    row0 = base + tl.load(yi0 + y, mask=pm, other=0).to(tl.int64) * s2
    row1 = base + tl.load(yi1 + y, mask=pm, other=0).to(tl.int64) * s2
    col0 = tl.load(xi0 + x, mask=pm, other=0).to(tl.int64) * s3
    col1 = tl.load(xi1 + x, mask=pm, other=0).to(tl.int64) * s3
    wx0 = tl.load(xw0 + x, mask=pm, other=0.0)
    wx1 = tl.load(xw1 + x, mask=pm, other=0.0)
    a00 = tl.load(row0 + col0, mask=pm, other=0.0).to(tl.float32)
    a01 = tl.load(row0 + col1, mask=pm, other=0.0).to(tl.float32)
    a10 = tl.load(row1 + col0, mask=pm, other=0.0).to(tl.float32)
    a11 = tl.load(row1 + col1, mask=pm, other=0.0).to(tl.float32)
    v = blend(a00, a01, a10, a11, tl.load(yw0 + y, mask=pm, other=0.0), tl.load(yw1 + y, mask=pm, other=0.0),
              wx0, wx1, tl.load(yd0 + y, mask=pm, other=0.0), tl.load(yd1 + y, mask=pm, other=0.0),
              tl.load(xd0 + x, mask=pm, other=0.0), tl.load(xd1 + x, mask=pm, other=0.0), ARITH)
    tl.store(out + m * HW + p, v, mask=pm)


def upsample_into(acts, ytab: AxisTable, xtab: AxisTable, out) -> None:
    """Write the upsampled acts [B, U, h, w] (any strides, fp32/16/bf16) into out, a
    contiguous fp32 [B, U, H, W] on the same device as the tables."""
    B, U = acts.shape[:2]
    H, W = out.shape[2:]
    if B * U == 0 or H * W == 0:
        return
    grid = (B * U, triton.cdiv(H * W, BLOCK))
    launch(_upsample_kernel, grid, acts, *acts.stride(), *ytab.tensors, *xtab.tensors, out, U, W, H * W,
           BLOCK=BLOCK, ARITH=ytab.arith, num_warps=4, enable_fp_fusion=False)
