"""Triton tally: one program per (image, block of units) walks the output pixels in 2-D tiles,
interpolating exactly as tally.h in the tables' arithmetic mode (triton/blend.py; launched with
enable_fp_fusion=False). Two things
keep the work and the atomics near the CUDA kernel's: a tile whose source rectangle cannot
lift any unit of the block over its threshold is skipped (the C++ kernel's bound, per tile),
and counter updates are aggregated per (unit, concept) over the tile before the atomic add.
Map/label extents are constexpr (one compile per shape): loop bounds that are runtime scalars
break Triton 3.6's interpreter under NumPy >= 2.4 (int() of a 1-element array)."""
from __future__ import annotations

import triton
import triton.language as tl

from dissect_kernels.geometry import AxisTable
from dissect_kernels.triton import launch
from dissect_kernels.triton.blend import blend

# fp fusion off: a*b + c stays two roundings, as in the oracle and the C++ kernels.
LAUNCH_OPTIONS = dict(num_warps=8, enable_fp_fusion=False)


@triton.jit
def _tally_kernel(acts, s0, s1, s2, s3, thr, lab, img, yi0, yi1, yw0, yw1, yd0, yd1,
                  xi0, xi1, xw0, xw1, xd0, xd1, cat, inter, active, amax, touched, stats,
                  U, C, K, w: tl.constexpr, hw: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                  HW: tl.constexpr, L: tl.constexpr, M: tl.constexpr,
                  PER_LAYER: tl.constexpr, HAS_TOUCHED: tl.constexpr, COUNT_STATS: tl.constexpr,
                  BLOCK_U: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                  BLOCK_S: tl.constexpr, RECT: tl.constexpr, MAX_GROUPS: tl.constexpr,
                  ARITH: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U).to(tl.int64)
    um = u < U
    ubase = acts + b * s0 + u * s1  # [BLOCK_U] pointers to each map
    t = tl.load(thr + u, mask=um, other=float("inf"))
    mx, mn = _map_extremes(ubase, um, s2, s3, w, hw, BLOCK_U, BLOCK_S)
    convex = _tables_convex(yw0, yw1, xw0, xw1, H, W, BLOCK_S)
    # Dead units: a bound on every upsampled value (weights >= 0, pair sums <= 1; see
    # csrc/cuda/tally.cu); padding units keep -inf + inf out of it.
    mx_u = tl.where(um, mx, 0.0)
    slack = 4e-6 * tl.maximum(tl.abs(mx_u), tl.abs(tl.where(um, mn, 0.0))) + 1e-36
    live = um & (tl.where(convex, mx_u, tl.maximum(mx_u, 0.0)) + slack > t)
    count = tl.zeros([BLOCK_U], tl.int64)
    q = tl.arange(0, TILE_H * TILE_W)
    if tl.sum(live.to(tl.int32), axis=0) > 0:
        for ty0 in range(0, H, TILE_H):
            for tx0 in range(0, W, TILE_W):
                y = ty0 + q // TILE_W
                x = tx0 + q % TILE_W
                pm = (y < H) & (x < W)
                iy0 = tl.load(yi0 + y, mask=pm, other=0)
                iy1 = tl.load(yi1 + y, mask=pm, other=0)
                ix0 = tl.load(xi0 + x, mask=pm, other=0)
                ix1 = tl.load(xi1 + x, mask=pm, other=0)
                tile_live = _tile_live(ubase, live, t, convex, slack, iy0, iy1, ix0, ix1, pm, s2, s3, RECT)
                n_live = tl.sum(tile_live.to(tl.int32), axis=0)
                if COUNT_STATS:
                    tl.atomic_add(stats + 0, 1, sem="relaxed")
                    tl.atomic_add(stats + 1, (n_live == 0).to(tl.int64), sem="relaxed")
                if n_live > 0:
                    m2 = tile_live[:, None] & pm[None, :]
                    v = _interpolate(ubase, m2, s2, s3, y, x, pm, iy0, iy1, ix0, ix1, yw0, yw1, xw0, xw1,
                                     yd0, yd1, xd0, xd1, ARITH)
                    act = (v > t[:, None]) & m2
                    n_act = tl.sum(act.to(tl.int64), axis=1)
                    count += n_act
                    if tl.sum(n_act, axis=0) > 0:
                        _count_labels(act, y * W + x, u, b, lab + b * L * HW, img + b * M, cat, inter,
                                      touched, stats, U, C, K, HW, L, M, PER_LAYER, HAS_TOUCHED,
                                      COUNT_STATS, BLOCK_U, TILE_H * TILE_W, MAX_GROUPS)
    tl.store(active + b * U + u, count, mask=um)
    tl.store(amax + b * U + u, mx, mask=um)
    _count_image_labels(count, um, u, b, img + b * M, cat, inter, touched, U, C, K, M, PER_LAYER,
                        HAS_TOUCHED, BLOCK_U)


@triton.jit
def _map_extremes(ubase, um, s2, s3, w: tl.constexpr, hw: tl.constexpr, BLOCK_U: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """Max and min of each source map: the `max` output and the dead-unit bound."""
    mx = tl.full([BLOCK_U], float("-inf"), tl.float32)
    mn = tl.full([BLOCK_U], float("inf"), tl.float32)
    for j0 in range(0, hw, BLOCK_S):
        j = j0 + tl.arange(0, BLOCK_S)
        jm = um[:, None] & (j < hw)[None, :]
        off = (j // w).to(tl.int64) * s2 + (j % w).to(tl.int64) * s3
        v = tl.load(ubase[:, None] + off[None, :], mask=jm, other=0.0).to(tl.float32)
        mx = tl.maximum(mx, tl.max(tl.where(jm, v, float("-inf")), axis=1))
        mn = tl.minimum(mn, tl.min(tl.where(jm, v, float("inf")), axis=1))
    return mx, mn


@triton.jit
def _tables_convex(yw0, yw1, xw0, xw1, H: tl.constexpr, W: tl.constexpr, BLOCK_S: tl.constexpr):
    """Whether every weight pair of both tables sums to 1 (up to rounding): clamped geometries."""
    pair_min = tl.full([BLOCK_S], 2.0, tl.float32)
    for i0 in range(0, H, BLOCK_S):
        i = i0 + tl.arange(0, BLOCK_S)
        s = tl.load(yw0 + i, mask=i < H, other=1.0) + tl.load(yw1 + i, mask=i < H, other=1.0)
        pair_min = tl.minimum(pair_min, s)
    for i0 in range(0, W, BLOCK_S):
        i = i0 + tl.arange(0, BLOCK_S)
        s = tl.load(xw0 + i, mask=i < W, other=1.0) + tl.load(xw1 + i, mask=i < W, other=1.0)
        pair_min = tl.minimum(pair_min, s)
    return tl.min(pair_min, axis=0) >= 1.0 - 1e-6


@triton.jit
def _tile_live(ubase, live, t, convex, slack, iy0, iy1, ix0, ix1, pm, s2, s3, RECT: tl.constexpr):
    """Units that can have an active pixel in this output tile. Every value of the tile blends
    source taps from the rectangle [r_lo, r_hi] x [c_lo, c_hi], so the map bound holds with the
    rectangle's max in place of the map's (same slack: |taps| <= the map's max |value|); a
    rectangle wider than RECT x RECT is not bounded (the unit stays live)."""
    r_lo = tl.min(tl.where(pm, tl.minimum(iy0, iy1), 2147483647), axis=0)
    r_hi = tl.max(tl.where(pm, tl.maximum(iy0, iy1), -1), axis=0)
    c_lo = tl.min(tl.where(pm, tl.minimum(ix0, ix1), 2147483647), axis=0)
    c_hi = tl.max(tl.where(pm, tl.maximum(ix0, ix1), -1), axis=0)
    fits = (r_hi - r_lo < RECT) & (c_hi - c_lo < RECT)
    j = tl.arange(0, RECT * RECT)
    rr = r_lo + j // RECT
    cc = c_lo + j % RECT
    rm = live[:, None] & ((rr <= r_hi) & (cc <= c_hi) & fits)[None, :]
    rect = tl.load(ubase[:, None] + (rr.to(tl.int64) * s2 + cc.to(tl.int64) * s3)[None, :],
                   mask=rm, other=0.0).to(tl.float32)
    tmax = tl.max(tl.where(rm, rect, float("-inf")), axis=1)
    return live & ((tl.where(convex, tmax, tl.maximum(tmax, 0.0)) + slack > t) | ~fits)


@triton.jit
def _interpolate(ubase, m2, s2, s3, y, x, pm, iy0, iy1, ix0, ix1, yw0, yw1, xw0, xw1,
                 yd0, yd1, xd0, xd1, ARITH: tl.constexpr):
    """[units, pixels] upsampled values exactly as tally.h (blend.py, in the ARITH mode)."""
    wy0 = tl.load(yw0 + y, mask=pm, other=0.0)
    wy1 = tl.load(yw1 + y, mask=pm, other=0.0)
    wx0 = tl.load(xw0 + x, mask=pm, other=0.0)
    wx1 = tl.load(xw1 + x, mask=pm, other=0.0)
    dy0 = tl.load(yd0 + y, mask=pm, other=0.0)
    dy1 = tl.load(yd1 + y, mask=pm, other=0.0)
    dx0 = tl.load(xd0 + x, mask=pm, other=0.0)
    dx1 = tl.load(xd1 + x, mask=pm, other=0.0)
    row0 = ubase[:, None] + (iy0.to(tl.int64) * s2)[None, :]
    row1 = ubase[:, None] + (iy1.to(tl.int64) * s2)[None, :]
    col0 = (ix0.to(tl.int64) * s3)[None, :]
    col1 = (ix1.to(tl.int64) * s3)[None, :]
    a00 = tl.load(row0 + col0, mask=m2, other=0.0).to(tl.float32)
    a01 = tl.load(row0 + col1, mask=m2, other=0.0).to(tl.float32)
    a10 = tl.load(row1 + col0, mask=m2, other=0.0).to(tl.float32)
    a11 = tl.load(row1 + col1, mask=m2, other=0.0).to(tl.float32)
    return blend(a00, a01, a10, a11, wy0[None, :], wy1[None, :], wx0[None, :], wx1[None, :],
                 dy0[None, :], dy1[None, :], dx0[None, :], dx1[None, :], ARITH)


@triton.jit
def _count_labels(act, p, u, b, lab_b, img_b, cat, inter, touched, stats, U, C, K, HW: tl.constexpr,
                  L: tl.constexpr, M: tl.constexpr, PER_LAYER: tl.constexpr, HAS_TOUCHED: tl.constexpr,
                  COUNT_STATS: tl.constexpr, BLOCK_U: tl.constexpr, TILE: tl.constexpr,
                  MAX_GROUPS: tl.constexpr):
    """Add the tile's active pixels to intersection[u, c] for the concepts of every label layer
    (once per pixel across layers and image labels unless PER_LAYER)."""
    pix = tl.max(act.to(tl.int32), axis=0) > 0  # [TILE]: any unit active here
    for layer in range(0, L):
        c = tl.load(lab_b + layer * HW + p, mask=pix, other=0)
        ok = pix & (c > 0)
        if not PER_LAYER:
            for l2 in range(0, layer):
                ok = ok & (tl.load(lab_b + l2 * HW + p, mask=pix, other=0) != c)
            for m in range(0, M):
                ok = ok & (tl.load(img_b + m) != c)
        if COUNT_STATS:
            tl.atomic_add(stats + 2, tl.sum(tl.sum((act & ok[None, :]).to(tl.int64), axis=1), axis=0),
                          sem="relaxed")
        _emit(act, ok, c, u, b, cat, inter, touched, stats, U, C, K, HAS_TOUCHED, COUNT_STATS,
              BLOCK_U, TILE, MAX_GROUPS)


@triton.jit
def _emit(act, todo, c, u, b, cat, inter, touched, stats, U, C, K, HAS_TOUCHED: tl.constexpr,
          COUNT_STATS: tl.constexpr, BLOCK_U: tl.constexpr, TILE: tl.constexpr, MAX_GROUPS: tl.constexpr):
    """Aggregated counter updates: one atomic per (unit, concept) of the tile for up to
    MAX_GROUPS concepts (labels come in blobs, so a tile holds few), one per unit-pixel for any
    rest (with `touched`, whose per-element stores would spill registers, the loop runs on
    instead). Only the per-pixel mask `todo` of concepts still to emit is carried."""
    n_todo = tl.sum(todo.to(tl.int32), axis=0)
    groups = tl.full([], 0, tl.int32)
    while (n_todo > 0) & ((groups < MAX_GROUPS) | HAS_TOUCHED):
        cmax = tl.max(tl.where(todo, c, -1), axis=0)
        n = tl.sum((act & (todo & (c == cmax))[None, :]).to(tl.int64), axis=1)
        tl.atomic_add(inter + u * C + cmax, n, mask=n > 0, sem="relaxed")
        if HAS_TOUCHED:
            tl.store(touched + (b * U + u) * K + tl.load(cat + cmax), tl.full([BLOCK_U], 1, tl.uint8), mask=n > 0)
        if COUNT_STATS:
            tl.atomic_add(stats + 3, tl.sum((n > 0).to(tl.int64), axis=0), sem="relaxed")
        todo = todo & (c != cmax)
        n_todo = tl.sum(todo.to(tl.int32), axis=0)
        groups += 1
    if n_todo > 0:
        left = act & todo[None, :]
        tl.atomic_add(inter + u[:, None] * C + c[None, :], left.to(tl.int64), mask=left, sem="relaxed")
        if COUNT_STATS:
            tl.atomic_add(stats + 3, tl.sum(tl.sum(left.to(tl.int64), axis=1), axis=0), sem="relaxed")


@triton.jit
def _count_image_labels(count, um, u, b, img_b, cat, inter, touched, U, C, K, M: tl.constexpr,
                        PER_LAYER: tl.constexpr, HAS_TOUCHED: tl.constexpr, BLOCK_U: tl.constexpr):
    """Image-level labels cover every pixel: each counts every active pixel of the unit (once
    per distinct id unless PER_LAYER)."""
    for m in range(0, M):
        c = tl.load(img_b + m)
        ok = c > 0
        if not PER_LAYER:
            for m2 in range(0, m):
                ok = ok & (tl.load(img_b + m2) != c)
        hit = um & (count > 0) & ok
        tl.atomic_add(inter + u * C + c, count, mask=hit, sem="relaxed")
        if HAS_TOUCHED:
            tl.store(touched + (b * U + u) * K + tl.load(cat + c), tl.full([BLOCK_U], 1, tl.uint8), mask=hit)


def tile_shape(H: int, W: int, block_p: int) -> tuple[int, int]:
    """(TILE_H, TILE_W) with TILE_H * TILE_W = block_p: rows of up to 32 pixels (4 x 32 at the
    default 128 keeps every variant free of register spills on sm_90 with 8 warps; 8 x 16
    does not), narrower for narrow maps."""
    tw = min(32, triton.next_power_of_2(W), block_p)
    return max(1, block_p // tw), tw


def tally_into(acts, thresholds, labels, image_labels, ytab: AxisTable, xtab: AxisTable,
               num_concepts, per_layer, category_of, num_categories, out, *,
               block_u: int | None = None, block_p: int | None = None, stats=None,
               max_groups: int = 8) -> None:
    """Same contract as reference.tally.tally_into: intersection +=, active/max/touched
    written. labels int32 contiguous, thresholds fp32, tables on acts' device.
    stats (int64 [4] on the device, added to): output tiles visited, tiles skipped by the
    tile bound, label hits (unit-pixel-concept updates), atomics issued for them."""
    B, U, h, w = acts.shape
    _, L, H, W = labels.shape
    M = 0 if image_labels is None else image_labels.shape[1]
    has_touched = out.touched is not None
    if has_touched:
        out.touched.zero_()  # stream-ordered before the kernel, which only sets ones
    bu = block_u or min(16, triton.next_power_of_2(U))  # 16 x (4 x 32), 8 warps: no spills on sm_90
    bp = block_p or min(128, max(16, triton.next_power_of_2(H * W)))
    th, tw = tile_shape(H, W, bp)
    bs = min(64, max(16, triton.next_power_of_2(max(h * w, H, W))))
    grid = (B, triton.cdiv(U, bu))
    launch(_tally_kernel, grid,
           acts, *acts.stride(), thresholds, labels,
           image_labels if image_labels is not None else labels,
           *ytab.tensors, *xtab.tensors,
           category_of if category_of is not None else labels,
           out.intersection, out.active, out.max,
           out.touched if has_touched else out.active,
           stats if stats is not None else out.active,
           U, num_concepts, num_categories or 1, w, h * w, H, W, H * W, L, M,
           PER_LAYER=bool(per_layer), HAS_TOUCHED=has_touched, COUNT_STATS=stats is not None,
           BLOCK_U=bu, TILE_H=th, TILE_W=tw, BLOCK_S=bs, RECT=8, MAX_GROUPS=max_groups,
           ARITH=ytab.arith,
           **LAUNCH_OPTIONS,
    )
