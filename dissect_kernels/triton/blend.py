"""Triton versions of csrc/include/dissect_kernels/blend.h: the blend of one bilinear sample in
each arithmetic mode (geometry.ARITHMETIC), evaluated exactly as the oracle and the C++/CUDA
kernels do. Launch with enable_fp_fusion=False. The grid-sample chain needs a correctly rounded
fp32 fma; Triton's interpreter evaluates tl.fma as a*b + c with two roundings, so fma32 builds
it from float64 arithmetic instead, the same way on the interpreter and on a GPU."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fma32(a, b, c):
    """fl32(a*b + c) for fp32 a, b, c: a*b is exact in float64, the float64 sum is rounded to
    odd (TwoSum error, then the odd neighbour), and that rounds correctly to fp32."""
    p = a.to(tl.float64) * b.to(tl.float64)
    c64 = c.to(tl.float64)
    s = p + c64
    bp = s - c64
    e = (p - bp) + (c64 - (s - bp))
    bits = s.to(tl.int64, bitcast=True)
    fix = (e != 0.0) & ((bits & 1) == 0)
    step = tl.where((e > 0.0) == (s > 0.0), 1, -1).to(tl.int64)
    return tl.where(fix, bits + step, bits).to(tl.float64, bitcast=True).to(tl.float32)


@triton.jit
def blend(a00, a01, a10, a11, wy0, wy1, wx0, wx1, dy0, dy1, dx0, dx1, ARITH: tl.constexpr):
    """The fp32 sample from taps a_ij = source[y_i, x_j], fp32 weights w and float64 weights d:
    ARITH 0 separable fp32, 1 grid_sample's fused corner chain, 2 pillow's float64 passes."""
    if ARITH == 1:
        v = a00 * (wy0 * wx0)
        v = fma32(a01, wy0 * wx1, v)
        v = fma32(a10, wy1 * wx0, v)
        v = fma32(a11, wy1 * wx1, v)
    elif ARITH == 2:
        r0 = (a00.to(tl.float64) * dx0 + a01.to(tl.float64) * dx1).to(tl.float32)
        r1 = (a10.to(tl.float64) * dx0 + a11.to(tl.float64) * dx1).to(tl.float32)
        v = (r0.to(tl.float64) * dy0 + r1.to(tl.float64) * dy1).to(tl.float32)
    else:
        r0 = wx0 * a00 + wx1 * a01
        r1 = wx0 * a10 + wx1 * a11
        v = wy0 * r0 + wy1 * r1
    return v
