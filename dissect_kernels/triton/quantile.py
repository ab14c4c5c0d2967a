"""Triton exact-tail filter for QuantileSketch(mode="exact"): a bandwidth-bound filter kernel
(append values above the unit's cut with one atomic per unit per tile) and a per-unit
compaction kernel (radix select for the target-th largest, then in-place compaction).
State stays on the device; the host only loops over sample chunks (no .item() syncs)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dissect_kernels.triton import launch

BLOCK_I = 64      # samples per filter tile
BLOCK_U = 32      # units per filter tile
BLOCK_C = 1024    # buffer entries per compaction step


@triton.jit
def _filter_kernel(x_ptr, i_start, i_end, S, sg, su, ss, U,
                   buf_ptr, cap, kept_ptr, cut_ptr, nan_ptr,
                   BLOCK_I: tl.constexpr, BLOCK_U: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I) + i_start   # int64
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    im = i < i_end
    um = u < U
    g = i // S
    s = i % S
    m = im[:, None] & um[None, :]
    off = g[:, None] * sg + s[:, None] * ss + u[None, :].to(tl.int64) * su
    v = tl.load(x_ptr + off, mask=m, other=float("-inf")).to(tl.float32)
    cut = tl.load(cut_ptr + u, mask=um, other=float("inf"))
    nan_n = tl.sum(((v != v) & m).to(tl.int64), axis=0)
    tl.atomic_add(nan_ptr + u, nan_n, mask=um & (nan_n > 0))
    keep = (v > cut[None, :]) & m                   # NaN compares false: never kept
    v = tl.where(v == 0.0, 0.0, v)                  # -0.0 -> +0.0, as the other backends
    k = keep.to(tl.int64)
    local = tl.cumsum(k, axis=0) - k                # exclusive prefix per unit column
    total = tl.sum(k, axis=0)
    base = tl.atomic_add(kept_ptr + u, total, mask=um & (total > 0))
    pos = base[None, :] + local
    # The host sizes chunks so pos < cap always holds; the mask only guards memory.
    tl.store(buf_ptr + u[None, :].to(tl.int64) * cap + pos, v, mask=keep & (pos < cap))


@triton.jit
def _compact_kernel(buf_ptr, kept_ptr, cut_ptr, limit, target, CAP: tl.constexpr,
                    BLOCK: tl.constexpr):
    # One program per unit; only units with kept > limit do any work. Loop bounds are
    # compile-time (CAP; the interpreter cannot loop to a runtime value); masks stop at kept.
    u = tl.program_id(0)
    n = tl.sum(tl.load(kept_ptr + u + tl.arange(0, 1)), axis=0)   # a 0-d scalar (interpreter too)
    row = buf_ptr + u.to(tl.int64) * CAP
    if n > limit:
        # Radix select, 8 bits per pass from the top, on order-preserving unsigned keys
        # (as int64 in [0, 2^32)): `prefix` ends as the key of the target-th largest value.
        bins = tl.arange(0, 256)
        prefix = tl.zeros((), tl.int64)
        remaining = tl.zeros((), tl.int64) + target
        for p in tl.static_range(4):
            shift = 24 - 8 * p
            hist = tl.zeros((256,), tl.int32)
            for start in range(0, CAP, BLOCK):
                idx = start + tl.arange(0, BLOCK)
                vals = tl.load(row + idx, mask=idx < n, other=0.0)
                b = vals.to(tl.int32, bitcast=True)   # no -0.0 is ever stored
                key = tl.where(b >= 0, b, b ^ 0x7FFFFFFF).to(tl.int64) + 2147483648
                match = (idx < n) & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
                hist += tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=match)
            h = hist.to(tl.int64)
            ge = tl.sum(h, axis=0) - (tl.cumsum(h, axis=0) - h)      # #matched with digit >= d
            d = tl.max(tl.where(ge >= remaining, bins, -1), axis=0)
            remaining -= tl.sum(tl.where(bins > d, h, 0), axis=0)
            prefix += d.to(tl.int64) << shift
        tkey = (prefix - 2147483648).to(tl.int32)
        tval = tl.where(tkey >= 0, tkey, tkey ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        # Keep values strictly above t in place (each store index is <= its load index and
        # below the next block's loads), then top up with copies of t to exactly `target`.
        # Dropping the other copies of t is exact: the buffer holds >= target values >= t.
        w = tl.zeros((), tl.int64)
        for start in range(0, CAP, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            vals = tl.load(row + idx, mask=idx < n, other=float("-inf"))
            b = vals.to(tl.int32, bitcast=True)
            keep = (tl.where(b >= 0, b, b ^ 0x7FFFFFFF) > tkey) & (idx < n)
            kk = keep.to(tl.int64)
            pos = w + tl.cumsum(kk, axis=0) - kk
            tl.store(row + pos, vals, mask=keep)
            w += tl.sum(kk, axis=0)
        for start in range(0, CAP, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            tl.store(row + idx, tl.zeros((BLOCK,), tl.float32) + tval,
                     mask=(idx >= w) & (idx < target))
        tl.store(kept_ptr + u + tl.arange(0, 1), tl.zeros((1,), tl.int64) + target)
        tl.store(cut_ptr + u + tl.arange(0, 1), tl.zeros((1,), tl.float32) + tval)


def quantile_filter(x3: torch.Tensor, st, target: int) -> None:
    """Fold x3 [G, U, S] into the TailState `st`, chunk by chunk: before each chunk of
    `capacity - target` samples, units that could overflow are compacted to `target`."""
    G, U, S = x3.shape
    cap = st.capacity
    chunk = cap - target
    total = G * S
    sg, su, ss = x3.stride()
    for i0 in range(0, total, chunk):
        i1 = min(total, i0 + chunk)
        launch(_compact_kernel, (U,), st.buffer, st.kept, st.cut, cap - (i1 - i0), target, CAP=cap,
               BLOCK=min(BLOCK_C, triton.next_power_of_2(cap)))
        grid = (triton.cdiv(i1 - i0, BLOCK_I), triton.cdiv(U, BLOCK_U))
        launch(_filter_kernel, grid, x3, i0, i1, S, sg, su, ss, U, st.buffer, cap, st.kept, st.cut,
               st.nan_count, BLOCK_I=BLOCK_I, BLOCK_U=BLOCK_U)
