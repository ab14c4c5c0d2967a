"""Classifier dissection (Network Dissection) as two passes of the pass engine.

Pass 1 ("quantiles") keeps, per captured layer, a per-unit QuantileSketch (the thresholds) and a
TopK of per-sample maxima (the exemplars). Pass 2 ("tally") runs the fused tally into an IoUTally
under the chosen convention and keeps the thresholded masks of each unit's exemplars (only when
a report will show them). `rotation=seed` adds, per layer, a view of the same layer under a
random orthogonal rotation of its units: the NetDissect axis-alignment test."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import Subset

from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.engine import (CheckpointSpec, DatasetSource, LayerView, Pass, RunOutput,
                                    dataset_identity, run_passes)
from dissect_kernels.engine.layers import LayerSpec, as_specs
from dissect_kernels.engine.layer_stats import (ExemplarMaps, ExemplarMasks, LayerQuantiles, LayerTally,
                                                LayerTopK, tally_from_counts)
from dissect_kernels.geometry import Geometry
from dissect_kernels.results import DissectionResult, LayerResult
from dissect_kernels.rotation import Rotation, random_rotation


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
    given: dict | None = None                       # view name -> fixed thresholds [U]
    threshold_source: str = "quantile pass"         # where the thresholds came from
    batch_size: int = 32

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

    def passes(self) -> list[Pass]:
        """Quantiles + top-k, then the tally (+ exemplar maps); with given thresholds, the tally
        + top-k, then the exemplar maps from only the top-k images."""
        if self.given is None:
            return [Pass("quantiles", self.quantile_pass), Pass("tally", self.tally_pass)]
        passes = [Pass("tally", self.tally_pass)]
        if self.exemplars:
            passes.append(Pass("exemplars", self.exemplar_pass, source=self.exemplar_source))
        return passes

    def thresholds(self, name: str, results) -> torch.Tensor:
        if self.given is not None:
            return self.given[name].to(self.device)
        return results["quantiles"][f"{name}/threshold"].to(self.device)

    def topk(self, name: str, results) -> dict:
        return results["quantiles" if self.given is None else "tally"][f"{name}/topk"]

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
        ds = self.dataset
        accs = {}
        for v in self.views:
            accs[f"{v.name}/counts"] = LayerTally(
                v.name, self.thresholds(v.name, results), num_concepts=int(ds.num_concepts),
                category_of=torch.as_tensor(ds.category_of, dtype=torch.int64),
                num_categories=int(ds.num_categories), convention=self.conv,
                geometry_for=self.geometry_for(v.module), backend=self.backend, device=self.device)
            if self.given is not None:
                accs[f"{v.name}/topk"] = LayerTopK(v.name, self.k, device=self.device)
            elif self.exemplars:
                accs[f"{v.name}/maps"] = ExemplarMaps(v.name, self.topk(v.name, results)["indices"])
        return accs

    def exemplar_pass(self, results) -> dict:
        return {f"{v.name}/maps": ExemplarMaps(v.name, self.topk(v.name, results)["indices"])
                for v in self.views}

    def exemplar_source(self, results) -> DatasetSource:
        """Only the images some unit keeps as an exemplar."""
        wanted = torch.cat([self.topk(v.name, results)["indices"].reshape(-1) for v in self.views])
        rows = sorted(set(wanted[wanted >= 0].tolist()))
        return DatasetSource(Subset(self.dataset, rows), meta=self.dataset, batch_size=self.batch_size,
                             drop_categories=self.conv.excluded_categories)

    def exemplar_masks(self, results) -> dict:
        """{f"{layer}/masks": {"keys", "masks"}}: each exemplar's mask, made when it is read."""
        if not self.exemplars:
            return {}
        found = results["exemplars" if self.given is not None else "tally"]
        out = {}
        for v in self.views:
            maps = found[f"{v.name}/maps"]
            out[f"{v.name}/masks"] = {"keys": maps["keys"], "masks": ExemplarMasks(
                maps, self.thresholds(v.name, results), self.geometry_for(v.module))}
        return out


STAGES = {"data": "decode", "forward": "forward", "cache": "cache", "LayerQuantiles": "quantile",
          "LayerTopK": "top-k", "LayerTally": "tally", "ExemplarMaps": "exemplars"}


def given_thresholds(thresholds, views) -> dict[str, torch.Tensor]:
    """thresholds= as {view name: [U] float32}: a dict of tensors, or a results folder (its
    layers' thresholds, e.g. a previous run of the same layers)."""
    if isinstance(thresholds, (str, Path)):
        from dissect_kernels.io import load_results
        thresholds = {name: lr.thresholds for name, lr in load_results(thresholds).layers.items()}
    if not isinstance(thresholds, dict):
        raise TypeError(f"thresholds must be a dict {{layer: [U] tensor}} or a results folder, "
                        f"got {type(thresholds).__name__}")
    missing = [v.name for v in views if v.name not in thresholds]
    if missing:
        raise ValueError(f"thresholds has no entry for layers {missing} (it has {sorted(thresholds)})")
    out = {v.name: torch.as_tensor(thresholds[v.name]).float().cpu() for v in views}
    bad = {name: tuple(t.shape) for name, t in out.items() if t.dim() != 1}
    if bad:
        raise ValueError(f"thresholds must be one value per unit [U]; got shapes {bad}")
    return out


def dissect(model: torch.nn.Module, layers: "str | LayerSpec | Iterable[str | LayerSpec]", dataset, *,
            convention: "str | Convention" = "exact", quantile: float | None = None,
            geometry=None, receptive_fields: dict | None = None, batch_size: int = 32,
            device=None, out_dir=None, progress: bool = True, backend: str = "auto",
            rotation: int | None = None, top_k: int | None = None, quantile_mode: str = "auto",
            num_workers: int | None = None, report: bool = True, checkpoint_interval: float = 120.0,
            resume: bool = True, thresholds=None, cache_bytes: int | None = None) -> DissectionResult:
    """Dissect `layers` of `model` on a Broden-format `dataset` (see BrodenDataset).

    `layers`: module names or dk.LayerSpecs (token, NHWC and sequence-first layouts, a tensor
    selected from a tuple/dict output, a module's input). Returns a DissectionResult; with
    out_dir, also writes results.safetensors, units.csv,
    summary.json and report.html there (from rank 0 only under torch.distributed), and
    checkpoints into out_dir/.checkpoint so that a rerun with identical inputs resumes.
    `rotation=seed` adds, per layer, the same layer under a random orthogonal rotation of its
    units (the NetDissect axis-alignment test). `convention` picks the reference whose rules to
    follow; `quantile`, `geometry` and `top_k` override the convention's. `thresholds` (a dict
    {layer: [U] tensor}, or a results folder such as a previous run's) fixes the thresholds:
    the quantile pass is skipped and summary.json records where they came from. cache_bytes
    bounds the activation cache that lets pass 2 skip the images and the model (None: a
    quarter of memory, at most 8 GiB; 0: off); results are the same either way."""
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
                model_name=type(model).__name__, rotated=rotated, batch_size=batch_size,
                given=None if thresholds is None else given_thresholds(thresholds, views),
                threshold_source="quantile pass" if thresholds is None else
                str(thresholds) if isinstance(thresholds, (str, Path)) else "given (thresholds=)")
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
            rotation=rotation, top_k=plan.k, quantile_mode=quantile_mode,
            thresholds=None if plan.given is None else {k: v.tolist() for k, v in plan.given.items()}),
            checkpoint_interval, resume)

    def write(result, output):
        from dissect_kernels.report.dissection import write_dissection
        write_dissection(out_dir, result, plan.exemplar_masks(output.results), dataset.load_image_uint8,
                         report=report)

    return run_passes(model.to(device).eval(), source, plan.passes(), layers=views, device=device,
                      progress=progress, checkpoint=ckpt, cache_bytes=cache_bytes,
                      finish=lambda output: build_result(plan, output),
                      write=write if out_dir is not None else None)


def build_result(plan: Plan, output: RunOutput) -> DissectionResult:
    """The DissectionResult of a finished run (labels, detectors, thresholds, counts, top-k)."""
    ds, res = plan.dataset, output.results
    layers = []
    for v in plan.views:
        tally = tally_from_counts(res["tally"][f"{v.name}/counts"], plan.conv)
        label, best = tally.best()
        top = plan.topk(v.name, res)
        seed, of = plan.rotated.get(v.name, (None, None))
        layers.append(LayerResult.build(
            v.name, tally.iou(), plan.thresholds(v.name, res).cpu(), label, best,
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
                 "transform": getattr(ds, "transform_info", None),
                 "skipped_samples": {str(i): m for i, m in unreadable.items()}},
        parameters={"quantile": plan.q, "top_k": plan.k, "backend": plan.backend,
                    "quantile_mode": plan.quantile_mode, "device": str(plan.device),
                    "thresholds": plan.threshold_source},
        skipped=sum(reasons.values()), skip_reasons=reasons,
        timing={**output.timing, "total": sum(output.timing.values()),
                **{f"stage {STAGES.get(k, k)}": v for k, v in output.stages.items()}})
