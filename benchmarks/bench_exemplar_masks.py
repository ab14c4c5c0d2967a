"""Pass 2 of a 224 px dissection with and without exemplar masks, and with the masks made the
way the drivers made them before the engine (one pure-torch upsample call per image), all in
one run: how much of pass 2 the masks cost.

Workload: synthetic Broden-format images of 224 px (segmentations 112 px), top_k = 10, and
--model resnet18 (the shipped definition, seeded random weights; layers layer3 + layer4, 768
units) or --model small (the shipped default SmallCNN, layers conv3 + conv4, 224 units: a cheap
forward pass, where the masks' cost shows most).

    PYTHONPATH=. python benchmarks/bench_exemplar_masks.py [--model small] [--images 64] [--record]

Floor of the masks: U * k maps of 112^2 float32 written once and compared (768 units x 10
images x 50 KB = 385 MB of upsampled values per ResNet-18 run, whatever the batching), i.e.
about 0.04-0.1 s at 4-10 GB/s of memory bandwidth on this CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.engine import layer_stats
from dissect_kernels.models import DEFAULT_LAYERS, load_default_model
from dissect_kernels.models.resnet import resnet18
from dissect_kernels.reference.tally import upsample as reference_upsample

MODELS = {"resnet18": (lambda: resnet18().eval(), ["layer3", "layer4"]),
          "small": (load_default_model, list(DEFAULT_LAYERS))}


def per_image_update(self, step) -> None:
    """ExemplarMasks.update as the drivers did it before: a reference upsample per image."""
    a = step.acts[self.layers[0]]
    for row, index in enumerate(step.indices.tolist()):
        units = self.units_of.get(int(index))
        if not units:
            continue
        size = tuple(step.labels.shape[-2:])
        geometry = self.geometry_for(tuple(a.shape[2:]), size)
        tables = [t.to(a.device) for t in geometry.tables(tuple(a.shape[2:]), size)]
        sel = torch.tensor(units, device=a.device)
        up = reference_upsample(a[row:row + 1, sel], *tables)[0]
        masks = (up > self.thresholds.to(a.device)[sel, None, None]).cpu()
        for j, u in enumerate(units):
            self.masks[(u, int(index))] = masks[j]


def pass2_seconds(model, layers, data, out: Path, *, masks: bool, per_image: bool = False) -> float:
    """Seconds of the tally pass (pass 2) of one dissection."""
    real = layer_stats.ExemplarMasks.update
    if per_image:
        layer_stats.ExemplarMasks.update = per_image_update
    try:
        result = dk.dissect(model, layers, data, out_dir=out if masks else None, batch_size=16,
                            progress=False, report=masks)
    finally:
        layer_stats.ExemplarMasks.update = real
    return result.timing["tally"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    build, layers = MODELS[args.model]
    model = build()
    with tempfile.TemporaryDirectory() as tmp:
        data = BrodenDataset(make_synthetic_broden(Path(tmp) / "broden", n_images=args.images,
                                                   image_size=224, seed=0))
        run = lambda name, **kw: pass2_seconds(model, layers, data, Path(tmp) / name, **kw)  # noqa: E731
        rows = [("no exemplar masks", run("a", masks=False)),
                ("masks: one reference upsample per image (before)",
                 run("b", masks=True, per_image=True)),
                ("masks: one dk.upsample per batch (now)",
                 run("c", masks=True))]
    base = rows[0][1]
    lines = [f"| setting | pass 2 (s) | masks' share of pass 2 |", "|---|---|---|"]
    for name, sec in rows:
        lines.append(f"| {name} | {sec:.2f} | {max(0.0, sec - base) / sec:.0%} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        head = (f"\n`benchmarks/bench_exemplar_masks.py --model {args.model} --images {args.images}`, "
                f"{time.strftime('%Y-%m-%d')}, torch threads={torch.get_num_threads()}, layers "
                f"{'+'.join(layers)} at 224 px, segmentations 112 px, top_k 10, batch 16; one run:\n\n")
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(head + table + "\n")


if __name__ == "__main__":
    main()
