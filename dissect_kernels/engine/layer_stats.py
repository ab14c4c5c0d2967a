"""Accumulators over one captured layer, ready for run_passes: the stats/ accumulators
(QuantileSketch, TopK, IoUTally, LevelCounts) sized from the first batch they see, fed from a
Step (the layer's map, the batch's labels and indices), and saved with what sizes them.

Maps are [B, U, h, w]; labels [B, L, H, W]. `geometry_for((h, w), (H, W))` gives the upsampling
geometry from a map's grid to the labels' (a convention's, or NetDissect's receptive fields)."""
from __future__ import annotations

from typing import Callable

import torch

from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import strict_thresholds
from dissect_kernels.ops.upsample import upsample as upsample_op
from dissect_kernels.stats.iou_tally import IoUTally
from dissect_kernels.stats.level_counts import LevelCounts
from dissect_kernels.stats.quantile import DEFAULT_MAX_BYTES, QuantileSketch
from dissect_kernels.stats.topk import TopK

GeometryFor = Callable[[tuple[int, int], tuple[int, int]], Geometry]


def upsample_to(a: torch.Tensor, size, geometry_for: GeometryFor) -> torch.Tensor:
    """a [B, U, h, w] upsampled to size (H, W) (dk.upsample): the maps the fused tally thresholds."""
    size = (int(size[0]), int(size[1]))
    return upsample_op(a, size, geometry=geometry_for(tuple(a.shape[2:]), size))


def _sizes(state: dict) -> list[int]:
    return [int(v) for v in state["sizes"]]


class LayerQuantiles:
    """Per-unit quantile(s) q of a layer's values over every position of every sample: of the
    raw maps, or (upsample=geometry_for) of the maps upsampled to the labels' size. `samples`
    (in the whole dataset) sizes the exact mode: samples x positions per sample."""

    def __init__(self, layer: str, q, *, samples: int, mode: str = "auto", min_quantile: float = 0.99,
                 upsample: GeometryFor | None = None, device=None, convention=None,
                 max_bytes: int | None = None):
        self.layers, self.q, self.samples = (layer,), q, int(samples)
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
        self.convention = convention     # its quantile readout and threshold dtype (None: linear, fp32)
        self.mode, self.min_quantile, self.upsample, self.device = mode, min_quantile, upsample, device
        self.needs_labels = upsample is not None          # upsampled to the labels' size
        self.sketch: QuantileSketch | None = None
        self.sizes: list[int] | None = None           # units, positions per sample

    def _make(self, units: int, per_sample: int) -> None:
        self.sizes = [units, per_sample]
        self.sketch = QuantileSketch(units, mode=self.mode, min_quantile=self.min_quantile,
                                     expected_count=self.samples * per_sample, device=self.device,
                                     max_bytes=self.max_bytes)

    def update(self, step) -> None:
        a = step.acts[self.layers[0]]
        if self.upsample is not None:
            a = upsample_to(a, step.labels.shape[-2:], self.upsample)
        if self.sketch is None:
            self._make(a.shape[1], a.shape[2] * a.shape[3])
        self.sketch.update(a)

    def merge(self, other: "LayerQuantiles") -> None:
        if other.sketch is None:
            return
        if self.sketch is None:
            self._make(*other.sizes)
        self.sketch.merge(other.sketch)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.sketch is None:
            return {}
        state = {f"sketch.{k}": v for k, v in self.sketch.state_dict().items()}
        return {"sizes": torch.tensor(self.sizes), **state}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._make(*_sizes(state))
        self.sketch.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("sketch.")})

    def finalize(self) -> torch.Tensor:
        """[U] float32 (float64 where the convention keeps float64 thresholds) for a scalar q,
        [U, len(q)] for a list; read out the convention's way (Convention.quantile_readout)."""
        if self.sketch is None:
            raise ValueError(f"layer {self.layers[0]!r}: no samples reached the quantiles "
                             "(every sample was skipped)")
        conv, n = self.convention, self.sketch.count
        q = self.q if conv is None else (
            [conv.readout_probability(float(p), n) for p in self.q] if isinstance(self.q, (list, tuple))
            else conv.readout_probability(float(self.q), n))
        t = self.sketch.quantile(q)
        return t.double() if conv is not None and conv.threshold_dtype == "float64" else t.float()


class LayerTopK:
    """Per unit, the k samples whose map has the highest maximum (with their indices)."""

    needs_labels = False

    def __init__(self, layer: str, k: int, *, device=None):
        self.layers, self.k, self.device = (layer,), int(k), device
        self.top: TopK | None = None

    def update(self, step) -> None:
        a = step.acts[self.layers[0]]
        if self.top is None:
            self.top = TopK(a.shape[1], self.k, device=self.device)
        self.top.update(a.amax(dim=(2, 3)).float(), step.indices.to(a.device))   # no fp32 copy

    def merge(self, other: "LayerTopK") -> None:
        if other.top is None:
            return
        if self.top is None:
            self.top = TopK(other.top.num_units, self.k, device=self.device)
        self.top.merge(other.top)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.top is None else self.top.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.top = TopK(int(state["values"].shape[0]), self.k, device=self.device)
        self.top.load_state_dict(state)

    def finalize(self) -> dict[str, torch.Tensor]:
        values, indices = self.top.result()
        return {"values": values.cpu(), "indices": indices.cpu()}


class LayerTally:
    """IoU counts of a layer at fixed per-unit thresholds [U], under a convention (IoUTally);
    the label statistics of a batch are computed once for every layer that shares them."""

    def __init__(self, layer: str, thresholds: torch.Tensor, *, num_concepts: int,
                 category_of: torch.Tensor, num_categories: int, convention,
                 geometry_for: GeometryFor, backend: str = "auto", device=None):
        self.layers, self.thresholds = (layer,), thresholds
        self.config = dict(num_concepts=num_concepts, category_of=category_of,
                           num_categories=num_categories, convention=convention)
        self.geometry_for, self.backend, self.device = geometry_for, backend, device
        self.tally: IoUTally | None = None

    def _make(self, units: int) -> None:
        cfg = self.config
        self.tally = IoUTally(units, cfg["num_concepts"], cfg["category_of"].to(self.device),
                              num_categories=cfg["num_categories"], convention=cfg["convention"],
                              device=self.device)

    def update(self, step) -> None:
        a = step.acts[self.layers[0]]
        if self.tally is None:
            self.device = self.device or a.device
            self._make(a.shape[1])
        labels, image_labels = step.labels, step.data.get("image_labels")
        stats = step.shared(f"label_stats/{self.tally.convention.name}",
                            lambda: self.tally.batch_stats(labels, image_labels))
        geometry = self.geometry_for(tuple(a.shape[2:]), tuple(labels.shape[-2:]))
        self.tally.update(a, self.thresholds.to(a.device), labels, image_labels,
                          geometry=geometry, backend=self.backend, stats=stats)

    def merge(self, other: "LayerTally") -> None:
        if other.tally is None:
            return
        if self.tally is None:
            self._make(other.tally.num_units)
        self.tally.merge(other.tally)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.tally is None else self.tally.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._make(_sizes(state)[0])
        self.tally.load_state_dict(state)

    def finalize(self) -> dict[str, torch.Tensor]:
        if self.tally is None:
            raise ValueError(f"layer {self.layers[0]!r}: no samples reached the tally")
        return self.tally.state_dict()


def tally_from_counts(counts: dict[str, torch.Tensor], convention) -> IoUTally:
    """The IoUTally that LayerTally.finalize() described (for scores: iou, best, iqr)."""
    U, C, K = (int(v) for v in counts["sizes"])
    tally = IoUTally(U, C, counts["category_of"], num_categories=K, convention=convention)
    tally.load_state_dict(counts)
    return tally


class LayerLevelCounts:
    """Exact counts of a layer's upsampled values above per-unit levels [U, NL], conditioned
    on labels and categories (LevelCounts: the counts behind GAN Dissection's IQR search)."""

    def __init__(self, layer: str, levels: torch.Tensor, *, num_concepts: int,
                 category_of: torch.Tensor, num_categories: int, geometry_for: GeometryFor,
                 device=None):
        self.layers = (layer,)
        self.counts = LevelCounts(levels, num_concepts, category_of, num_categories=num_categories,
                                  device=device)
        self.geometry_for = geometry_for

    def update(self, step) -> None:
        a = step.acts[self.layers[0]]
        self.counts.update(upsample_to(a, step.labels.shape[-2:], self.geometry_for), step.labels)

    def merge(self, other: "LayerLevelCounts") -> None:
        self.counts.merge(other.counts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.counts.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts.load_state_dict(state)

    def finalize(self) -> dict[str, torch.Tensor]:
        return self.counts.state_dict()


class ExemplarMaps:
    """The source maps [h, w] of each unit's exemplar samples (wanted [U, k] sample indices, -1 =
    none), kept only for those (unit, sample) pairs, as the layer gave them (dtype included):
    U * k * h * w values, so a layer of 16k units stays small. Their thresholded, upsampled
    masks are made when a report shows them (ExemplarMasks). finalize: keys [P, 2] (unit,
    sample) sorted, maps [P, h, w], size [2] = the labels' (H, W)."""

    def __init__(self, layer: str, wanted: torch.Tensor):
        self.layers = (layer,)
        self.units_of: dict[int, list[int]] = {}
        for u, row in enumerate(wanted.tolist()):
            for i in row:
                if i >= 0:
                    self.units_of.setdefault(int(i), []).append(u)
        self.maps: dict[tuple[int, int], torch.Tensor] = {}
        self.size = None

    def update(self, step) -> None:
        pairs = [(row, u, int(i)) for row, i in enumerate(step.indices.tolist())
                 for u in self.units_of.get(int(i), ())]
        if not pairs:
            return
        a = step.acts[self.layers[0]]
        self.size = torch.tensor(step.labels.shape[-2:])
        rows = torch.tensor([p[0] for p in pairs], device=a.device)
        units = torch.tensor([p[1] for p in pairs], device=a.device)
        maps = a[rows, units].cpu()                                        # [P, h, w]
        for j, (_, u, i) in enumerate(pairs):
            self.maps[(u, i)] = maps[j]

    def merge(self, other: "ExemplarMaps") -> None:
        self.maps.update(other.maps)
        self.size = self.size if other.size is None else other.size

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.maps:
            return {}
        keys = sorted(self.maps)
        return {"keys": torch.tensor(keys, dtype=torch.int64),
                "maps": torch.stack([self.maps[k] for k in keys]), "size": self.size}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.maps = {tuple(k): state["maps"][j] for j, k in enumerate(state["keys"].tolist())}
        self.size = state["size"]

    def finalize(self) -> dict[str, torch.Tensor]:
        return self.state_dict() or {"keys": torch.zeros(0, 2, dtype=torch.int64),
                                     "maps": torch.zeros(0, 1, 1), "size": torch.tensor([1, 1])}


class ExemplarMasks:
    """masks[j]: the bool [H, W] mask of ExemplarMaps' pair j, upsampled and thresholded on
    demand (dk.upsample: the maps the tally thresholded), so a report of many units never
    holds every mask at once."""

    def __init__(self, found: dict[str, torch.Tensor], thresholds: torch.Tensor, geometry_for: GeometryFor,
                 compare: str = ">"):
        self.keys, self.maps, self.size = found["keys"], found["maps"], tuple(found["size"].tolist())
        # the fp32 thresholds the tally compared with (float64 ones compared exactly)
        self.thresholds = strict_thresholds(thresholds.cpu(), compare)
        self.geometry_for = geometry_for

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, j: int) -> torch.Tensor:
        unit = int(self.keys[j, 0])
        up = upsample_to(self.maps[j][None, None], self.size, self.geometry_for)[0, 0]
        return up > self.thresholds[unit]
