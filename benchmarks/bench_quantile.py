"""CPU throughput of QuantileSketch(mode="exact") vs the netdissect-style KLL sketch (r=3072,
R=6144) on ReLU-lognormal [N, U] float32 fed in batches, against the memory-bandwidth floor.

Script: `PYTHONPATH=. python benchmarks/bench_quantile.py [--rows 2097152] [--units 512]
[--batch 16384] [--ref-fraction 0.05]`. pytest-benchmark: `pytest benchmarks/bench_quantile.py
-m slow` (small sizes). Batches are generated outside the timed region; the reference sketch
is timed on the first `ref-fraction` of the rows and extrapolated linearly (its per-row cost
is flat once its levels exist)."""
from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

from dissect_kernels import QuantileSketch
from dissect_kernels.reference.quantile import KLLSketch


def batch(rows: int, units: int, seed: int) -> torch.Tensor:
    """ReLU(lognormal - 1.5): ~70% zeros, heavy right tail (like post-ReLU activations)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, units, generator=g).exp_() - 1.5).relu_()


def read_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Best-of read bandwidth (bytes/s) of a torch sum over a buffer larger than cache."""
    x = torch.ones(nbytes // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def time_exact(rows: int, units: int, bs: int, backend: str = "cpu", q: float = 0.99):
    sk = QuantileSketch(units, mode="exact", min_quantile=q, expected_count=rows, backend=backend)
    spent = cpu = 0.0
    for i, r0 in enumerate(range(0, rows, bs)):
        x = batch(min(bs, rows - r0), units, i)
        t, c = time.perf_counter(), time.process_time()
        sk.update(x)
        spent += time.perf_counter() - t
        cpu += time.process_time() - c
    t = time.perf_counter()
    thr = sk.quantile(q)
    readout = time.perf_counter() - t
    return (spent, cpu), readout, sk, thr


def time_reference(rows: int, units: int, bs: int, resolution: int = 6144):
    sk = KLLSketch(units, resolution=resolution, seed=1)
    spent = cpu = 0.0
    for i, r0 in enumerate(range(0, rows, bs)):
        x = batch(min(bs, rows - r0), units, i).numpy()
        t, c = time.perf_counter(), time.process_time()
        sk.add(x)
        spent += time.perf_counter() - t
        cpu += time.process_time() - c
    return (spent, cpu), sk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16384)
    ap.add_argument("--ref-fraction", type=float, default=0.05)
    a = ap.parse_args()
    nbytes = a.rows * a.units * 4
    bw = read_bandwidth()
    print(f"threads={torch.get_num_threads()} read bandwidth {bw / 1e9:.2f} GB/s; "
          f"[{a.rows}, {a.units}] float32 = {nbytes / 1e9:.2f} GB -> floor {nbytes / bw:.3f} s")
    (ex, ex_cpu), readout, sk, thr = time_exact(a.rows, a.units, a.batch)
    print(f"exact (cpu): wall {ex:.3f} s ({nbytes / ex / 1e9:.2f} GB/s, {ex / (nbytes / bw):.2f}x floor), "
          f"CPU {ex_cpu:.3f} s; readout {readout * 1e3:.1f} ms; state {sk.impl._state.buffer.numel() * 4 / 1e6:.0f} MB")
    ref_rows = max(a.batch, int(a.rows * a.ref_fraction) // a.batch * a.batch)
    (rt, rt_cpu), ref = time_reference(ref_rows, a.units, a.batch)
    scale = a.rows / ref_rows
    print(f"reference KLL R=6144 on {ref_rows} rows ({ref_rows / a.rows:.1%}): wall {rt:.3f} s, "
          f"CPU {rt_cpu:.3f} s -> extrapolated wall {rt * scale:.1f} s, CPU {rt_cpu * scale:.1f} s; "
          f"exact speed-up: wall {rt * scale / ex:.0f}x, CPU-time {rt_cpu * scale / ex_cpu:.0f}x")
    # sanity: the reference's estimate on its prefix vs the exact prefix threshold
    ex_prefix = QuantileSketch(a.units, mode="exact", expected_count=ref_rows, backend="cpu")
    for i, r0 in enumerate(range(0, ref_rows, a.batch)):
        ex_prefix.update(batch(min(a.batch, ref_rows - r0), a.units, i))
    rel = np.abs(ref.quantiles(0.99) / ex_prefix.quantile(0.99).numpy() - 1)
    print(f"reference vs exact threshold on the prefix: median rel. error {np.median(rel):.2e}, "
          f"max {rel.max():.2e}")


@pytest.mark.slow
def test_bench_exact_cpu(benchmark):
    rows, units = 131072, 512
    xs = [batch(16384, units, i) for i in range(rows // 16384)]

    def run():
        sk = QuantileSketch(units, mode="exact", expected_count=rows, backend="cpu")
        for x in xs:
            sk.update(x)
        return sk.quantile(0.99)

    benchmark(run)


@pytest.mark.slow
def test_bench_reference_kll(benchmark):
    rows, units = 16384, 512
    xs = [batch(4096, units, i).numpy() for i in range(rows // 4096)]

    def run():
        sk = KLLSketch(units, resolution=6144, seed=1)
        for x in xs:
            sk.add(x)
        return sk.quantiles(0.99)

    benchmark(run)


if __name__ == "__main__":
    main()
