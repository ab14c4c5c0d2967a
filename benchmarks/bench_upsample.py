"""Benchmark dk.upsample (cpu backend) against F.interpolate(bilinear) and the reference
oracle, same data, same run. Script mode prints a table; pytest-benchmark mode times the
exemplar-mask case.

    PYTHONPATH=. python benchmarks/bench_upsample.py          # table (one thread, then all)
    PYTHONPATH=. python -m pytest benchmarks/bench_upsample.py

Floor: the output is the only large stream: 4*N*H*W bytes written (the 7x7 sources are
~0.4 % of that). It is measured in the same run as `out.fill_(0)` on the same pre-touched
buffer: a memset of the output, the least any op producing it can cost. A freshly allocated
output also pays first-touch page faults (the kernel zeroes every page): "fresh" rows show
that cost, which out= (a reused buffer) avoids.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import dissect_kernels as dk
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.upsample import upsample as oracle

CASES = {  # name: (maps N, source side, target side)
    "exemplar masks: 512 maps 7x7 -> 112x112": (512, 7, 112),
    "Broden batch: 8 x 512 maps 7x7 -> 112x112": (4096, 7, 112),
}


def median_s(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rows_for(n: int, h: int, H: int) -> list[tuple[str, float]]:
    """(implementation, median seconds) for N maps h x h -> H x H, fp32, in [N, 1, h, h]."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(n, 1, h, h, generator=g)
    out = torch.empty(n, 1, H, H)
    interp_out = torch.empty(n, 1, H, H)
    dk.upsample(acts, H, out=out)
    if not torch.equal(out, oracle(acts, *Geometry.named("half-pixel").tables((h, h), (H, H)))):
        raise AssertionError("dk.upsample differs from the oracle")
    rows = [
        ("floor: out.fill_(0), same buffer", median_s(lambda: out.fill_(0))),
        ("dk.upsample(cpu), out= reused", median_s(lambda: dk.upsample(acts, H, out=out, backend="cpu"))),
        ("dk.upsample(cpu), fresh output", median_s(lambda: dk.upsample(acts, H, backend="cpu"))),
        ("F.interpolate(bilinear), out= reused", median_s(lambda: torch._C._nn.upsample_bilinear2d(
            acts, (H, H), False, None, None, out=interp_out))),
        ("F.interpolate(bilinear), fresh output",
         median_s(lambda: F.interpolate(acts, (H, H), mode="bilinear", align_corners=False))),
    ]
    if n <= 512:
        rows.append(("reference oracle (dk.upsample backend='reference')",
                     median_s(lambda: dk.upsample(acts, H, backend="reference"), reps=3)))
    return rows


def table(threads: int) -> str:
    torch.set_num_threads(threads)
    lines = []
    for name, (n, h, H) in CASES.items():
        rows = rows_for(n, h, H)
        floor, mine = rows[0][1], rows[1][1]
        gb = 4 * n * H * H / 1e9
        lines += [f"**{name}**, {threads} thread(s): output {gb * 1e3:.0f} MB; floor {floor * 1e3:.2f} ms "
                  f"({gb / floor:.1f} GB/s write)", "",
                  "| implementation | time (ms) | x floor | dk.upsample (out=) speed-up |", "|---|---|---|---|"]
        lines += [f"| {impl} | {t * 1e3:.2f} | {t / floor:.2f} | {t / mine:.1f}x |" for impl, t in rows]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------ pytest-benchmark
def _exemplar_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, 1, 7, 7, generator=g), torch.empty(512, 1, 112, 112)


def test_bench_upsample_exemplars_reused_out(benchmark):
    acts, out = _exemplar_data()
    benchmark(dk.upsample, acts, 112, out=out, backend="cpu")


def test_bench_interpolate_exemplars(benchmark):
    acts, _ = _exemplar_data()
    benchmark(F.interpolate, acts, (112, 112), mode="bilinear", align_corners=False)


def main() -> int:
    n = os.cpu_count() or 1
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} ({n} cores)\n")
    for threads in sorted({1, n}):
        print(table(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
