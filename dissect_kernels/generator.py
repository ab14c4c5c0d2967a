"""GAN dissection as three passes of the pass engine over the same z (z_i depends only on the
sample index): the generator runs with its layers captured, the segmenter labels its images.

 1. "quantiles": each unit's *upsampled* map (to the segmentation's size): candidate levels
    t_j = Q_u(1 - f_j), f in logspace(-3, 0, 100), and the convention's quantile;
 2. "level_counts": exact counts above every candidate level, conditioned on every label and
    category (LevelCounts: GD's conditional sketches counted exactly at the levels), plus an
    IoUTally at the convention's fixed quantile (reported as counts["quantile_iou"]);
 3. "tally": after the search (per (unit, concept): GD's agreement > 0.8 and t > 0 rules,
    argmax IQR; label = argmax IQR; one threshold per unit t_u = t_{u,label}) an IoUTally at
    t_u gives the reported IoU and IQR, and a TopK of per-sample maxima the exemplars.
Memory is independent of num_samples, except for exact quantiles, which keep what they need."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dissect_kernels.conventions import get_convention
from dissect_kernels.engine import CheckpointSpec, IndexSource, LayerView, Pass, capture, run_passes
from dissect_kernels.engine.layers import LayerSpec, as_spec, as_specs
from dissect_kernels.engine.layer_stats import (LayerLevelCounts, LayerQuantiles, LayerTally, LayerTopK,
                                                tally_from_counts, upsample_to)
from dissect_kernels.generated import make_z_sampler, segment, segmenter_info
from dissect_kernels.geometry import Geometry
from dissect_kernels.results import DissectionResult, LayerResult
from dissect_kernels.stats.iou_tally import iqr_from_table

NUM_LEVELS = 100
AGREEMENT = 0.8          # GD keeps a candidate level only if P(A and C) + P(not A and not C) > 0.8
MIN_LABEL_FRACTION = 1e-3  # GD zeroes the MI of labels rarer than this
QUANTILE_MODES = ("auto", "exact", "sketch")


def level_fractions(num_levels: int = NUM_LEVELS) -> np.ndarray:
    """GD's candidate fractions f = logspace(-3, 0, num_levels): levels are Q(1 - f)."""
    return np.logspace(-3, 0, num_levels)


def iqr_search(counts, levels: torch.Tensor):
    """GD's per-(unit, concept) search over the candidate levels (counts: a LevelCounts or its
    state_dict, in level order). Returns (max_iqr [U, C] float64, best level index [U, C])."""
    c = counts if isinstance(counts, dict) else counts.state_dict()
    U, NL, C = c["above_label"].shape
    cat = c["category_of"]
    tot = c["category_pixels"][cat].double()                             # [C]
    safe = tot.clamp(min=1)
    truth = (c["truth"].double() / safe)[None, None, :].expand(U, NL, C)
    pred = c["above_cat"][:, :, cat].double() / safe                     # [U, NL, C]
    isect = c["above_label"].double() / safe
    table = torch.stack([torch.stack([isect, pred - isect]),
                         torch.stack([truth - isect, 1 - pred - truth + isect])]).clamp(0, 1)
    iqr = iqr_from_table(table)                                          # [U, NL, C]
    frac = c["truth"].double() / max(1, int(c["total_pixels"]))
    iqr[:, NL - 1, :] = 0                                                # GD: last bucket
    iqr[:, :, (frac < MIN_LABEL_FRACTION) | (tot == 0)] = 0
    keep = (table[0, 0] + table[1, 1] > AGREEMENT) & (levels[:, :, None] > 0)
    iqr = torch.where(keep, iqr, torch.zeros_like(iqr))
    iqr[:, :, 0] = 0
    best, idx = iqr.max(dim=1)                                           # first max: highest level
    return best, idx


def unit_search(counts: dict, levels: torch.Tensor, num_classes: int):
    """(max_iqr [U, C], threshold per (unit, concept) [U, C], label [U], unit threshold [U])."""
    max_iqr, at = iqr_search(counts, levels)
    pair_thr = levels.gather(1, at.to(levels.device))
    label = max_iqr[:, 1:].argmax(1) + 1 if num_classes > 1 else torch.full((max_iqr.shape[0],), -1)
    unit_thr = pair_thr.gather(1, label[:, None].to(pair_thr.device))[:, 0].contiguous()
    return max_iqr, pair_thr, label, unit_thr


class GanPlan:
    """A GAN dissection's validated settings and its three passes."""

    def __init__(self, layers, segmenter, conv, num_samples, quantile_mode, top_k, backend, device):
        self.layers, self.conv, self.num_samples = layers, conv, num_samples
        self.C, self.names, self.cat_names, self.cat_of = segmenter_info(segmenter)
        self.K = len(self.cat_names)
        self.quantile_mode, self.top_k, self.backend, self.device = quantile_mode, top_k, backend, device
        self.geometry_for = lambda src, dst: Geometry.named(conv.geometry)

    def _tally(self, name: str, thresholds: torch.Tensor) -> LayerTally:
        return LayerTally(name, thresholds, num_concepts=self.C, category_of=self.cat_of,
                          num_categories=self.K, convention=self.conv, geometry_for=self.geometry_for,
                          backend=self.backend, device=self.device)

    def quantiles(self, results) -> dict:
        qs = [1.0 - float(f) for f in level_fractions()] + [float(self.conv.quantile)]
        return {f"{n}/quantiles": LayerQuantiles(n, qs, samples=self.num_samples, mode=self.quantile_mode,
                                                 min_quantile=0.0, upsample=self.geometry_for,
                                                 device=self.device) for n in self.layers}

    def level_counts(self, results) -> dict:
        accs = {}
        for n in self.layers:
            values = results["quantiles"][f"{n}/quantiles"].to(self.device)
            accs[f"{n}/levels"] = LayerLevelCounts(
                n, values[:, :NUM_LEVELS].contiguous(), num_concepts=self.C, category_of=self.cat_of,
                num_categories=self.K, geometry_for=self.geometry_for, device=self.device)
            accs[f"{n}/quantile_iou"] = self._tally(n, values[:, NUM_LEVELS].contiguous())
        return accs

    def tally(self, results) -> dict:
        accs = {}
        for n in self.layers:
            levels = results["quantiles"][f"{n}/quantiles"][:, :NUM_LEVELS].to(self.device)
            unit_thr = unit_search(results["level_counts"][f"{n}/levels"], levels, self.C)[3]
            accs[f"{n}/counts"] = self._tally(n, unit_thr)
            accs[f"{n}/topk"] = LayerTopK(n, self.top_k, device=self.device)
        return accs

    def passes(self) -> list[Pass]:
        return [Pass("quantiles", self.quantiles), Pass("level_counts", self.level_counts),
                Pass("tally", self.tally)]


def _checked(generator, layers, convention, quantile_mode, num_samples, batch_size):
    """(convention, layer names, quantile mode) after checking every argument (clear errors)."""
    conv = get_convention(convention)
    if quantile_mode is None:
        quantile_mode = "auto" if conv.name == "exact" else "sketch"
    if quantile_mode not in QUANTILE_MODES:
        raise ValueError(f"quantile_mode must be None or one of {QUANTILE_MODES}, got {quantile_mode!r}")
    if conv.geometry == "receptive-field":
        raise ValueError(f"convention {conv.name!r} needs receptive-field geometry, which GAN "
                         "dissection does not use; choose 'exact' or 'gandissect'")
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be an nn.Module, got {type(generator).__name__}")
    layers = as_specs(generator, layers)
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return conv, layers, quantile_mode


def dissect_generator(generator: nn.Module, layers: "str | LayerSpec | Sequence[str | LayerSpec]", segmenter, *,
                      num_samples: int, seed: int = 0, z_sampler: Callable | None = None,
                      z_dim: int | None = None, convention: str = "exact", batch_size: int = 32,
                      device=None, out_dir=None, progress: bool = True, backend: str = "auto",
                      top_k: int | None = None, resume: bool = True,
                      checkpoint_interval: float = 120.0, quantile_mode: str | None = None,
                      checkpoint_dir=None, cache_bytes: int | None = None) -> DissectionResult:
    """GAN dissection of `layers` of `generator` on num_samples z (z_i depends only on (seed, i),
    or z_sampler(indices) -> z). segmenter(images) -> class ids [B, (L,) H, W] with attribute
    num_classes (optional concept_names, category_names, category_of); class 0 = background.
    convention "exact" (exact quantiles) or "gandissect" (quantile sketch, GD's detector rule).
    Returns a DissectionResult (thresholds [U] = each unit's IQR-chosen threshold; iou/iqr at it;
    counts: intersection, truth, activation, search_iqr, search_threshold, quantile_iou); with
    out_dir also saves results, exemplar strips and the report site (index.html) there. Under
    torch.distributed each rank takes a contiguous shard of the sample indices and the accumulators merge across
    ranks after every pass (every rank returns the merged result; rank 0 writes). Accumulators
    checkpoint into checkpoint_dir (default out_dir) every checkpoint_interval seconds and at
    pass boundaries; a rerun with identical inputs resumes (resume=False starts over).
    quantile_mode (pass 1's levels): None = the convention's ("auto" for "exact": exact while
    the kept values fit 2 GiB, so memory grows with num_samples up to that budget; "sketch" for
    "gandissect"); "sketch" = bounded memory (use it for large runs); "exact" = exact quantiles
    or a clear error when over the budget. cache_bytes bounds the activation cache (captured
    maps and the segmenter's labels of pass 1, reused by passes 2 and 3 instead of generating
    and segmenting again; None: a quarter of memory, at most 8 GiB; 0: off)."""
    conv, specs, quantile_mode = _checked(generator, layers, convention, quantile_mode, num_samples,
                                          batch_size)
    layers = [s.key for s in specs]
    device = torch.device(device) if device is not None else \
        next((p.device for p in generator.parameters()), torch.device("cpu"))
    top_k = conv.top_images if top_k is None else int(top_k)
    plan = GanPlan(layers, segmenter, conv, num_samples, quantile_mode, top_k, backend, device)
    z_of = make_z_sampler(generator, seed, z_dim, z_sampler, device)
    ckpt_root = checkpoint_dir if checkpoint_dir is not None else out_dir
    ckpt = None if ckpt_root is None else CheckpointSpec(ckpt_root, "gan", dict(
        layers=[repr(s) for s in specs], num_samples=num_samples, seed=seed, z_dim=z_dim, convention=conv.name,
        z_sampler=None if z_sampler is None else getattr(z_sampler, "__qualname__", repr(z_sampler)),
        batch_size=batch_size, top_k=top_k, quantile_mode=quantile_mode,
        segmenter=[type(segmenter).__qualname__, plan.C, plan.names, plan.cat_names,
                   plan.cat_of.tolist()]), checkpoint_interval, resume)

    def annotate(step) -> None:
        step.data["labels"] = segment(segmenter, step.output, plan.C)

    def write(result, output) -> None:
        from dissect_kernels.report.gan import write_gan
        write_gan(out_dir, result, generated_exemplars(generator, segmenter, result, z_of, batch_size, specs))

    return run_passes(generator, IndexSource(num_samples, z_of, batch_size=batch_size), plan.passes(),
                      layers=specs, device=device, progress=progress, annotate=annotate,
                      checkpoint=ckpt, check_finite=False, desc="gan", cache_bytes=cache_bytes,
                      finish=lambda output: build_result(plan, output, seed, batch_size, segmenter, generator),
                      write=write if out_dir is not None else None)


def build_result(plan: GanPlan, output, seed, batch_size, segmenter, generator) -> DissectionResult:
    """The DissectionResult of a finished GAN dissection."""
    res, conv = output.results, plan.conv
    layers = {}
    for name in plan.layers:
        quantiles = res["quantiles"][f"{name}/quantiles"]
        max_iqr, pair_thr, label, unit_thr = unit_search(
            res["level_counts"][f"{name}/levels"], quantiles[:, :NUM_LEVELS], plan.C)
        t = tally_from_counts(res["tally"][f"{name}/counts"], conv)
        iou = t.iou()
        top = res["tally"][f"{name}/topk"]
        layers[name] = LayerResult.build(
            name, iou, unit_thr, label, iou.gather(1, label.clamp(min=0)[:, None])[:, 0],
            concept_names=plan.names, category_names=plan.cat_names, category_of=plan.cat_of,
            convention=conv, iqr=t.iqr(), topk_indices=top["indices"], topk_values=top["values"],
            counts={"intersection": t.intersection, "truth": t.truth, "activation": t.activation,
                    "search_iqr": max_iqr, "search_threshold": pair_thr,
                    "quantile_iou": tally_from_counts(res["level_counts"][f"{name}/quantile_iou"], conv).iou(),
                    "quantile_threshold": quantiles[:, NUM_LEVELS]},
            extra={"mode": "gan", "levels": f"Q(1-f), f = logspace(-3, 0, {NUM_LEVELS})",
                   "label_rule": "argmax over concepts of the max IQR; threshold at the label"})
    return DissectionResult(
        layers, convention=conv.name, model={"name": type(generator).__name__},
        dataset={"kind": "generated", "num_samples": plan.num_samples, "seed": seed,
                 "segmenter": type(segmenter).__name__},
        parameters={"batch_size": batch_size, "layers": plan.layers, "quantile": conv.quantile,
                    "levels": NUM_LEVELS, "agreement": AGREEMENT, "top_k": plan.top_k,
                    "quantile_mode": plan.quantile_mode},
        timing=dict(output.timing))


def generated_exemplars(generator, segmenter, result: DissectionResult, z_of, batch_size: int,
                        layers=None) -> dict:
    """Regenerate every unit's top samples (z is a function of the index): {layer: {sample:
    (image uint8 [H, W, 3], masks bool [U, H', W'])}}, mask = upsampled map > the unit's
    threshold, for the report's exemplar strips. `layers`: the LayerSpecs dissected (default:
    the result's layer names as plain modules)."""
    C = segmenter_info(segmenter)[0]
    specs = {s.key: s for s in (layers or [])}
    out = {}
    for name, lr in result.layers.items():
        wanted = torch.unique(lr.topk_indices[lr.topk_indices >= 0])      # -1: fewer samples than k
        geometry = Geometry.named(get_convention(result.convention).geometry)
        found = out.setdefault(name, {})
        for s in range(0, len(wanted), batch_size):
            idx = wanted[s:s + batch_size]
            with torch.inference_mode():
                view = LayerView.of(specs.get(name) or as_spec(name))
                acts, images = capture(generator, z_of(idx), [view], run_to_end=True, check_finite=False)
                labels = segment(segmenter, images, C)
                up = upsample_to(acts[name], labels.shape[-2:], lambda src, dst: geometry)
            masks = up > lr.thresholds.to(up.device)[None, :, None, None]
            pix = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            for j, i in enumerate(idx.tolist()):
                found[i] = (pix[j], masks[j].cpu())
    return out
