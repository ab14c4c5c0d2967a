"""Classifier dissection (Network Dissection) as two passes of the pass engine.

Pass 1 ("quantiles") keeps, per captured layer, a per-unit QuantileSketch (the thresholds) and a
TopK of per-sample maxima (the exemplars). Pass 2 ("tally") runs the fused tally into an IoUTally
under the chosen convention and keeps the thresholded masks of each unit's exemplars (only when
a report will show them). `rotation=seed` adds, per layer, a view of the same layer under a
random orthogonal rotation of its units: the NetDissect axis-alignment test."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.engine import (CheckpointSpec, DatasetSource, LayerView, Pass, RunOutput,
                                    dataset_identity, run_passes)
from dissect_kernels.engine.layers import LayerSpec, as_specs
from dissect_kernels.engine.layer_stats import (ExemplarMasks, LayerQuantiles, LayerTally, LayerTopK,
                                                tally_from_counts)
from dissect_kernels.geometry import Geometry
from dissect_kernels.results import DissectionResult, LayerResult


def random_rotation(num_units: int, seed: int) -> torch.Tensor:
    """A random orthogonal [U, U] matrix (QR of a seeded Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(num_units, num_units, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class Rotation:
    """A view transform: the units of a [B, U, h, w] map mixed by random_rotation(U, seed)."""

    def __init__(self, seed: int):
        self.seed, self.matrix = int(seed), None

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            self.matrix = random_rotation(a.shape[1], self.seed)
        return torch.einsum("bchw,dc->bdhw", a.float(), self.matrix.to(a.device))


@dataclass
class Plan:
    """A dissection's validated settings: what each pass's accumulators need."""

    conv: Convention
    q: float
    views: list[LayerView]
    dataset: object
    geometry: object
    receptive_fields: dict | None
    k: int
    quantile_mode: str
    backend: str
    device: torch.device
    exemplars: bool
    model_name: str = ""
    rotated: dict = field(default_factory=dict)     # view name -> (seed, the layer it rotates)

    def geometry_for(self, module: str):
        """(h, w), (H, W) -> the upsampling geometry of `module`'s maps (see Convention)."""
        def pick(src, dst) -> Geometry:
            if self.geometry is not None:
                return Geometry.named(self.geometry)
            if self.conv.geometry != "receptive-field":
                return Geometry.named(self.conv.geometry)
            if not self.receptive_fields or module not in self.receptive_fields:
                raise ValueError(
                    f"convention {self.conv.name!r} upsamples through receptive-field centres: "
                    f"pass receptive_fields={{{module!r}: (offset, size, stride)}} or geometry=")
            offset, size, stride = self.receptive_fields[module]
            return Geometry.receptive_field(offset, size, stride, ratio=max(1, round(dst[0] / src[0])))
        return pick

    def quantile_pass(self, results) -> dict:
        accs = {}
        upsampled = self.conv.quantile_population == "upsampled"
        for v in self.views:
            accs[f"{v.name}/threshold"] = LayerQuantiles(
                v.name, self.q, samples=len(self.dataset), mode=self.quantile_mode,
                min_quantile=min(self.q, 0.99), device=self.device,
                upsample=self.geometry_for(v.module) if upsampled else None)
            accs[f"{v.name}/topk"] = LayerTopK(v.name, self.k, device=self.device)
        return accs

    def tally_pass(self, results) -> dict:
        ds, first = self.dataset, results["quantiles"]
        accs = {}
        for v in self.views:
            thresholds = first[f"{v.name}/threshold"].to(self.device)
            accs[f"{v.name}/counts"] = LayerTally(
                v.name, thresholds, num_concepts=int(ds.num_concepts),
                category_of=torch.as_tensor(ds.category_of, dtype=torch.int64),
                num_categories=int(ds.num_categories), convention=self.conv,
                geometry_for=self.geometry_for(v.module), backend=self.backend, device=self.device)
            if self.exemplars:
                accs[f"{v.name}/masks"] = ExemplarMasks(
                    v.name, thresholds, first[f"{v.name}/topk"]["indices"],
                    geometry_for=self.geometry_for(v.module))
        return accs


def dissect(model: torch.nn.Module, layers: "str | LayerSpec | Iterable[str | LayerSpec]", dataset, *,
            convention: "str | Convention" = "exact", quantile: float | None = None,
            geometry=None, receptive_fields: dict | None = None, batch_size: int = 32,
            device=None, out_dir=None, progress: bool = True, backend: str = "auto",
            rotation: int | None = None, top_k: int | None = None, quantile_mode: str = "auto",
            num_workers: int = 0, report: bool = True, checkpoint_interval: float = 120.0,
            resume: bool = True) -> DissectionResult:
    """Dissect `layers` of `model` on a Broden-format `dataset` (see BrodenDataset).

    `layers`: module names or dk.LayerSpecs (token, NHWC and sequence-first layouts, a tensor
    selected from a tuple/dict output, a module's input). Returns a DissectionResult; with
    out_dir, also writes results.safetensors, units.csv,
    summary.json and report.html there (from rank 0 only under torch.distributed), and
    checkpoints into out_dir/.checkpoint so that a rerun with identical inputs resumes.
    `rotation=seed` adds, per layer, the same layer under a random orthogonal rotation of its
    units (the NetDissect axis-alignment test). `convention` picks the reference whose rules to
    follow; `quantile`, `geometry` and `top_k` override the convention's."""
    conv = get_convention(convention)
    q = conv.quantile if quantile is None else float(quantile)
    if q is None or not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {q!r} (convention {conv.name!r})")
    specs = as_specs(model, layers)
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to dissect")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    views = [LayerView.of(s) for s in specs]
    rotated = {} if rotation is None else {f"{s.key}@rot{rotation}": (int(rotation), s.key) for s in specs}
    views += [LayerView.of(s, name, Rotation(rotation)) for s, name in zip(specs, rotated)]
    plan = Plan(conv, q, views, dataset, geometry, receptive_fields, top_k or conv.top_images,
                quantile_mode, backend, device, exemplars=out_dir is not None and report,
                model_name=type(model).__name__, rotated=rotated)
    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers,
                           drop_categories=conv.excluded_categories,
                           pin_memory=device.type == "cuda")
    ckpt = None
    if out_dir is not None:
        from dissect_kernels.io import ensure_dir
        ensure_dir(out_dir)          # an unwritable out_dir fails now, not after both passes
        ckpt = CheckpointSpec(out_dir, "dissect", dict(
            layers=[repr(s) for s in specs], dataset=dataset_identity(dataset), convention=conv.name, quantile=q,
            geometry=str(geometry), receptive_fields=receptive_fields, batch_size=batch_size,
            rotation=rotation, top_k=plan.k, quantile_mode=quantile_mode), checkpoint_interval, resume)

    def write(result, output):
        from dissect_kernels.report.dissection import write_dissection
        write_dissection(out_dir, result, output.results["tally"], dataset.load_image_uint8,
                         report=report)

    return run_passes(model.to(device).eval(), source,
                      [Pass("quantiles", plan.quantile_pass), Pass("tally", plan.tally_pass)],
                      layers=views, device=device, progress=progress, checkpoint=ckpt,
                      finish=lambda output: build_result(plan, output),
                      write=write if out_dir is not None else None)


def build_result(plan: Plan, output: RunOutput) -> DissectionResult:
    """The DissectionResult of a finished run (labels, detectors, thresholds, counts, top-k)."""
    ds, res = plan.dataset, output.results
    layers = []
    for v in plan.views:
        tally = tally_from_counts(res["tally"][f"{v.name}/counts"], plan.conv)
        label, best = tally.best()
        top = res["quantiles"][f"{v.name}/topk"]
        seed, of = plan.rotated.get(v.name, (None, None))
        layers.append(LayerResult.build(
            v.name, tally.iou(), res["quantiles"][f"{v.name}/threshold"], label, best,
            iqr=tally.iqr() if plan.conv.detector_iqr is not None else None,
            concept_names=ds.concept_names, category_names=ds.category_names,
            category_of=torch.as_tensor(ds.category_of, dtype=torch.int64), convention=plan.conv,
            counts=tally.state_dict(), topk_indices=top["indices"], topk_values=top["values"],
            rotation=None if seed is None else random_rotation(tally.num_units, seed),
            rotation_info={} if seed is None else {"seed": seed, "of": of}))
    unreadable = output.skips.get("unreadable", {})
    reasons = {reason: len(items) for reason, items in output.skips.items()}
    return DissectionResult(
        layers, convention=plan.conv.name,
        model={"class": plan.model_name,
               "layers": list(dict.fromkeys(v.module for v in plan.views))},
        dataset={"type": type(ds).__name__, "images": len(ds), "root": str(getattr(ds, "root", "")),
                 "skipped_samples": {str(i): m for i, m in unreadable.items()}},
        parameters={"quantile": plan.q, "top_k": plan.k, "backend": plan.backend,
                    "quantile_mode": plan.quantile_mode, "device": str(plan.device)},
        skipped=sum(reasons.values()), skip_reasons=reasons,
        timing={**output.timing, "total": sum(output.timing.values())})
