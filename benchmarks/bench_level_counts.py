"""Exact counts above GD's 100 candidate levels per unit (LevelCounts: one bucketize + bincount)
vs the obvious alternative, dk.tally on the units replicated 100x with the levels as thresholds.
pytest-benchmark or a script (`PYTHONPATH=. python benchmarks/bench_level_counts.py`)."""
from __future__ import annotations

import time

import torch

from dissect_kernels import tally
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.tally import upsample
from dissect_kernels.stats.level_counts import LevelCounts

B, U, h, H, C, NL = 16, 24, 16, 64, 5, 100
CATEGORY_OF = torch.tensor([0, 0, 0, 0, 1])


def data():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(B, U, h, h, generator=g))
    labels = torch.randint(0, C, (B, 1, H, H), generator=g)
    levels = torch.sort(torch.rand(U, NL, generator=g) * 2, dim=1).values
    return acts, labels, levels


def level_counts(acts, labels, levels):
    ytab, xtab = Geometry.named("half-pixel").tables((h, h), (H, H))
    lc = LevelCounts(levels, C, CATEGORY_OF)
    lc.update(upsample(acts, ytab, xtab), labels)
    return lc


def replicated_tally(acts, labels, levels):
    return tally(acts.repeat_interleave(NL, 1), levels.reshape(-1), labels, num_concepts=C)


def test_bench_level_counts(benchmark):
    benchmark.pedantic(level_counts, args=data(), rounds=3, iterations=1)


def test_bench_replicated_tally(benchmark):
    benchmark.pedantic(replicated_tally, args=data(), rounds=2, iterations=1)


if __name__ == "__main__":
    args = data()
    lc, res = level_counts(*args), replicated_tally(*args)
    assert torch.equal(lc.above_label.reshape(U * NL, C)[:, 1:], res.intersection[:, 1:])
    for name, fn, rounds in (("LevelCounts", level_counts, 3), ("tally x100 units", replicated_tally, 2)):
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        print(f"{name}: best {min(times) * 1e3:.1f} ms of {rounds}")
