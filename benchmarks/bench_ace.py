"""Single-unit ACE ranking of a generator layer: one batched run (rank_units_by_ace, all U
ablations and insertions through dk.intervene) vs a loop of ace() per unit. pytest-benchmark
or a script (`PYTHONPATH=. python benchmarks/bench_ace.py [--device cuda] [--samples N]`)."""
from __future__ import annotations

import argparse
import time

import torch

from dissect_kernels.ace import ace, rank_units_by_ace
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator

CONCEPT, LAYER = "tree", "layer3"


def loop(g, s, samples: int, batch: int, device=None) -> torch.Tensor:
    """Baseline: ace() of each unit in turn (each reruns the whole generator twice per batch)."""
    return torch.tensor([ace(g, LAYER, [u], s, CONCEPT, num_samples=samples, batch_size=batch,
                             value=2.0, device=device).ace for u in range(24)])


def batched(g, s, samples: int, batch: int, device=None, chunk_size=None) -> torch.Tensor:
    return rank_units_by_ace(g, LAYER, s, CONCEPT, num_samples=samples, batch_size=batch, value=2.0,
                             device=device, chunk_size=chunk_size).ace


def test_bench_ace_loop(benchmark):
    g, s = load_default_generator(), default_segmenter()
    benchmark.pedantic(loop, args=(g, s, 8, 8), rounds=2, iterations=1)


def test_bench_ace_batched(benchmark):
    g, s = load_default_generator(), default_segmenter()
    benchmark.pedantic(batched, args=(g, s, 8, 8), rounds=2, iterations=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    g, s = load_default_generator(dev), default_segmenter()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a = loop(g, s, args.samples, args.batch, dev)
    b = batched(g, s, args.samples, args.batch, dev)
    print("max |loop - batched| ACE:", float((a - b).abs().max()))
    for name, fn in (("loop", loop), ("batched", batched)):
        times = []
        for _ in range(args.rounds):
            sync()
            t = time.perf_counter()
            fn(g, s, args.samples, args.batch, dev)
            sync()
            times.append(time.perf_counter() - t)
        print(f"{name}: best {min(times):.3f} s of {args.rounds} ({args.samples} samples, 24 units)")


if __name__ == "__main__":
    main()
