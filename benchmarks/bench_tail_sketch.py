"""TailSketch benchmarks (script mode; not run in CI): rank error + throughput at N = 1e8 values
per unit, and update throughput on [2M, 512] float32 against the references' KLL (R = 6144).

    PYTHONPATH=. python benchmarks/bench_tail_sketch.py full [N U chunk tail_only]  # 1e8 x 4 units
    PYTHONPATH=. python benchmarks/bench_tail_sketch.py wide [rows units kll_rows]

Floor: the update reads each value once (4 B); at ~10 GB/s that is ~2.5 G values/s, far above
what a per-value compare + (for the ~half non-zero bulk values) a 13-level binary search costs
(~10-25 instructions per value), so the update is compute-bound; CPU-seconds are reported next to
wall time because the 2-core machine is shared (wall time depends on the other tenants' load).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from dissect_kernels.reference.quantile import KLLSketch
from dissect_kernels.stats.quantile import QuantileSketch
from dissect_kernels.stats.tail_sketch import TailSketch

QS = [0.9, 0.99, 0.995, 0.999]


def gen(rows, units, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.relu(torch.randn(rows, units, generator=g)) * torch.randn(rows, units, generator=g).exp()).float()


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rank_error(sorted_u: np.ndarray, v: float, q: float) -> float:
    N = sorted_u.size
    lt, le = np.searchsorted(sorted_u, v, "left"), np.searchsorted(sorted_u, v, "right")
    return max(0.0, lt - q * N, q * N - le) / N


def full(N=100_000_000, U=4, chunk=1_000_000, tail_only=0):
    """1e8 values per unit streamed in chunks; the exact answer from the concatenated data.
    tail_only=1: the TailSketch that QuantileSketch(mode="sketch", min_quantile=0.99) builds."""
    sk = TailSketch(U, min_quantile=0.99 if tail_only else 0.0)
    kll = KLLSketch(U, resolution=6144)
    keep = np.empty((U, N), dtype=np.float32)
    wall = cpu = 0.0
    for i in range(0, N, chunk):
        x = gen(chunk, U, seed=i // chunk)
        keep[:, i:i + chunk] = x.t().numpy()
        w, c = timed(lambda: sk.update(x))
        wall, cpu = wall + w, cpu + c
        kll.add(x.numpy())
    est, bnd = sk.quantile(QS), sk.rank_error_bound(QS)
    kq = kll.quantiles(QS)
    print(f"N={N} U={U}: sketch update {N * U / wall / 1e6:.1f} M values/s wall, "
          f"{N * U / cpu / 1e6:.1f} M/s per CPU-second; summary sizes {sk.st['size'].tolist()}, "
          f"coarsen {sk.st['coarsen'].tolist()}")
    for u in range(U):
        keep[u].sort()
        for j, q in enumerate(QS):
            print(f"  unit {u} q={q}: sketch err {rank_error(keep[u], float(est[u, j]), q):.2e} "
                  f"(bound {float(bnd[u, j]):.2e})  KLL R=6144 err {rank_error(keep[u], float(kq[u, j]), q):.2e}")


def wide(rows=2_000_000, U=512, kll_rows=2_000_000, batch=16384):
    """Update throughput on [rows, U] streamed in batches (generation not timed), in one run:
    TailSketch with bulk entries (min_quantile=0, what GAN dissection's low levels need),
    QuantileSketch(mode="sketch") with its default min_quantile=0.99 (tail-only TailSketch), and
    the netdissect-style KLL reference (reference/quantile.py, R=6144) on the first kll_rows rows."""
    np_kll = KLLSketch(U, resolution=6144)
    runs = {"TailSketch(min_quantile=0)": TailSketch(U),
            'QuantileSketch(mode="sketch") (min_quantile=0.99: tail-only)': QuantileSketch(U, mode="sketch"),
            "KLL R=6144": type("K", (), {"update": staticmethod(lambda x: np_kll.add(x.numpy()))})}
    ts = {name: [0.0, 0.0] for name in runs}  # wall, cpu
    for i in range(0, rows, batch):
        x = gen(min(batch, rows - i), U, seed=i)
        for name, sk in runs.items():
            if name.startswith("KLL") and i >= kll_rows:
                continue
            w, c = timed(lambda: sk.update(x))
            ts[name][0] += w
            ts[name][1] += c
    kr = min(rows, kll_rows)
    rate = {name: ((kr if name.startswith("KLL") else rows) * U / w, (kr if name.startswith("KLL") else rows) * U / c)
            for name, (w, c) in ts.items()}
    kw, kc = rate["KLL R=6144"]
    for name, (w, c) in rate.items():
        print(f"[{rows if not name.startswith('KLL') else kr}, {U}] {name}: {w / 1e6:.1f} M/s wall, "
              f"{c / 1e6:.1f} M/s per CPU-s; vs KLL: wall {w / kw:.1f}x, CPU {c / kc:.1f}x")
    for name, sk in runs.items():
        st = getattr(getattr(sk, "_sketch", sk), "st", None)
        if st is not None:
            print(f"  {name}: summary sizes max {int(st['size'].max())}, coarsen max {int(st['coarsen'].max())}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "wide"
    if mode == "full":
        full(*(int(a) for a in sys.argv[2:]))
    else:
        wide(*(int(a) for a in sys.argv[2:]))
