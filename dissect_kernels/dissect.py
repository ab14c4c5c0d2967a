"""Classifier dissection (Network Dissection) as two passes of the pass engine.

Pass 1 ("quantiles") keeps, per captured layer, a per-unit QuantileSketch (the thresholds) and a
TopK of per-sample maxima (the exemplars). Pass 2 ("tally") runs the fused tally into an IoUTally
under the chosen convention and keeps the source maps of each unit's exemplars (only when a
report will show them). The accumulators of each pass are composed in dissect_plan.py. `rotation=seed` adds, per layer, a view of the same layer under a
random orthogonal rotation of its units: the NetDissect axis-alignment test."""
from __future__ import annotations

from typing import Iterable

import torch

from dissect_kernels.conventions import Convention
from dissect_kernels.dissect_plan import STAGES, Plan, make_plan
from dissect_kernels.engine import CheckpointSpec, DatasetSource, RunOutput, dataset_identity, run_passes
from dissect_kernels.engine.layer_stats import tally_from_counts
from dissect_kernels.engine.layers import LayerSpec
from dissect_kernels.engine.sources import FILTERED
from dissect_kernels.results import DissectionResult, LayerResult
from dissect_kernels.rotation import random_rotation


def dissect(model: torch.nn.Module, layers: "str | LayerSpec | Iterable[str | LayerSpec]", dataset, *,
            convention: "str | Convention" = "exact", quantile: float | None = None,
            geometry=None, receptive_fields: dict | None = None, batch_size: int = 32,
            device=None, out_dir=None, progress: bool = True, backend: str = "auto",
            rotation: int | None = None, top_k: int | None = None, quantile_mode: str = "auto",
            num_workers: int | None = None, report: bool = True, checkpoint_interval: float = 120.0,
            resume: bool = True, thresholds=None, cache_bytes: int | None = None,
            strict: bool = False, memory_budget: int | None = None) -> DissectionResult:
    """Dissect `layers` of `model` on a Broden-format `dataset` (see BrodenDataset).

    `layers`: module names or dk.LayerSpecs (token, NHWC and sequence-first layouts, a tensor
    selected from a tuple/dict output, a module's input). Returns a DissectionResult; with
    out_dir, also writes results.safetensors, units.csv, summary.json and the report site
    (index.html, a page per layer) there (from rank 0 only under torch.distributed), and
    checkpoints into out_dir/.checkpoint so that a rerun with identical inputs resumes.
    `rotation=seed` adds, per layer, the same layer under a random orthogonal rotation of its
    units (the NetDissect axis-alignment test). `convention` picks the reference whose rules to
    follow; `quantile`, `geometry` and `top_k` override the convention's. `thresholds` (a dict
    {layer: [U] tensor}, or a results folder such as a previous run's) fixes the thresholds:
    the quantile pass is skipped and summary.json records where they came from. cache_bytes
    bounds the activation cache that lets pass 2 skip the images and the model (None: a
    quarter of memory, at most 8 GiB; 0: off); results are the same either way. strict=True
    stops at the first unreadable sample instead of skipping and counting it. memory_budget
    (bytes): quantiles stay exact only where they fit, the activation cache gets what is left,
    and a run that cannot fit is refused before the first pass (the estimate is printed and kept
    in summary.json either way)."""
    plan = make_plan(model, layers, dataset, convention=convention, quantile=quantile, geometry=geometry,
                     receptive_fields=receptive_fields, top_k=top_k, quantile_mode=quantile_mode,
                     backend=backend, device=device, exemplars=out_dir is not None and report,
                     rotation=rotation, batch_size=batch_size, thresholds=thresholds)
    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers,
                           drop_categories=plan.conv.excluded_categories, strict=strict,
                           pin_memory=plan.device.type == "cuda")
    if out_dir is not None:
        from dissect_kernels.io import ensure_dir
        ensure_dir(out_dir)          # an unwritable out_dir fails now, before any work
    cache_bytes = _size_up(plan, model, source, memory_budget, cache_bytes, progress)
    ckpt = None if out_dir is None else CheckpointSpec(out_dir, "dissect", dict(
        plan.key(), dataset=dataset_identity(dataset), geometry=str(geometry),
        receptive_fields=receptive_fields, batch_size=batch_size, rotation=rotation),
        checkpoint_interval, resume)

    def write(result, output):
        from dissect_kernels.report.dissection import write_dissection
        write_dissection(out_dir, result, plan.exemplar_masks(output.results), dataset.load_image_uint8,
                         report=report)

    return run_passes(model.to(plan.device).eval(), source, plan.passes(), layers=plan.views, device=plan.device,
                      progress=progress, checkpoint=ckpt, cache_bytes=cache_bytes,
                      finish=lambda output: build_result(plan, output),
                      write=write if out_dir is not None else None)


def _size_up(plan: Plan, model, source, budget, cache_bytes, progress: bool):
    """Probe one sample, estimate the run's memory (and refuse what cannot fit); returns the
    activation cache's budget."""
    from dissect_kernels.engine.cache import default_max_bytes
    from dissect_kernels.engine.memory import gib, probe_shapes
    est = plan.size_up(probe_shapes(model.to(plan.device).eval(), source, plan.views, plan.device), budget)
    if cache_bytes is None:
        left = None if budget is None else budget - est["quantiles"] - est["counts"]
        cache_bytes = default_max_bytes() if left is None else max(0, min(left, default_max_bytes()))
    if est["cache"] > cache_bytes:
        est["cache"] = 0                                   # will not fit: pass 2 runs the model
    if progress:
        from tqdm.auto import tqdm
        tqdm.write(f"memory: quantiles {gib(est['quantiles'])} ({', '.join(f'{k} {m}' for k, m in est['modes'].items())}), "
                   f"IoU counts and results {gib(est['counts'])}, activation cache {gib(est['cache'])}"
                   + ("" if budget is None else f"; budget {gib(budget)}"))
    return cache_bytes


def build_result(plan: Plan, output: RunOutput) -> DissectionResult:
    """The DissectionResult of a finished run (labels, detectors, thresholds, counts, top-k)."""
    ds, res = plan.dataset, output.results
    layers, warnings = [], []
    for v in plan.views:
        tally = tally_from_counts(res["tally"][f"{v.name}/counts"], plan.conv)
        label, best = tally.best()
        warnings += unit_warnings(v.name, tally, label, plan.conv.unit_base)
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
    unreadable = {i: m for reason, items in output.skips.items() if reason != FILTERED for i, m in items.items()}
    reasons = {reason: len(items) for reason, items in output.skips.items()}
    refused = getattr(ds, "refused", {}) or {}
    reasons.update({f"refused: {reason}": len(rows) for reason, rows in refused.items()})
    return DissectionResult(
        layers, convention=plan.conv.name,
        model={"class": plan.model_name,
               "layers": list(dict.fromkeys(v.module for v in plan.views))},
        dataset={"type": type(ds).__name__, "images": len(ds), "root": str(getattr(ds, "root", "")),
                 "transform": getattr(ds, "transform_info", None),
                 "refused_rows": {reason: {"count": len(rows), "first": rows[0]} for reason, rows in refused.items()},
                 "skipped_samples": {str(i): m for i, m in unreadable.items()}},
        parameters={"quantile": plan.q, "top_k": plan.k, "backend": plan.backend,
                    "quantile_mode": plan.quantile_mode, "device": str(plan.device),
                    "thresholds": plan.threshold_source,
                    "memory_estimate": {k: v for k, v in plan.estimate.items()}},
        skipped=sum(reasons.values()), skip_reasons=reasons, warnings=dataset_warnings(layers) + warnings,
        timing={**output.timing, "total": sum(output.timing.values()),
                **{f"stage {STAGES.get(k, k)}": v for k, v in output.stages.items()}})


def unit_warnings(layer: str, tally, label: torch.Tensor, unit_base: int) -> list[str]:
    """What in a layer's result means little: units that never fire above their threshold
    (dead, or constant: nothing exceeds its own value), units active on every pixel, units that
    got no concept. They keep no label ("-", or NaN where the preset says so)."""
    def units(mask: torch.Tensor) -> str:
        ids = (mask.nonzero().flatten() + unit_base).tolist()
        return f"{len(ids)} unit(s) ({', '.join(map(str, ids[:8]))}{', ...' if len(ids) > 8 else ''})"
    active = tally.active_total.cpu()
    pixels = int(tally.total_pixels)
    out = []
    for mask, what in ((active == 0, "never fire above their threshold (dead or constant units): no label"),
                       ((active == pixels) & (active > 0), "fire on every pixel: no region to label"),
                       ((label.cpu() < 0) & (active > 0), "fire but overlap no concept: no label")):
        if bool(mask.any()):
            out.append(f"layer {layer!r}: {units(mask)} {what}")
    return out


def dataset_warnings(layers) -> list[str]:
    """A dataset without any concept label makes every IoU 0: say so once."""
    if layers and all(not bool((lr.counts["truth"][1:] > 0).any()) for lr in layers if lr.counts):
        return ["the dataset holds no concept labels (every label is 0): no unit can get a concept"]
    return []
