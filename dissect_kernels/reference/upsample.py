"""Oracle for upsample: the tally's bilinear resampling written as plain tensor indexing, in
each arithmetic mode's exact order of operations (geometry.py): "separable" fp32, the
"grid-sample" fused chain (fma emulated exactly in float64), "pillow" float64 passes."""
from __future__ import annotations

import torch

from dissect_kernels.geometry import ARITHMETIC, AxisTable


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 fma(a, b, c) = fl32(a*b + c) for fp32 tensors: a*b is exact in
    float64, the float64 sum is rounded to odd (TwoSum error, then the odd neighbour), and
    rounding that to fp32 is correct because float64 has more than 2*24 + 2 bits."""
    p = a.double() * b.double()
    c = c.double()
    s = p + c
    bp = s - c
    e = (p - bp) + (c - (s - bp))
    bits = s.view(torch.int64)
    fix = (e != 0) & ((bits & 1) == 0)
    step = torch.where((e > 0) == (s > 0), 1, -1)
    return torch.where(fix, bits + step, bits).view(torch.float64).float()


def upsample(acts: torch.Tensor, ytab: AxisTable, xtab: AxisTable) -> torch.Tensor:
    """[B, U, h, w] -> float32 [B, U, H, W] in the tables' arithmetic (tally.h's formulas)."""
    if ytab.arith != xtab.arith:
        raise ValueError(f"y and x tables use different arithmetic ({ytab.arith}, {xtab.arith})")
    a = acts.float()
    yi0, yi1, xi0, xi1 = ytab.i0.long(), ytab.i1.long(), xtab.i0.long(), xtab.i1.long()
    if ytab.arith == ARITHMETIC["grid-sample"]:
        rows0, rows1 = a[:, :, yi0, :], a[:, :, yi1, :]
        a00, a01, a10, a11 = rows0[..., xi0], rows0[..., xi1], rows1[..., xi0], rows1[..., xi1]
        w = lambda wy, wx: wy[:, None] * wx[None, :]  # noqa: E731  fp32 corner weights
        v = a00 * w(ytab.w0, xtab.w0)
        v = fma32(a01, w(ytab.w0, xtab.w1).expand_as(v), v)
        v = fma32(a10, w(ytab.w1, xtab.w0).expand_as(v), v)
        return fma32(a11, w(ytab.w1, xtab.w1).expand_as(v), v)
    if ytab.arith == ARITHMETIC["pillow"]:
        def horizontal(rows):
            rows = rows.double()
            return (rows[..., xi0] * xtab.d0 + rows[..., xi1] * xtab.d1).float()
        r0, r1 = horizontal(a[:, :, yi0, :]), horizontal(a[:, :, yi1, :])
        return (r0.double() * ytab.d0[:, None] + r1.double() * ytab.d1[:, None]).float()

    def horizontal(rows: torch.Tensor) -> torch.Tensor:
        return rows[..., xi0] * xtab.w0 + rows[..., xi1] * xtab.w1

    r0 = horizontal(a[:, :, yi0, :])
    r1 = horizontal(a[:, :, yi1, :])
    return r0 * ytab.w0[:, None] + r1 * ytab.w1[:, None]


def upsample_into(acts: torch.Tensor, ytab: AxisTable, xtab: AxisTable, out: torch.Tensor) -> None:
    """Write upsample(acts) into `out` (float32 [B, U, H, W])."""
    out.copy_(upsample(acts, ytab, xtab))
