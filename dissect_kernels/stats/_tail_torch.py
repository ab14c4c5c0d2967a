"""Device-side (pure torch, all units batched) implementation of TailSketch's update, flush,
prune and merge; it follows csrc/include/dissect_kernels/tail_sketch.h rule for rule, so the
CPU core and this path reach the same summary from the same data order."""
from __future__ import annotations

import torch

MAX_ROUNDS = 64
INF = float("inf")


def _ar(n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _allowed_gap(hi_next, N, T, kt, kl):
    """G at the upper entry of a span: relative to s = N - rmax + 1 in the tail, absolute below."""
    s = N[:, None] - hi_next + 1
    rel = torch.bitwise_right_shift(s, kt[:, None])
    flat = torch.maximum(torch.bitwise_right_shift(T, kt), torch.bitwise_right_shift(N, kl))
    return torch.where(s <= T[:, None], rel, flat[:, None])


def _prune_rounds(V, LO, HI, sz, N, T, kt, kl):
    """Alternating-parity rounds: drop i when rmax[i+1] - rmin[i-1] <= G(i+1), per unit until two
    consecutive rounds drop nothing (or MAX_ROUNDS). Returns compacted (V, LO, HI, sz)."""
    K, L = V.shape
    ar = _ar(L, V.device)
    quiet = torch.zeros(K, dtype=torch.int64, device=V.device)
    for r in range(MAX_ROUNDS):
        if not bool((quiet < 2).any()):
            break
        parity = 1 if r % 2 == 0 else 0
        hi_next = torch.cat([HI[:, 1:], HI[:, -1:]], 1)
        lo_prev = torch.cat([LO[:, :1], LO[:, :-1]], 1)
        cand = (ar >= 1) & (ar + 1 < sz[:, None]) & (ar % 2 == parity) & (quiet < 2)[:, None]
        drop = cand & (hi_next - lo_prev <= _allowed_gap(hi_next, N, T, kt, kl))
        removed = drop.sum(1)
        quiet = torch.where(removed > 0, torch.zeros_like(quiet), quiet + 1)
        keep = ~drop & (ar < sz[:, None])
        ck = keep.long().cumsum(1)
        new_sz = ck[:, -1]
        pos = torch.where(keep, ck - 1, new_sz[:, None] + (~keep).long().cumsum(1) - 1)
        V = torch.empty_like(V).scatter_(1, pos, V)
        LO = torch.empty_like(LO).scatter_(1, pos, LO)
        HI = torch.empty_like(HI).scatter_(1, pos, HI)
        sz = new_sz
    return V, LO, HI, sz


def prune(V, LO, HI, sz, N, coarsen, cfg, M):
    """Prune to fixpoint; while a unit keeps more than M entries, coarsen it by one and repeat."""
    T = torch.bitwise_right_shift(N, cfg["tail_shift"])
    c = coarsen.clone()
    sub = torch.arange(V.shape[0], device=V.device)
    while sub.numel():
        kt = (cfg["k_t"] - c[sub]).clamp(min=0)
        kl = (cfg["k_l"] - c[sub]).clamp(min=0)
        v, lo, hi, s = _prune_rounds(V[sub], LO[sub], HI[sub], sz[sub], N[sub], T[sub], kt, kl)
        V[sub], LO[sub], HI[sub], sz[sub] = v, lo, hi, s
        over = s > M
        sub = sub[over]
        c[sub] += 1
    return V, LO, HI, sz, c


def _tau_floor(st, idx, cfg):
    """Tail-only (k_l == 0): the current tau per unit (tau never moves down), else -inf."""
    t = st["tidx"][idx]
    tau = st["values"][idx].gather(1, t.clamp(min=0)[:, None])[:, 0]
    keep = (t >= 1) & (t < st["size"][idx]) & (cfg["k_l"] == 0)
    return torch.where(keep, tau, torch.full_like(tau, -INF))


def _finish(st, idx, V, LO, HI, sz, N, c, cfg, tau_floor):
    """Write pruned summaries of units idx back into the state (padding +inf / 0) and set tau
    (at least tau_floor)."""
    M = st["values"].shape[1]
    V, LO, HI = V[:, :M], LO[:, :M], HI[:, :M]
    valid = _ar(M, V.device) < sz[:, None]
    V = torch.where(valid, V, torch.full_like(V, INF))
    LO = torch.where(valid, LO, torch.zeros_like(LO))
    HI = torch.where(valid, HI, torch.zeros_like(HI))
    st["values"][idx], st["rmin"][idx], st["rmax"][idx] = V, LO, HI
    st["size"][idx], st["total"][idx], st["coarsen"][idx] = sz, N, c
    st["pend_n"][idx] = 0
    T = torch.bitwise_right_shift(N, cfg["tail_shift"])
    ok = ((N[:, None] - HI) >= T[:, None]) & valid
    t = ok.long().cumprod(1).sum(1) - 1
    # no such entry above the minimum: the first one above it is tau
    above = (V > V[:, :1]) & valid
    above[:, 0] = False
    first = torch.where(above.any(1), above.long().argmax(1), t)
    at_min = V.gather(1, t.clamp(min=0)[:, None])[:, 0] == V[:, 0]
    t = torch.where((t < 1) | at_min, first, t)
    low = (t >= 0) & (V.gather(1, t.clamp(min=0)[:, None])[:, 0] < tau_floor)
    t = torch.where(low, ((V >= tau_floor[:, None]) & valid).long().argmax(1), t)
    st["tidx"][idx] = t


def flush(st, idx, cfg):
    """Fold gap / tie counts and pending values of units idx (LongTensor) into their summaries."""
    busy = (st["counted"][idx] > 0) | (st["pend_n"][idx] > 0)
    idx = idx[busy]
    if idx.numel() == 0:
        return
    tau_floor = _tau_floor(st, idx, cfg)
    M, P = st["values"].shape[1], st["pend"].shape[1]
    dev = st["values"].device
    ar2, arP = _ar(2 * M, dev), _ar(P, dev)
    arM = _ar(M, dev)
    n = st["size"][idx]
    g, q = st["gap"][idx], st["eq"][idx]
    c = g + q
    shift = c.cumsum(1) - c
    valid = arM < n[:, None]
    lo0, hi0, v0 = st["rmin"][idx] + shift, st["rmax"][idx] + shift, st["values"][idx]
    tie = (q > 0) & valid
    ct = tie.long().cumsum(1)
    n2 = n + ct[:, -1]
    pos_e = torch.where(valid, arM + ct - tie.long(), n2[:, None] + arM - n[:, None])
    # run-end slots follow their entry; the other slots fill [n2, 2M) once each (never read)
    pos_t = torch.where(tie, arM + ct, n2[:, None] + (M - n[:, None]) + (arM - ct))
    big = torch.full((idx.numel(), 2 * M), INF, device=dev)
    v = big.scatter(1, pos_e, v0)
    v = v.scatter(1, pos_t, torch.where(tie, v0, torch.full_like(v0, INF)))
    zl = torch.zeros(idx.numel(), 2 * M, dtype=torch.int64, device=dev)
    lo = zl.scatter(1, pos_e, lo0).scatter(1, pos_t, lo0 + q)
    hi = zl.scatter(1, pos_e, hi0).scatter(1, pos_t, hi0 + q)
    v = torch.where(ar2 < n2[:, None], v, torch.full_like(v, INF))
    st["total"][idx] += st["counted"][idx]
    st["counted"][idx] = 0
    st["gap"][idx] = 0
    st["eq"][idx] = 0
    n = n2
    N0, m = st["total"][idx], st["pend_n"][idx]
    M2 = 2 * M
    arM = ar2
    vb = st["pend"][idx]
    vb = torch.where(arP < m[:, None], vb, torch.full_like(vb, INF)).sort(1).values
    valid_o, valid_b = arM < n[:, None], arP < m[:, None]
    cb = torch.minimum(torch.searchsorted(vb, v, right=False), m[:, None])
    ce = torch.minimum(torch.searchsorted(v, vb, right=True), n[:, None])
    jj = arP + 1
    lo_b = torch.where(ce > 0, lo.gather(1, (ce - 1).clamp(min=0)), torch.zeros_like(ce)) + jj
    hi_b = torch.where(ce < n[:, None], hi.gather(1, ce.clamp(max=M2 - 1)) - 1, N0[:, None]) + jj
    pos_o = torch.where(valid_o, arM + cb, arM + P)
    pos_b = torch.where(valid_b, arP + ce, arP + n[:, None])
    K, L = idx.numel(), M2 + P
    V = torch.empty(K, L, dtype=v.dtype, device=dev).scatter_(1, pos_o, v).scatter_(1, pos_b, vb)
    LO = torch.empty(K, L, dtype=lo.dtype, device=dev).scatter_(1, pos_o, lo + cb).scatter_(1, pos_b, lo_b)
    HI = torch.empty(K, L, dtype=hi.dtype, device=dev).scatter_(1, pos_o, hi + cb).scatter_(1, pos_b, hi_b)
    N = N0 + m
    V, LO, HI, sz, c = prune(V, LO, HI, n + m, N, st["coarsen"][idx], cfg, M)
    _finish(st, idx, V, LO, HI, sz, N, c, cfg, tau_floor)


def update(st, x, cfg):
    """Add x [R, U] float32 in blocks of block_rows rows (a unit is flushed first when its pending
    buffer could overflow within the block)."""
    P = st["pend"].shape[1]
    B = cfg["block_rows"]
    for r0 in range(0, x.shape[0], B):
        xt = x[r0:r0 + B].t().contiguous()
        rows = xt.shape[1]
        need = st["pend_n"] > P - rows
        if bool(need.any()):
            flush(st, need.nonzero().squeeze(1), cfg)
        t = st["tidx"]
        has = (t >= 1) & (st["size"] > 0)
        v0 = st["values"][:, 0]
        tau = st["values"].gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        low = has[:, None] & (xt >= v0[:, None]) & (xt < tau[:, None])
        gi = (torch.searchsorted(st["values"], xt, right=True) - 1).clamp(min=0)
        eqm = low & (st["values"].gather(1, gi) == xt)
        st["eq"].scatter_add_(1, gi, eqm.long())
        st["gap"].scatter_add_(1, gi, (low & ~eqm).long())
        pm = ~low
        cp = pm.long().cumsum(1)
        npend = cp[:, -1]
        base = st["pend_n"][:, None]
        pos = torch.where(pm, base + cp - 1, base + npend[:, None] + low.long().cumsum(1) - 1)
        st["pend"].scatter_(1, pos, xt)
        st["pend_n"] += npend
        st["counted"] += low.sum(1)


def merge(a, b, cfg):
    """Combine two flushed states (GK-style rank bounds across the two), prune; returns a new state."""
    M = a["values"].shape[1]
    dev = a["values"].device
    arM = _ar(M, dev)
    vA, loA, hiA, nA, NA = a["values"], a["rmin"], a["rmax"], a["size"], a["total"]
    vB, loB, hiB, nB, NB = b["values"], b["rmin"], b["rmax"], b["size"], b["total"]
    cB = torch.minimum(torch.searchsorted(vB, vA, right=False), nB[:, None])
    cA = torch.minimum(torch.searchsorted(vA, vB, right=True), nA[:, None])
    zero = torch.zeros_like(loA)
    lowA = torch.where(cB > 0, loB.gather(1, (cB - 1).clamp(min=0)), zero)
    upA = torch.where(cB < nB[:, None], hiB.gather(1, cB.clamp(max=M - 1)) - 1, NB[:, None])
    lowB = torch.where(cA > 0, loA.gather(1, (cA - 1).clamp(min=0)), zero)
    upB = torch.where(cA < nA[:, None], hiA.gather(1, cA.clamp(max=M - 1)) - 1, NA[:, None])
    posA = torch.where(arM < nA[:, None], arM + cB, arM + M)
    posB = torch.where(arM < nB[:, None], arM + cA, arM + nA[:, None])
    U, L = vA.shape[0], 2 * M
    V = torch.empty(U, L, dtype=vA.dtype, device=dev).scatter_(1, posA, vA).scatter_(1, posB, vB)
    LO = torch.empty(U, L, dtype=loA.dtype, device=dev).scatter_(1, posA, loA + lowA).scatter_(1, posB, loB + lowB)
    HI = torch.empty(U, L, dtype=hiA.dtype, device=dev).scatter_(1, posA, hiA + upA).scatter_(1, posB, hiB + upB)
    N = NA + NB
    V, LO, HI, sz, c = prune(V, LO, HI, nA + nB, N, torch.maximum(a["coarsen"], b["coarsen"]), cfg, M)
    out = {k: t.clone() for k, t in a.items()}
    out["gap"].zero_()
    out["eq"].zero_()
    out["counted"].zero_()
    every = torch.arange(U, device=dev)
    _finish(out, every, V, LO, HI, sz, N, c, cfg,
            torch.maximum(_tau_floor(a, every, cfg), _tau_floor(b, every, cfg)))
    return out
