"""Batched intervention vs the one-set-at-a-time loop: 512 single-unit ablations of a late
conv layer (512 units) of a small CNN on the same batch, CPU. pytest-benchmark or a script."""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dissect_kernels.hooks import Edit, Trace
from dissect_kernels.intervene import intervene

LAYER = "6"  # last conv (512 units at 4x4); after it: ReLU, global pool, classifier


def make_model(classes: int = 100) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(256, 512, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)).eval()


def inputs(batch: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def loop(model, x, units: int) -> torch.Tensor:
    """Baseline: one forward pass per unit set, editing through a Trace."""
    out = []
    eye = torch.eye(units)
    for u in range(units):
        with Trace(model, LAYER, edit=Edit(eye[u], 0.0), retain_output=False):
            out.append(model(x))
    return torch.stack(out)


def batched(model, x, units: int, chunk_size: int | None = 64) -> torch.Tensor:
    return intervene(model, LAYER, torch.arange(units), x, chunk_size=chunk_size)


def test_bench_loop(benchmark):
    model, x = make_model(), inputs()
    with torch.no_grad():
        benchmark.pedantic(loop, args=(model, x, 512), rounds=3, iterations=1)


def test_bench_batched(benchmark):
    model, x = make_model(), inputs()
    with torch.no_grad():
        got = benchmark.pedantic(batched, args=(model, x, 512), rounds=5, iterations=1)
        assert torch.equal(got, loop(model, x, 512))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = make_model(), inputs(args.batch)
    with torch.no_grad():
        want = loop(model, x, args.units)
        for chunk in (None, 256, 64, 16):
            assert torch.equal(batched(model, x, args.units, chunk), want)
        t_full = _best(lambda: model(x), 20)
        t_prefix = _best(lambda: model[:7](x), 20)
        t_loop = _best(lambda: loop(model, x, args.units), args.repeats)
        print(f"threads={torch.get_num_threads()} batch={args.batch} units={args.units} "
              f"layer output {tuple(model[:7](x).shape)}")
        print(f"one forward {t_full * 1e3:.2f} ms, prefix to layer {t_prefix * 1e3:.2f} ms")
        print(f"loop: {t_loop * 1e3:.1f} ms")
        for chunk in (None, 256, 64, 16):
            t = _best(lambda: batched(model, x, args.units, chunk), args.repeats)
            print(f"batched chunk_size={chunk}: {t * 1e3:.1f} ms  speed-up x{t_loop / t:.1f}")


if __name__ == "__main__":
    main()
