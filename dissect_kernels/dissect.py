"""Classifier dissection driver: two streaming passes over a labelled dataset.

Pass 1 streams every layer's activations into a per-unit QuantileSketch (thresholds) and a TopK
of per-image maxima (exemplars). Pass 2 streams the fused tally into an IoUTally under the chosen
convention, and keeps the thresholded masks of each unit's exemplar images for the report.
Memory depends on units x concepts x sketch size, never on the number of images."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from dissect_kernels import hooks
from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.data.loading import SampleLoader
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.tally import upsample
from dissect_kernels.stats.iou_tally import IoUTally
from dissect_kernels.stats.quantile import QuantileSketch, TopK


@dataclass
class _LayerState:
    """Accumulators for one (possibly rotated) layer."""

    name: str
    source: str                      # the model layer it reads
    rotation_seed: int | None        # rotate the units by a seeded orthogonal matrix
    rotation: torch.Tensor | None = None
    sketch: QuantileSketch | None = None
    topk: TopK | None = None
    tally: IoUTally | None = None
    thresholds: torch.Tensor | None = None
    geometry: Geometry | None = None
    exemplar_masks: dict = field(default_factory=dict)   # (unit, image index) -> bool [H, W]
    wanted: dict = field(default_factory=dict)           # image index -> [units]


def random_rotation(num_units: int, seed: int) -> torch.Tensor:
    """A random orthogonal [U, U] matrix (QR of a seeded Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(num_units, num_units, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def _features(model, images, layer_states, device) -> dict[str, torch.Tensor]:
    sources = sorted({s.source for s in layer_states})
    acts = hooks.run_layers(model, images.to(device), sources)
    out = {}
    for s in layer_states:
        a = acts[s.source]
        if a.dim() != 4:
            raise ValueError(f"layer {s.source!r} output has shape {tuple(a.shape)}; dissection "
                             "needs a [batch, units, height, width] feature map")
        if s.rotation_seed is not None:
            if s.rotation is None:
                s.rotation = random_rotation(a.shape[1], s.rotation_seed)
            a = torch.einsum("bchw,dc->bdhw", a.float(), s.rotation.to(a.device))
        out[s.name] = a
    return out


def _geometry(conv: Convention, layer: str, geometry, receptive_fields, ratio: float) -> Geometry:
    if geometry is not None:
        return Geometry.named(geometry)
    if conv.geometry == "receptive-field":
        if not receptive_fields or layer not in receptive_fields:
            raise ValueError(
                f"convention {conv.name!r} upsamples through receptive-field centres: pass "
                f"receptive_fields={{{layer!r}: (offset, size, stride)}} or an explicit geometry=")
        offset, size, stride = receptive_fields[layer]
        return Geometry.receptive_field(offset, size, stride, ratio=max(1, round(ratio)))
    return Geometry.named(conv.geometry)


def dissect(model: torch.nn.Module, layers: "str | Iterable[str]", dataset, *,
            convention: "str | Convention" = "exact", quantile: float | None = None,
            geometry=None, receptive_fields: dict | None = None, batch_size: int = 32,
            device=None, out_dir=None, progress: bool = True, backend: str = "auto",
            rotation: int | None = None, top_k: int | None = None, quantile_mode: str = "auto",
            num_workers: int = 0, report: bool = True):
    """Dissect `layers` of `model` on a Broden-format `dataset` (see BrodenDataset).

    Returns a DissectionResult; with out_dir, also writes results.safetensors, units.csv,
    summary.json and report.html there. `rotation=seed` adds, per layer, the same layer under a
    random orthogonal rotation of its units (the NetDissect axis-alignment test)."""
    from dissect_kernels.results import DissectionResult

    conv = get_convention(convention)
    q = conv.quantile if quantile is None else float(quantile)
    if q is None or not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {q!r} (convention {conv.name!r})")
    layer_list = [layers] if isinstance(layers, str) else list(layers)
    if not layer_list:
        raise ValueError("layers is empty: name at least one module of the model")
    for name in layer_list:
        hooks.get_module(model, name)
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to dissect")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    k = top_k or conv.top_images
    states = [_LayerState(n, n, None) for n in layer_list]
    if rotation is not None:
        states += [_LayerState(f"{n}@rot{rotation}", n, int(rotation)) for n in layer_list]
    loader = SampleLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                          drop_categories=conv.excluded_categories)
    started = time.time()
    with torch.no_grad():
        _pass_quantiles(model, loader, states, conv, q, k, quantile_mode, geometry,
                        receptive_fields, device, progress)
        _pass_tally(model, loader, states, conv, device, progress, backend)
    result = DissectionResult.from_dissection(
        states=states, dataset=dataset, convention=conv, quantile=q, loader=loader,
        seconds=time.time() - started, model=model, out_dir=out_dir)
    if out_dir is not None:
        from dissect_kernels.report import write_report
        from dissect_kernels.results import save_results
        save_results(out_dir, result)
        if report:
            write_report(out_dir, result)
    return result


def _pass_quantiles(model, loader, states, conv, q, k, quantile_mode, geometry, receptive_fields,
                    device, progress):
    """Pass 1: thresholds (streaming quantiles) and top-k exemplar images per unit."""
    n = len(loader.dataset)
    for batch in tqdm(loader, desc="pass 1/2 quantiles", disable=not progress, unit="batch"):
        feats = _features(model, batch.images, states, device)
        for s in states:
            a = feats[s.name]
            B, U, h, w = a.shape
            H, W = batch.labels.shape[-2:]
            if s.sketch is None:
                s.geometry = _geometry(conv, s.source, geometry, receptive_fields, H / h)
                upsampled = conv.quantile_population == "upsampled"
                per_image = H * W if upsampled else h * w
                s.sketch = QuantileSketch(U, mode=quantile_mode, min_quantile=min(q, 0.99),
                                          expected_count=n * per_image, device=a.device)
                s.topk = TopK(U, k, device=a.device)
                s.tally = IoUTally(U, loader.num_concepts, loader.category_of.to(a.device),
                                   num_categories=loader.num_categories, convention=conv,
                                   device=a.device)
            if conv.quantile_population == "upsampled":
                ytab, xtab = (t.to(a.device) for t in s.geometry.tables((h, w), (H, W)))
                s.sketch.update(upsample(a, ytab, xtab))
            else:
                s.sketch.update(a)
            s.topk.update(a.float().amax(dim=(2, 3)), batch.indices.to(a.device))
    for s in states:
        s.thresholds = s.sketch.quantile(q).float()
        _, top = s.topk.result()
        for u, row in enumerate(top.tolist()):
            for i in row:
                if i >= 0:
                    s.wanted.setdefault(int(i), []).append(u)


def _pass_tally(model, loader, states, conv, device, progress, backend):
    """Pass 2: the fused tally into each layer's IoUTally, plus exemplar masks."""
    for batch in tqdm(loader, desc="pass 2/2 tally", disable=not progress, unit="batch"):
        feats = _features(model, batch.images, states, device)
        labels = batch.labels.to(device)
        image_labels = None if batch.image_labels is None else batch.image_labels.to(device)
        for s in states:
            a = feats[s.name]
            s.tally.update(a, s.thresholds.to(a.device), labels, image_labels,
                           geometry=s.geometry, backend=backend)
            _keep_exemplar_masks(s, a, batch, labels.shape[-2:])


def _keep_exemplar_masks(s: _LayerState, a: torch.Tensor, batch, label_hw) -> None:
    h, w = a.shape[-2:]
    ytab = xtab = None
    for row, index in enumerate(batch.indices.tolist()):
        units = s.wanted.get(int(index))
        if not units:
            continue
        if ytab is None:
            ytab, xtab = (t.to(a.device) for t in s.geometry.tables((h, w), tuple(label_hw)))
        sel = torch.tensor(units, device=a.device)
        up = upsample(a[row:row + 1, sel], ytab, xtab)[0]
        masks = (up > s.thresholds.to(a.device)[sel, None, None]).cpu()
        for j, u in enumerate(units):
            s.exemplar_masks[(u, int(index))] = masks[j]

