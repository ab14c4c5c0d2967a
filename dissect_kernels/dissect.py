"""Classifier dissection driver: two streaming passes over a labelled dataset.

Pass 1 streams every layer's activations into a per-unit QuantileSketch (thresholds) and a TopK
of per-image maxima (exemplars). Pass 2 streams the fused tally into an IoUTally under the chosen
convention and keeps the thresholded masks of each unit's exemplar images for the report.
Memory depends on units x concepts x sketch size, never on the number of images. With out_dir,
accumulators checkpoint atomically and a rerun with identical inputs resumes; under torchrun
each rank takes a shard and accumulators merge across ranks (rank 0 writes)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from dissect_kernels import distributed as ddp
from dissect_kernels import hooks
from dissect_kernels.checkpoint import Checkpointer, content_hash, dataset_identity
from dissect_kernels.conventions import Convention, get_convention
from dissect_kernels.data.loading import SampleLoader
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.tally import upsample
from dissect_kernels.stats.iou_tally import IoUTally
from dissect_kernels.stats.quantile import QuantileSketch
from dissect_kernels.stats.topk import TopK

ACCUMULATORS = ("sketch", "topk", "tally")


@dataclass
class LayerState:
    """Accumulators and settings for one (possibly rotated) layer."""

    name: str
    source: str                      # the model layer it reads
    rotation_seed: int | None        # rotate the units by a seeded orthogonal matrix
    rotation: torch.Tensor | None = None
    shape: dict | None = None        # U, h, w, H, W once the first batch has been seen
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


def check_activations(layer: str, a, indices) -> None:
    """A layer's output must be a finite floating-point [B, U, h, w] map; errors name the layer
    and the first image with NaN/Inf."""
    if not isinstance(a, torch.Tensor) or not a.dtype.is_floating_point:
        what = a.dtype if isinstance(a, torch.Tensor) else type(a).__name__
        raise TypeError(f"layer {layer!r} outputs {what}; dissection needs a floating-point "
                        "[batch, units, height, width] feature map")
    if a.dim() != 4:
        raise ValueError(f"layer {layer!r} output has shape {tuple(a.shape)}; "
                         "dissection needs a [batch, units, height, width] feature map")
    bad = ~torch.isfinite(a).flatten(1).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        kind = "NaN" if bool(torch.isnan(a[row]).any()) else "Inf"
        units = (~torch.isfinite(a[row])).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"layer {layer!r} output contains {kind} values for image "
                         f"{int(indices[row])} (units {units[:8]}); dissection needs finite "
                         "activations")


def dissect(model: torch.nn.Module, layers: "str | Iterable[str]", dataset, *,
            convention: "str | Convention" = "exact", quantile: float | None = None,
            geometry=None, receptive_fields: dict | None = None, batch_size: int = 32,
            device=None, out_dir=None, progress: bool = True, backend: str = "auto",
            rotation: int | None = None, top_k: int | None = None, quantile_mode: str = "auto",
            num_workers: int = 0, report: bool = True, checkpoint_interval: float = 120.0,
            resume: bool = True):
    """Dissect `layers` of `model` on a Broden-format `dataset` (see BrodenDataset).

    Returns a DissectionResult; with out_dir, also writes results.safetensors, units.csv,
    summary.json and report.html there (from rank 0 only under torch.distributed).
    `rotation=seed` adds, per layer, the same layer under a random orthogonal rotation of its
    units (the NetDissect axis-alignment test). `convention` picks the reference whose rules to
    follow; `quantile`, `geometry` and `top_k` override the convention's."""
    run = DissectionRun(model, layers, dataset, convention=convention, quantile=quantile,
                        geometry=geometry, receptive_fields=receptive_fields,
                        batch_size=batch_size, device=device, out_dir=out_dir,
                        progress=progress, backend=backend, rotation=rotation, top_k=top_k,
                        quantile_mode=quantile_mode, num_workers=num_workers,
                        checkpoint_interval=checkpoint_interval, resume=resume)
    result = run.run()
    if out_dir is not None and ddp.rank() == 0:
        write_outputs(out_dir, result, run, report)
        if run.checkpointer is not None:
            run.checkpointer.clear()
    ddp.barrier()
    return result


def write_outputs(out_dir, result, run: "DissectionRun", report: bool) -> None:
    """Write the exemplar strips, results files and report.html all or nothing: strips go to a
    staging folder, the four files replace the old ones in one atomic_write, then the strips are
    moved in (renames). On any error (e.g. a full disk) an earlier run's files stay intact and
    the run's checkpoint stays for a resume."""
    import shutil
    import tempfile

    from dissect_kernels.results import save_results

    out = Path(out_dir)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        save_exemplar_strips(stage, result, run)
        extra = {}
        if report:
            from dissect_kernels.report.html import REPORT_FILE, html_page, report_body
            title = "Network dissection report"
            page = html_page(title, report_body(stage, result, title))
            extra[REPORT_FILE] = lambda path: Path(path).write_text(page, encoding="utf-8")
        save_results(out, result, extra_files=extra)
        for strip in sorted(p for p in stage.rglob("*") if p.is_file()):
            dest = out / strip.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            strip.replace(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def layer_context(name: str):
    """Re-raise an op's ValueError/TypeError with the layer's name in front (chained)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if f"layer {name!r}" in str(err):
            raise
        try:
            named = type(err)(f"layer {name!r}: {err}")
        except Exception:  # noqa: BLE001 - an exception type that needs other arguments
            raise err from None
        raise named from err


class DissectionRun:
    """One dissection: validates inputs, runs both passes with checkpoints, builds the result."""

    def __init__(self, model, layers, dataset, *, convention, quantile, geometry,
                 receptive_fields, batch_size, device, out_dir, progress, backend, rotation,
                 top_k, quantile_mode, num_workers, checkpoint_interval, resume):
        self.conv = get_convention(convention)
        self.q = self.conv.quantile if quantile is None else float(quantile)
        if self.q is None or not 0.0 < self.q < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.q!r} (convention {self.conv.name!r})")
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("layers is empty: name at least one module of the model")
        for name in self.layers:
            hooks.get_module(model, name)
        if len(dataset) == 0:
            raise ValueError("dataset is empty: nothing to dissect")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.dataset = dataset
        self.geometry, self.receptive_fields = geometry, receptive_fields
        self.progress, self.backend, self.quantile_mode = progress, backend, quantile_mode
        self.k = top_k or self.conv.top_images
        self.states = [LayerState(n, n, None) for n in self.layers]
        if rotation is not None:
            self.states += [LayerState(f"{n}@rot{rotation}", n, int(rotation)) for n in self.layers]
        shard = dataset if ddp.world_size() == 1 else Subset(dataset, ddp.shard_indices(len(dataset)))
        self.loader = SampleLoader(shard, batch_size=batch_size, num_workers=num_workers,
                                   drop_categories=self.conv.excluded_categories,
                                   meta=dataset)
        self.checkpointer = None
        if out_dir is not None:
            from dissect_kernels.results import ensure_dir
            ensure_dir(out_dir)          # an unwritable out_dir fails now, not after both passes
            key = content_hash(model, layers=self.layers, dataset=dataset_identity(dataset),
                               convention=self.conv.name, quantile=self.q, geometry=str(geometry),
                               receptive_fields=receptive_fields, batch_size=batch_size,
                               rotation=rotation, top_k=self.k, quantile_mode=quantile_mode,
                               rank=ddp.rank(), world=ddp.world_size())
            ckdir = Path(out_dir) / ".checkpoint" / f"rank{ddp.rank()}"
            self.checkpointer = Checkpointer(ckdir, key, checkpoint_interval)
            if not resume:
                self.checkpointer.clear()
        self.seconds = 0.0

    # ---------------------------------------------------------------- passes
    def run(self):
        started = time.time()
        restored = self._restore()
        phase, done = (restored or {}).get("phase", 1), (restored or {}).get("batches", 0)
        if restored and self.progress and ddp.rank() == 0:
            tqdm.write(f"resuming from checkpoint: pass {phase}/2, batch {done}/{len(self.loader)}")
        with torch.no_grad():
            if phase == 1:
                self._stream(1, done, self._quantile_step)
                self._finish_quantiles()
                phase, done = 2, 0
                self._save(2, 0)
            self._stream(2, done, self._tally_step)
            if done < len(self.loader):
                self._save(2, len(self.loader))   # writing the outputs may fail: lose nothing
        for s in self.states:
            ddp.merge_across_ranks(s.tally)
            self._gather_masks(s)
        self.seconds = time.time() - started
        return build_result(self)

    def _stream(self, phase: int, skip: int, step) -> None:
        desc = "pass 1/2 quantiles" if phase == 1 else "pass 2/2 tally"
        bar = tqdm(total=len(self.loader), initial=skip, desc=desc, unit="batch",
                   disable=not self.progress or ddp.rank() != 0)
        for i, batch in enumerate(self.loader.iterate(start_batch=skip), start=skip):
            if batch is not None:
                step(batch, self._features(batch.images, batch.indices))
            bar.update(1)
            if self.checkpointer is not None:
                self.checkpointer.maybe_save(self._progress(phase, i + 1), self._tensors)
        bar.close()

    def _features(self, images, indices) -> dict[str, torch.Tensor]:
        sources = sorted({s.source for s in self.states})
        acts = hooks.run_layers(self.model, images.to(self.device), sources)
        for name in sources:
            check_activations(name, acts[name], indices)
        out = {}
        for s in self.states:
            a = acts[s.source]
            if s.rotation_seed is not None:
                if s.rotation is None:
                    s.rotation = random_rotation(a.shape[1], s.rotation_seed)
                a = torch.einsum("bchw,dc->bdhw", a.float(), s.rotation.to(a.device))
            out[s.name] = a
        return out

    def _quantile_step(self, batch, feats) -> None:
        """Pass 1: thresholds (streaming quantiles) and top-k exemplar images per unit."""
        for s in self.states:
            a = feats[s.name]
            with layer_context(s.name):
                if s.sketch is None:
                    B, U, h, w = a.shape
                    H, W = batch.labels.shape[-2:]
                    self._init_state(s, dict(U=U, h=h, w=w, H=int(H), W=int(W)))
                if self.conv.quantile_population == "upsampled":
                    s.sketch.update(upsample(a, *self._tables(s, a.device)))
                else:
                    s.sketch.update(a)
                s.topk.update(a.float().amax(dim=(2, 3)), batch.indices.to(a.device))

    def _init_state(self, s: LayerState, shape: dict) -> None:
        s.shape = shape
        s.geometry = self._geometry(s.source, shape["H"] / shape["h"])
        per_image = shape["H"] * shape["W"] if self.conv.quantile_population == "upsampled" \
            else shape["h"] * shape["w"]
        U = shape["U"]
        s.sketch = QuantileSketch(U, mode=self.quantile_mode, min_quantile=min(self.q, 0.99),
                                  expected_count=len(self.dataset) * per_image, device=self.device)
        s.topk = TopK(U, self.k, device=self.device)
        s.tally = IoUTally(U, self.loader.num_concepts, self.loader.category_of.to(self.device),
                           num_categories=self.loader.num_categories, convention=self.conv,
                           device=self.device)

    def _tables(self, s: LayerState, device):
        shape = s.shape
        return [t.to(device) for t in s.geometry.tables((shape["h"], shape["w"]), (shape["H"], shape["W"]))]

    def _geometry(self, layer: str, ratio: float) -> Geometry:
        if self.geometry is not None:
            return Geometry.named(self.geometry)
        if self.conv.geometry == "receptive-field":
            if not self.receptive_fields or layer not in self.receptive_fields:
                raise ValueError(
                    f"convention {self.conv.name!r} upsamples through receptive-field centres: "
                    f"pass receptive_fields={{{layer!r}: (offset, size, stride)}} or geometry=")
            offset, size, stride = self.receptive_fields[layer]
            return Geometry.receptive_field(offset, size, stride, ratio=max(1, round(ratio)))
        return Geometry.named(self.conv.geometry)

    def _finish_quantiles(self) -> None:
        for s in self.states:
            if s.sketch is None:
                first = next(iter(sorted(self.loader.skipped.items())), (None, "none"))
                raise ValueError("no readable images in the dataset: every sample was skipped "
                                 f"({len(self.loader.skipped)} unreadable; the first: {first[1]})")
            ddp.merge_across_ranks(s.sketch)
            ddp.merge_across_ranks(s.topk)
            s.thresholds = s.sketch.quantile(self.q).float()
            self._plan_exemplars(s)

    def _plan_exemplars(self, s: LayerState) -> None:
        s.wanted = {}
        _, top = s.topk.result()
        for u, row in enumerate(top.tolist()):
            for i in row:
                if i >= 0:
                    s.wanted.setdefault(int(i), []).append(u)

    def _tally_step(self, batch, feats) -> None:
        """Pass 2: the fused tally into each layer's IoUTally, plus exemplar masks."""
        labels = batch.labels.to(self.device)
        image_labels = None if batch.image_labels is None else batch.image_labels.to(self.device)
        stats = self.states[0].tally.batch_stats(labels, image_labels)  # same for every layer
        for s in self.states:
            a = feats[s.name]
            with layer_context(s.name):
                s.tally.update(a, s.thresholds.to(a.device), labels, image_labels,
                               geometry=s.geometry, backend=self.backend, stats=stats)
            self._keep_exemplar_masks(s, a, batch)

    def _keep_exemplar_masks(self, s: LayerState, a: torch.Tensor, batch) -> None:
        tables = None
        for row, index in enumerate(batch.indices.tolist()):
            units = s.wanted.get(int(index))
            if not units:
                continue
            tables = tables or self._tables(s, a.device)
            sel = torch.tensor(units, device=a.device)
            up = upsample(a[row:row + 1, sel], *tables)[0]
            masks = (up > s.thresholds.to(a.device)[sel, None, None]).cpu()
            for j, u in enumerate(units):
                s.exemplar_masks[(u, int(index))] = masks[j]

    def _gather_masks(self, s: LayerState) -> None:
        if ddp.world_size() == 1:
            return
        import torch.distributed as dist
        parts: list = [None] * ddp.world_size()
        dist.all_gather_object(parts, s.exemplar_masks)
        for part in parts:
            s.exemplar_masks.update(part)

    # ----------------------------------------------------------- checkpoints
    def _progress(self, phase: int, batches: int) -> dict:
        return {"phase": phase, "batches": batches,
                "shapes": {s.name: s.shape for s in self.states},
                "skipped": {str(k): v for k, v in self.loader.skipped.items()},
                "filtered": sorted(self.loader.filtered)}

    def _tensors(self) -> dict:
        out = {}
        for s in self.states:
            for acc in ACCUMULATORS:
                obj = getattr(s, acc)
                if obj is not None:
                    out.update({f"{s.name}/{acc}/{k}": v for k, v in obj.state_dict().items()})
            if s.thresholds is not None:
                out[f"{s.name}/thresholds"] = s.thresholds
            if s.exemplar_masks:
                keys = sorted(s.exemplar_masks)
                out[f"{s.name}/exemplar_keys"] = torch.tensor(keys, dtype=torch.int64)
                out[f"{s.name}/exemplar_masks"] = torch.stack([s.exemplar_masks[k] for k in keys])
        return out

    def _save(self, phase: int, batches: int) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self._progress(phase, batches), self._tensors())

    def _restore(self) -> dict | None:
        if self.checkpointer is None:
            return None
        loaded = self.checkpointer.load()
        if loaded is None:
            return None
        progress, tensors = loaded
        for s in self.states:
            shape = progress["shapes"].get(s.name)
            if shape is None:
                continue
            self._init_state(s, shape)
            for acc in ACCUMULATORS:
                prefix = f"{s.name}/{acc}/"
                part = {k[len(prefix):]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}
                if part:
                    getattr(s, acc).load_state_dict(part)
            if f"{s.name}/thresholds" in tensors:
                s.thresholds = tensors[f"{s.name}/thresholds"].to(self.device)
                self._plan_exemplars(s)
            if f"{s.name}/exemplar_keys" in tensors:
                keys = tensors[f"{s.name}/exemplar_keys"].tolist()
                masks = tensors[f"{s.name}/exemplar_masks"]
                s.exemplar_masks = {tuple(k): masks[i] for i, k in enumerate(keys)}
        self.loader.skipped.update({int(k): v for k, v in progress["skipped"].items()})
        self.loader.filtered.update(progress["filtered"])
        return progress


def build_result(run: DissectionRun):
    """The DissectionResult of a finished run (labels, detectors, thresholds, counts, top-k)."""
    from dissect_kernels.results import DissectionResult, LayerResult

    ds = run.dataset
    layers = []
    for s in run.states:
        label, best = s.tally.best()
        iqr = s.tally.iqr() if run.conv.detector_iqr is not None else None
        values, indices = s.topk.result()
        layers.append(LayerResult.build(
            s.name, s.tally.iou(), s.thresholds, label, best, iqr=iqr,
            concept_names=ds.concept_names, category_names=ds.category_names,
            category_of=run.loader.category_of, convention=run.conv,
            counts=s.tally.state_dict(), topk_indices=indices, topk_values=values,
            rotation=s.rotation,
            rotation_info={} if s.rotation_seed is None else {"seed": s.rotation_seed, "of": s.source}))
    skipped = dict(run.loader.skipped)
    reasons = {}
    if skipped:
        reasons["unreadable"] = len(skipped)
    if run.loader.filtered:
        reasons["no labels in the convention's categories"] = len(run.loader.filtered)
    return DissectionResult(
        layers, convention=run.conv.name,
        model={"class": type(run.model).__name__, "layers": run.layers},
        dataset={"type": type(ds).__name__, "images": len(ds),
                 "root": str(getattr(ds, "root", "")),
                 "skipped_samples": {str(i): skipped[i] for i in sorted(skipped)}},
        parameters={"quantile": run.q, "top_k": run.k, "backend": run.backend,
                    "quantile_mode": run.quantile_mode, "device": str(run.device)},
        skipped=len(skipped) + len(run.loader.filtered), skip_reasons=reasons,
        timing={"total": run.seconds})


def save_exemplar_strips(out_dir, result, run: DissectionRun) -> None:
    """Render each unit's top-k images with its thresholded mask (report strips)."""
    from dissect_kernels.report.exemplars import save_strip

    cache: dict[int, object] = {}

    def image(i: int):
        if i not in cache:
            cache[i] = run.dataset.load_image_uint8(i)
        return cache[i]

    for s in run.states:
        lr = result.layers[s.name]
        for u, row in enumerate(lr.topk_indices.tolist()):
            keys = [(u, int(i)) for i in row if i >= 0 and (u, int(i)) in s.exemplar_masks]
            if not keys:
                continue
            images = np.stack([image(i) for _, i in keys])
            masks = torch.stack([s.exemplar_masks[k] for k in keys]).numpy()
            lr.exemplar_strips[u] = save_strip(out_dir, s.name, u, images, masks)
