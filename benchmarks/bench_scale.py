"""Peak memory of a whole dissection against the number of units U and of concepts C.

Each (U, C) runs in a fresh process: a layer of U units (a fixed random 1x1 projection of the
image, pooled to 7x7) dissected on N random labelled images (labels: blobs of C concepts at
56x56, 4 categories), exact quantiles, CPU backend. Reported: peak RSS (ru_maxrss), the RSS
after set-up (torch, model, data), and the accumulators' largest state (tensor bytes of what the
engine checkpoints, from the run's own accounting). The state is O(U*C) (IoU counts: an int64
[U, C] intersection matrix) + O(U * tail) (exact quantiles: (1 - q) * N * h * w values per unit,
plus slack) + O(U * k) (top-k) + O(U * k * h * w) (exemplar source maps); never O(N) except
the exact quantile tail.

    PYTHONPATH=. python benchmarks/bench_scale.py                 # U in 1k, 4k, 16k x C in 200, 2000
    PYTHONPATH=. python benchmarks/bench_scale.py --record        # append the table to RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

N_IMAGES, BATCH = 64, 16


class Projection(nn.Module):
    """Images [B, 3, 56, 56] -> `units` maps [B, U, 7, 7]: pooled, then a seeded 1x1 projection."""

    def __init__(self, units: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pool = nn.AvgPool2d(8)
        self.units = nn.Conv2d(3, units, 1)
        with torch.no_grad():
            self.units.weight.copy_(torch.randn(units, 3, 1, 1, generator=g))
            self.units.bias.copy_(torch.randn(units, generator=g))

    def forward(self, x):
        return self.units(self.pool(x))


def dataset(C: int):
    from dissect_kernels.data import TensorSegmentationDataset
    g = torch.Generator().manual_seed(1)
    blobs = torch.randint(0, C, (N_IMAGES, 1, 8, 8), generator=g)
    labels = blobs.repeat_interleave(7, 2).repeat_interleave(7, 3)            # [N, 1, 56, 56]
    images = torch.rand(N_IMAGES, 3, 56, 56, generator=g)
    category_of = torch.arange(C) % 4
    return TensorSegmentationDataset(images, labels, num_concepts=C, category_of=category_of)


def child(U: int, C: int) -> dict:
    """One measurement (run in a fresh process)."""
    import dissect_kernels as dk
    from dissect_kernels.engine.checkpoint import Checkpointer
    model, data = Projection(U).eval(), dataset(C)
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state = [0]

    def record(self, progress, tensors):       # the engine's checkpointed state, measured
        state[0] = max(state[0], sum(t.numel() * t.element_size() for t in tensors.values()))

    Checkpointer.save = record
    t0 = time.perf_counter()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        dk.dissect(model, "units", data, batch_size=BATCH, progress=False, backend="cpu",
                   quantile_mode="exact", out_dir=tmp, report=False, checkpoint_interval=0)
    return {"U": U, "C": C, "seconds": round(time.perf_counter() - t0, 1),
            "setup_mib": round(setup), "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "state_mib": round(state[0] / 2 ** 20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--concepts", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    for U in args.units:
        for C in args.concepts:
            out = subprocess.run([sys.executable, __file__, "--child", str(U), str(C)], capture_output=True,
                                 text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = ["| U | C | state (MiB) | peak RSS (MiB) | RSS after set-up (MiB) | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['U']:,} | {r['C']:,} | {r['state_mib']} | {r['peak_mib']} | {r['setup_mib']} | {r['seconds']} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.record:
        head = (f"\n## memory vs units and concepts\n\n`benchmarks/bench_scale.py`, {time.strftime('%Y-%m-%d')}, "
                f"{N_IMAGES} images of random labels, batch {BATCH}, 7x7 maps upsampled to 56x56, exact "
                "quantiles, CPU backend, torch threads = default; each row a fresh process.\n\n")
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(head + table + "\n")


if __name__ == "__main__":
    main()
