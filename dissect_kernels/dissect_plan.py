"""The accumulators of a classifier dissection, pass by pass: what dissect() runs (see
dissect.py). Pass 1 ("quantiles"): per view a QuantileSketch (the thresholds) and a TopK of
per-sample maxima; pass 2 ("tally"): the fused tally into an IoUTally and the exemplars'
source maps. With fixed thresholds: the tally + top-k, then the exemplar maps from the top-k
images only."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.engine import DatasetSource, LayerView, Pass
from dissect_kernels.engine.layers import as_specs
from dissect_kernels.engine.layer_stats import (ExemplarMaps, ExemplarMasks, LayerQuantiles, LayerTally,
                                                LayerTopK)
from dissect_kernels.geometry import Geometry
from dissect_kernels.receptive_field import plan_receptive_fields
from dissect_kernels.rotation import Rotation


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
    specs: list = field(default_factory=list)       # the LayerSpecs the views read
    image_hw: tuple | None = None                   # input image size (receptive-field ratio)
    max_bytes: dict = field(default_factory=dict)   # view name -> quantile state budget
    estimate: dict = field(default_factory=dict)    # what size_up found (bytes)

    def size_up(self, shapes: dict, budget: int | None) -> dict:
        """Estimate the run's memory from the probed view shapes {view: (U, h, w, itemsize)} and,
        under a budget, give each view's quantiles exact mode only where it fits (else the
        sketch); a run that cannot fit is refused now. Returns the estimate (bytes)."""
        from dissect_kernels.engine.memory import RESULT_FACTOR, exact_bytes, gib, sketch_bytes
        ds, q_min, n = self.dataset, min(self.q, 0.99), len(self.dataset)
        label = getattr(ds, "label_size", None)
        label = (label, label) if isinstance(label, int) else label
        upsampled = self.conv.quantile_population == "upsampled" and label is not None
        share = None if budget is None else budget // 2 // max(1, len(shapes))
        est = {"quantiles": 0, "counts": 0, "cache": 0, "modes": {}}
        for name, (U, h, w, itemsize) in shapes.items():
            count = n * (label[0] * label[1] if upsampled else h * w)
            exact, sketch = exact_bytes(U, count, q_min), sketch_bytes(U, q_min)
            mode = "given" if self.given is not None else self.quantile_mode if self.quantile_mode != "auto" \
                else "exact" if exact <= (share if share is not None else 2 << 30) else "sketch"
            self.max_bytes[name] = max(exact, share or 0) if mode == "exact" else (share or 2 << 30)
            est["modes"][name] = mode
            est["quantiles"] += {"exact": exact, "sketch": sketch}.get(mode, 0)
            est["counts"] += U * int(ds.num_concepts) * 8 * RESULT_FACTOR
            est["cache"] += n * U * h * w * (4 if name in self.rotated else itemsize)
        need = est["quantiles"] + est["counts"]
        if budget is not None and need > budget:
            raise ValueError(f"this run needs about {gib(need)} (quantiles {gib(est['quantiles'])}, IoU counts "
                             f"and results {gib(est['counts'])}), over the memory budget of {gib(budget)}: "
                             "raise the budget, use quantile_mode='sketch', or dissect fewer layers at once")
        self.estimate = est
        return est

    def key(self) -> dict:
        """What of the plan decides the results (for the checkpoint key)."""
        return dict(layers=[repr(s) for s in self.specs], convention=self.conv.name, quantile=self.q,
                    top_k=self.k, quantile_mode=self.quantile_mode, modes=self.estimate.get("modes"),
                    thresholds=None if self.given is None else {k: v.tolist() for k, v in self.given.items()})
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
            fy, fx = self.receptive_fields[module]          # field maps in image pixels
            ratio = tuple(max(1, round(i / d)) for i, d in zip(self.image_hw or dst, dst))
            return Geometry.receptive_field((fy.offset, fx.offset), (fy.size, fx.size),
                                            (fy.stride, fx.stride), ratio)
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
                min_quantile=min(self.q, 0.99), device=self.device, max_bytes=self.max_bytes.get(v.name),
                convention=self.conv,
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
                maps, self.thresholds(v.name, results), self.geometry_for(v.module), self.conv.threshold_compare)}
        return out


STAGES = {"data": "decode", "forward": "forward", "cache": "cache", "LayerQuantiles": "quantile",
          "LayerTopK": "top-k", "LayerTally": "tally", "ExemplarMaps": "exemplars"}


def make_plan(model, layers, dataset, *, convention, quantile, geometry, receptive_fields, top_k,
              quantile_mode, backend, device, exemplars, rotation, batch_size, thresholds) -> Plan:
    """A checked Plan: the convention, the quantile, one view per layer (and per rotated layer)."""
    conv = get_convention(convention)
    q = conv.quantile if quantile is None else float(quantile)
    if q is None or not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {q!r} (convention {conv.name!r})")
    specs = as_specs(model, layers)
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to dissect")
    views = [LayerView.of(s) for s in specs]
    rotated = {} if rotation is None else {f"{s.key}@rot{rotation}": (int(rotation), s.key) for s in specs}
    views += [LayerView.of(s, name, Rotation(rotation)) for s, name in zip(specs, rotated)]
    source = "quantile pass" if thresholds is None else \
        str(thresholds) if isinstance(thresholds, (str, Path)) else "given (thresholds=)"
    image_hw = None
    if conv.geometry == "receptive-field" and geometry is None:   # fields traced from the model
        receptive_fields, image_hw = plan_receptive_fields(model, [v.module for v in views], dataset,
                                                           receptive_fields)
    return Plan(conv, q, views, dataset, geometry, receptive_fields, top_k or conv.top_images,
                quantile_mode, backend, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")),
                exemplars=exemplars, model_name=type(model).__name__, rotated=rotated, batch_size=batch_size,
                given=None if thresholds is None else given_thresholds(thresholds, views),
                threshold_source=source, specs=specs, image_hw=image_hw)


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
    out = {v.name: _as_thresholds(thresholds[v.name]) for v in views}
    bad = {name: tuple(t.shape) for name, t in out.items() if t.dim() != 1}
    if bad:
        raise ValueError(f"thresholds must be one value per unit [U]; got shapes {bad}")
    return out


def _as_thresholds(t) -> torch.Tensor:
    """A given threshold vector on the CPU: float64 stays float64 (compared exactly, as
    NetDissect-Lite compares its float64 thresholds), anything else becomes float32."""
    t = torch.as_tensor(t).cpu()
    return t if t.dtype == torch.float64 else t.float()
