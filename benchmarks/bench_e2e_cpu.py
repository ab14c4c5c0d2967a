"""The whole dk.dissect against one plain forward pass over the same, already decoded images
(issue 15's CPU target: <= 1.3x), ResNet-18 layer3 + layer4 at 224 px on Broden-format images,
with the run's own stage breakdown. All rows are one run, in one process, interleaved.

    PYTHONPATH=. python benchmarks/bench_e2e_cpu.py [--images 96] [--record]

Baseline: the images are decoded and normalised once, then the model runs on them in batches
up to layer4 (torch.inference_mode): what any dissection must at least do once. dk.dissect
reads the images from disk itself (decode, normalise, two passes unless the activation cache
spares the second forward) and writes nothing (out_dir=None), so the ratio counts decoding,
the statistics and the engine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.hooks import run_layers
from dissect_kernels.models.resnet import resnet18

LAYERS = ["layer3", "layer4"]


def plain_forward(model, data, batch: int) -> float:
    """Seconds of the model up to layer4 over the decoded, normalised images."""
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            run_layers(model, images[s:s + batch], LAYERS)
    return time.perf_counter() - t0


def dissection(model, data, batch: int, **kw):
    t0 = time.perf_counter()
    result = dk.dissect(model, LAYERS, data, batch_size=batch, progress=False, **kw)
    return time.perf_counter() - t0, result.timing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = resnet18().eval()
    rows = {"plain forward (decoded once)": [], "dk.dissect": [], "dk.dissect, no activation cache": []}
    stages = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = BrodenDataset(make_synthetic_broden(Path(tmp) / "b", n_images=args.images, image_size=224, seed=0))
        for _ in range(args.repeats):
            rows["plain forward (decoded once)"].append(plain_forward(model, data, args.batch))
            sec, stages = dissection(model, data, args.batch)
            rows["dk.dissect"].append(sec)
            rows["dk.dissect, no activation cache"].append(dissection(model, data, args.batch, cache_bytes=0)[0])
    base = min(rows["plain forward (decoded once)"])
    lines = ["| run | seconds (min of repeats) | x plain forward |", "|---|---|---|"]
    lines += [f"| {name} | {min(v):.2f} | {min(v) / base:.2f} |" for name, v in rows.items()]
    lines += ["", "Stages of the last dk.dissect (seconds): " +
              ", ".join(f"{k} {v:.2f}" for k, v in stages.items())]
    table = "\n".join(lines)
    print(table)
    if args.record:
        head = (f"\n## end to end on CPU: dk.dissect vs one forward pass\n\n`benchmarks/bench_e2e_cpu.py "
                f"--images {args.images}`, {time.strftime('%Y-%m-%d')}, torch threads={torch.get_num_threads()}, "
                f"ResNet-18 (random weights) layer3 + layer4, 224 px synthetic Broden images, batch {args.batch}; "
                "one process, runs interleaved.\n\n")
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(head + table + "\n")


if __name__ == "__main__":
    main()
