"""Triton tally work counters on a Broden-like batch (ResNet-18 layer4: 512 units, 7x7 ->
112x112, 6 label layers in 8x8-pixel blobs, 2 image-level labels, 0.99-quantile thresholds):
output tiles skipped by the tile bound, label hits (unit-pixel-concept updates: what a kernel
without aggregation issues as atomics) and the atomics issued after aggregation. The counts
do not depend on the device, so the CPU run (Triton's interpreter, slow: keep --images small)
gives the same numbers a GPU does; on a GPU the kernel is also timed against the CUDA one.

    PYTHONPATH=. python benchmarks/bench_tally_triton.py [--images 1] [--units 512] [--device cpu|cuda] [--json F]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally_into
from dissect_kernels.reference.upsample import upsample
from dissect_kernels.triton.tally import tally_into as triton_tally_into

h, H, L, M, C = 7, 112, 6, 2, 1197


def batch(B: int, U: int, device, seed: int = 0):
    """ReLU maps with a per-unit offset; blocky label layers, later ones sparser (gpu_bench's)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(B, U, h, h, generator=g) + 2.0 * torch.randn(B, U, 1, 1, generator=g) - 1.0)
    low = torch.randint(1, C, (B, L, H // 8, H // 8), generator=g, dtype=torch.int32)
    keep = torch.rand(B, L, H // 8, H // 8, generator=g)
    low[keep > torch.linspace(0.9, 0.3, L)[None, :, None, None]] = 0
    labels = low.repeat_interleave(8, 2).repeat_interleave(8, 3).contiguous()
    img = torch.randint(0, C, (B, M), generator=g, dtype=torch.int32)
    return acts.to(device), labels.to(device), img.to(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the numbers to this file too")
    a = p.parse_args(argv)
    device, U = torch.device(a.device), a.units
    ytab, xtab = (t.to(device) for t in Geometry.named("half-pixel").tables((h, h), (H, H)))
    cal, _, _ = batch(8, U, "cpu", seed=99)
    up = upsample(cal, *Geometry.named("half-pixel").tables((h, h), (H, H))).transpose(0, 1).reshape(U, -1)
    thr = up.kthvalue(int(0.99 * up.shape[1]), dim=1).values.contiguous().to(device)
    acts, labels, img = batch(a.images, U, device)
    stats = torch.zeros(4, dtype=torch.int64, device=device)
    out = TallyResult.empty(a.images, U, C, None, device)
    t0 = time.perf_counter()
    triton_tally_into(acts, thr, labels, img, ytab, xtab, C, False, None, None, out, stats=stats)
    wall = time.perf_counter() - t0
    check = TallyResult.empty(a.images, U, C, None, device)
    tally_into("cuda" if device.type == "cuda" else "cpu", acts, thr, labels, img, ytab, xtab, C, False,
               None, None, check)
    if not torch.equal(out.intersection, check.intersection):
        raise AssertionError("Triton and the native kernel disagree")
    visited, skipped, hits, atomics = (int(v) for v in stats.cpu())
    n = a.images
    res = dict(images=n, units=U, device=str(device), active_fraction=int(out.active.sum()) / (n * U * H * H),
               tiles_per_image=visited / n, tiles_skipped_fraction=skipped / max(visited, 1),
               label_hits_per_image=hits / n, atomics_per_image=atomics / n,
               aggregation_factor=hits / max(atomics, 1), seconds_first_call=wall)
    if device.type == "cuda":
        res.update(_gpu_times(acts, thr, labels, img, ytab, xtab, device, U))
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def _gpu_times(acts, thr, labels, img, ytab, xtab, device, U: int) -> dict:
    """Median kernel times (CUDA events) of the Triton and CUDA tallies on this batch."""
    times = {}
    for name in ("triton", "cuda"):
        out = TallyResult.empty(acts.shape[0], U, C, None, device)
        runs = []
        for i in range(13):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            tally_into(name, acts, thr, labels, img, ytab, xtab, C, False, None, None, out)
            e.record()
            runs.append((s, e))
        torch.cuda.synchronize()
        ms = sorted(s.elapsed_time(e) for s, e in runs[3:])
        times[f"{name}_ms"] = ms[len(ms) // 2]
    return times


if __name__ == "__main__":
    sys.exit(main())
