"""Compositional labels (analysis.compose) of all 512 units of a layer over 1,000 images, beam 5,
formulas of up to 3 concepts, against a straightforward torch search that materialises every
candidate formula's mask over the dataset (formulas.naive_search), in the same run, CPU.

Synthetic data: activations [1000, 512, 7, 7] (noise plus, per unit, a pooled copy of one or two
concepts' masks), labels [1000, 2, 14, 14] (two label layers: 24 + 12 concepts) and one image
label of 8 scene concepts. Thresholds are given (the search alone is timed). The baseline is
timed on --baseline-units units (its cost is linear in units: each unit's candidates are built
and scored alone) and extrapolated to 512, labelled as such; its beams on those units must
equal the fast search's. Run: python benchmarks/bench_compose.py [--images N] [--units U]."""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dissect_kernels.analysis import formulas as fm
from dissect_kernels.analysis.compose import compose
from dissect_kernels.ops.upsample import upsample

LAYER0, LAYER1, SCENES = 24, 12, 8


class Synthetic:
    """In-memory Broden-style dataset whose image is the activation map (an Identity model)."""

    category_names, num_categories = ["object", "color", "scene"], 3

    def __init__(self, images: int, units: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        C = 1 + LAYER0 + LAYER1 + SCENES
        self.num_concepts, self.concept_names = C, ["-"] + [f"c{i}" for i in range(1, C)]
        self.category_of = torch.tensor([0] * (1 + LAYER0) + [1] * LAYER1 + [2] * SCENES)
        l0 = _blocks(images, 0, 1 + LAYER0, g) * (torch.rand(images, 1, 14, 14, generator=g) < 0.9)
        l1 = _blocks(images, 1 + LAYER0, 1 + LAYER0 + LAYER1, g)
        self.labels = torch.cat([l0, l1], 1)
        self.scene = torch.randint(1 + LAYER0 + LAYER1, C, (images, 1), generator=g)
        pick = torch.randint(1, 1 + LAYER0 + LAYER1, (units, 2), generator=g)
        both = (self.labels[:, :, None] == pick[None, None, :, 0, None, None]).any(1).float()
        other = (self.labels[:, :, None] == pick[None, None, :, 1, None, None]).any(1).float()
        mix = torch.rand(units, generator=g)[None, :, None, None]
        planted = both * torch.where(mix < 0.5, other, torch.ones_like(other))    # c1 or c1 AND c2
        self.acts = nn.functional.avg_pool2d(planted, 2) + 0.3 * torch.rand(images, units, 7, 7, generator=g)

    def __len__(self):
        return self.labels.shape[0]

    def __getitem__(self, i):
        return dict(image=self.acts[i], labels=self.labels[i].clone(), image_labels=self.scene[i].clone(), index=i)


def _blocks(images: int, lo: int, hi: int, g) -> torch.Tensor:
    """A label layer [images, 1, 14, 14] of 2x2 blocks with ids in [lo, hi)."""
    ids = torch.randint(lo, hi, (images, 1, 7, 7), generator=g)
    return ids.repeat_interleave(2, -1).repeat_interleave(2, -2)


def thresholds(ds: Synthetic) -> torch.Tensor:
    """Each unit's 0.95 quantile over its maps (given to both searches)."""
    a = ds.acts.permute(1, 0, 2, 3).reshape(ds.acts.shape[1], -1)
    return torch.quantile(a[:, :: max(1, a.shape[1] // 100_000)], 0.95, dim=1)


def naive_inputs(ds: Synthetic, thr: torch.Tensor, units: list[int]):
    """Unit masks [u, P] and concept masks [C, P] materialised over the whole dataset."""
    up = upsample(ds.acts[:, units].contiguous(), (14, 14))          # the same upsampling, materialised
    masks = (up > thr[units][None, :, None, None]).permute(1, 0, 2, 3).reshape(len(units), -1)
    concepts = torch.zeros(ds.num_concepts, len(ds), 14, 14, dtype=torch.bool)
    for c in range(1, ds.num_concepts):
        concepts[c] = (ds.labels == c).any(1) | (ds.scene == c).any(1)[:, None, None]
    return masks, concepts.reshape(ds.num_concepts, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--baseline-units", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    ds = Synthetic(args.images, args.units)
    thr = thresholds(ds)
    t0 = time.perf_counter()
    rec = compose(nn.Sequential(nn.Identity()), ["0"], ds, beam=args.beam, thresholds={"0": thr},
                  batch_size=args.batch_size, device="cpu", progress=False)
    fast = time.perf_counter() - t0
    units = rec["layers"]["0"]["units"]
    sub = list(range(0, args.units, max(1, args.units // args.baseline_units)))[:args.baseline_units]
    masks, concepts = naive_inputs(ds, thr, sub)
    t0 = time.perf_counter()
    beams, vals = fm.naive_search(masks, concepts, width=args.beam)
    naive = time.perf_counter() - t0
    same = all(units[u]["formula"] == fm.name(beams[j, 0], ds.concept_names) and
               abs(units[u]["formula_iou"] - float(vals[j, 0])) < 1e-9 for j, u in enumerate(sub))
    per_unit = naive / len(sub)
    print(f"compose: {args.units} units x {args.images} images (labels 14x14, {ds.num_concepts} concepts), "
          f"beam {args.beam}, length <= 3: {fast:.1f} s "
          f"({rec['layers']['0']['summary']['compositional']} units labelled by a formula)")
    print(f"naive materialising search: {naive:.1f} s for {len(sub)} units = {per_unit:.2f} s/unit; "
          f"EXTRAPOLATED to {args.units} units: {per_unit * args.units:.0f} s")
    print(f"speed-up (extrapolated baseline / measured): {per_unit * args.units / fast:.0f}x; "
          f"same best formulas and IoUs on the {len(sub)} timed units: {same}")
    if not same:
        raise SystemExit("the fast search and the baseline disagree")


if __name__ == "__main__":
    main()
