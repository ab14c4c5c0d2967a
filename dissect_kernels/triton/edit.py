"""Triton kernel for edit: one pass over x, alpha and value read through their broadcast
(stride-0) strides, fp32 arithmetic in the oracle's order, no FMA contraction."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dissect_kernels.triton import launch

BLOCK = 1024


@triton.jit
def _edit_kernel(x_ptr, a_ptr, v_ptr, o_ptr, n, D1, D2, D3,
                 xs0, xs1, xs2, xs3, as0, as1, as2, as3,
                 vs0, vs1, vs2, vs3, os0, os1, os2, os3, OUT_BF16: tl.constexpr,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    i3 = offs % D3
    rest = offs // D3
    i2 = rest % D2
    rest = rest // D2
    i1 = rest % D1
    i0 = rest // D1
    x = tl.load(x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2 + i3 * xs3, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + i0 * as0 + i1 * as1 + i2 * as2 + i3 * as3, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i0 * vs0 + i1 * vs1 + i2 * vs2 + i3 * vs3, mask=mask, other=0.0).to(tl.float32)
    keep = x * (1.0 - a)
    put = v * a
    y = keep + put
    if OUT_BF16:
        # Round to nearest even by hand: the interpreter's fp32 -> bf16 cast truncates.
        raw = y.to(tl.uint32, bitcast=True)
        bits = (raw + (((raw >> 16) & 1) + 0x7FFF)) >> 16
        bits = tl.where(y != y, (raw >> 16) | 0x40, bits)  # NaN: keep sign/payload, quiet
        out = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = y.to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + i0 * os0 + i1 * os1 + i2 * os2 + i3 * os3, out, mask=mask)


def edit_into(x: torch.Tensor, alpha: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> None:
    """Write edit(x, alpha, value) into `out` (may be x itself). All four are 4-D views of the
    same shape (alpha/value expanded with stride 0); out must not self-overlap."""
    n = x.numel()
    if n == 0:
        return
    _, D1, D2, D3 = x.shape
    grid = (triton.cdiv(n, BLOCK),)
    launch(_edit_kernel, grid, x, alpha, value, out, n, D1, D2, D3,
                       *x.stride(), *alpha.stride(), *value.stride(), *out.stride(),
                       OUT_BF16=out.dtype == torch.bfloat16, BLOCK=BLOCK, enable_fp_fusion=False)
