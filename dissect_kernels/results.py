"""The data model of a dissection: per-layer IoU scores, labels and counts (`LayerResult`) and a
whole run (`DissectionResult`), validated on construction. Reading and writing them is
dissect_kernels.io.results (results.safetensors + units.csv + summary.json)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dissect_kernels.conventions import CONVENTIONS, Convention, get_convention

LAYER_TENSORS = ("iou", "thresholds", "best_label", "best_iou", "best_category", "detector",
                 "category_of", "iqr", "topk_indices", "topk_values", "rotation")

def _as_tensor(name: str, x, *, dtype=None, ndim=None, optional=False):
    """CPU tensor from a tensor/array/list; errors name the field and what was expected."""
    if x is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except Exception as e:  # noqa: BLE001 - re-raised with the field's name
            raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}") from e
    x = x.detach().cpu()
    if dtype is not None and x.dtype != dtype:
        if dtype == torch.bool or not x.dtype.is_floating_point or dtype.is_floating_point:
            x = x.to(dtype)
        else:
            raise TypeError(f"{name} must hold integers ({dtype}), got {x.dtype}")
    if ndim is not None and x.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x.contiguous()


def _shape(name: str, x: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if x is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


@dataclass(eq=False)
class LayerResult:
    """Everything dissection found for one layer. Unit u is the 0-based row of every [U, ...]
    tensor; reports number it u + DissectionResult.unit_base."""

    layer: str                          # module name, e.g. "layer4" or "features.28"
    iou: torch.Tensor                   # [U, C] float: IoU of unit u with concept c
    thresholds: torch.Tensor            # [U] (or [U, C] for per-(unit, concept) thresholds)
    best_label: torch.Tensor            # [U] int64 concept id of the unit's label (-1: none)
    best_iou: torch.Tensor              # [U] float: the label's IoU
    best_category: torch.Tensor         # [U] int64 category id of the label (-1: none)
    detector: torch.Tensor              # [U] bool: the convention's detector rule holds
    concept_names: list[str]            # [C], index = concept id (Broden: 0 = "-")
    category_names: list[str]           # [K]
    category_of: torch.Tensor           # [C] int64 primary category of each concept
    iqr: torch.Tensor | None = None     # [U, C] information-quality ratio (GAN dissection)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # raw tallies, e.g.
    #                                     intersection/truth/activation [U, C]; saved as is
    topk_indices: torch.Tensor | None = None  # [U, k] int64 dataset indices of top images
    topk_values: torch.Tensor | None = None   # [U, k] their scores (descending)
    exemplar_strips: dict[int, str | None] = field(default_factory=dict)  # unit -> image path
    #                                     relative to the results dir (None: not rendered)
    rotation: torch.Tensor | None = None      # [U, U_in] matrix applied to the channels, if any
    rotation_info: dict[str, Any] = field(default_factory=dict)   # JSON: method, seed, ...
    extra: dict[str, Any] = field(default_factory=dict)           # JSON: any other layer facts

    def __post_init__(self):
        self.validate()

    def validate(self) -> "LayerResult":
        """Check shapes/dtypes/ids (errors name the field) and normalise tensors to CPU; rerun by
        save_results, so fields changed after construction are checked too."""
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"layer must be a non-empty string, got {self.layer!r}")
        p = f"LayerResult({self.layer!r})."
        self.iou = _as_tensor(p + "iou", self.iou, ndim=2)
        if not self.iou.dtype.is_floating_point:
            raise TypeError(f"{p}iou must be floating point, got {self.iou.dtype}")
        U, C = self.iou.shape
        self.concept_names = [str(n) for n in self.concept_names]
        self.category_names = [str(n) for n in self.category_names]
        if len(self.concept_names) != C:
            raise ValueError(f"{p}concept_names has {len(self.concept_names)} names but iou has "
                             f"{C} concept columns")
        K = len(self.category_names)
        self.thresholds = _as_tensor(p + "thresholds", self.thresholds, ndim=(1, 2))
        if tuple(self.thresholds.shape) not in ((U,), (U, C)):
            raise ValueError(f"{p}thresholds must have shape ({U},) or ({U}, {C}), "
                             f"got {tuple(self.thresholds.shape)}")
        self.best_label = _as_tensor(p + "best_label", self.best_label, dtype=torch.int64, ndim=1)
        self.best_iou = _as_tensor(p + "best_iou", self.best_iou, ndim=1)
        self.best_category = _as_tensor(p + "best_category", self.best_category,
                                        dtype=torch.int64, ndim=1)
        self.detector = _as_tensor(p + "detector", self.detector, dtype=torch.bool, ndim=1)
        self.category_of = _as_tensor(p + "category_of", self.category_of, dtype=torch.int64, ndim=1)
        for name in ("best_label", "best_iou", "best_category", "detector"):
            _shape(p + name, getattr(self, name), (U,))
        _shape(p + "category_of", self.category_of, (C,))
        for name, ids, upper in (("best_label", self.best_label, C),
                                 ("best_category", self.best_category, K),
                                 ("category_of", self.category_of, K)):
            if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= upper):
                raise ValueError(f"{p}{name} holds ids in [{int(ids.min())}, {int(ids.max())}] "
                                 f"but they must lie in [-1, {upper})")
        if bool((self.detector & (self.best_label < 0)).any()):
            raise ValueError(f"{p}detector is set for units without a label (best_label == -1)")
        self._validate_extras(p, U, C)
        return self

    def _validate_extras(self, p: str, U: int, C: int) -> None:
        """The optional fields: iqr, top-k, rotation, counts and exemplar strip paths."""
        self.iqr = _as_tensor(p + "iqr", self.iqr, ndim=2, optional=True)
        _shape(p + "iqr", self.iqr, (U, C))
        self.topk_indices = _as_tensor(p + "topk_indices", self.topk_indices, dtype=torch.int64,
                                       ndim=2, optional=True)
        self.topk_values = _as_tensor(p + "topk_values", self.topk_values, ndim=2, optional=True)
        if (self.topk_indices is None) != (self.topk_values is None):
            raise ValueError(f"{p}topk_indices and topk_values must be given together")
        if self.topk_indices is not None:
            if self.topk_indices.shape[0] != U:
                raise ValueError(f"{p}topk_indices must have {U} rows, got "
                                 f"{tuple(self.topk_indices.shape)}")
            _shape(p + "topk_values", self.topk_values, tuple(self.topk_indices.shape))
        self.rotation = _as_tensor(p + "rotation", self.rotation, ndim=2, optional=True)
        if self.rotation is not None and self.rotation.shape[0] != U:
            raise ValueError(f"{p}rotation must have {U} rows, got {tuple(self.rotation.shape)}")
        if not isinstance(self.counts, dict):
            raise TypeError(f"{p}counts must be a dict of name -> tensor")
        self.counts = {str(k): _as_tensor(f"{p}counts[{k!r}]", v) for k, v in self.counts.items()}
        strips = {}
        for u, path in dict(self.exemplar_strips).items():
            u = int(u)
            if not 0 <= u < U:
                raise ValueError(f"{p}exemplar_strips has unit {u}, outside [0, {U})")
            if path is not None and Path(path).is_absolute():
                raise ValueError(f"{p}exemplar_strips[{u}] must be relative to the results "
                                 f"directory, got absolute path {str(path)!r}")
            strips[u] = None if path is None else Path(path).as_posix()
        self.exemplar_strips = dict(sorted(strips.items()))

    @classmethod
    def build(cls, layer: str, iou, thresholds, best_label, best_iou, *, concept_names,
              category_names, category_of, convention: "str | Convention" = "exact",
              best_category=None, iqr=None, **rest) -> "LayerResult":
        """From IoUTally-style outputs: fills best_category (= category_of[label] unless given)
        and detector (the convention's rule on best_iou, and on IQR at the label if it needs it)."""
        conv = get_convention(convention)
        category_of = _as_tensor("category_of", category_of, dtype=torch.int64, ndim=1)
        best_label = _as_tensor("best_label", best_label, dtype=torch.int64, ndim=1)
        best_iou = _as_tensor("best_iou", best_iou, ndim=1)
        valid = best_label >= 0
        safe = best_label.clamp(0, max(len(category_of) - 1, 0))  # bad ids: reported by cls()
        if best_category is None:
            best_category = torch.where(valid, category_of[safe], torch.full_like(safe, -1))
        iqr_t = _as_tensor("iqr", iqr, ndim=2, optional=True)
        iqr_best = None
        if iqr_t is not None:
            iqr_best = iqr_t.gather(1, safe[:, None])[:, 0]
        detector = conv.is_detector(best_iou, iqr_best) & valid
        return cls(layer, iou, thresholds, best_label, best_iou, best_category, detector,
                   list(concept_names), list(category_names), category_of, iqr=iqr_t, **rest)

    @property
    def num_units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def num_detectors(self) -> int:
        return int(self.detector.sum())

    def unique_concepts(self) -> list[int]:
        """Sorted concept ids that label at least one detector."""
        return sorted({int(c) for c in self.best_label[self.detector].tolist()})

    def detector_counts(self) -> dict[int, int]:
        """Concept id -> number of detector units labelled with it."""
        ids, n = torch.unique(self.best_label[self.detector], return_counts=True)
        return {int(i): int(k) for i, k in zip(ids.tolist(), n.tolist())}

    def unit_threshold(self, u: int) -> float:
        """Unit u's threshold (at its label when thresholds are per (unit, concept))."""
        if self.thresholds.dim() == 1:
            return float(self.thresholds[u])
        return float(self.thresholds[u, max(int(self.best_label[u]), 0)])

    def unit_label(self, u: int) -> str:
        c = int(self.best_label[u])
        return self.concept_names[c] if c >= 0 else "-"

    def unit_category(self, u: int) -> str:
        k = int(self.best_category[u])
        return self.category_names[k] if k >= 0 else "-"

    def unit_iqr(self, u: int) -> float | None:
        if self.iqr is None:
            return None
        return float(self.iqr[u, max(int(self.best_label[u]), 0)])


@dataclass(eq=False)
class DissectionResult:
    """A whole dissection run: layers in order plus what produced them (JSON-able metadata)."""

    layers: dict[str, LayerResult]
    convention: str = "exact"               # preset name (CONVENTIONS) or a custom name
    unit_base: int | None = None            # first unit number in reports; None: the preset's
    model: dict[str, Any] | str = field(default_factory=dict)    # e.g. name, factory, weights, hash
    dataset: dict[str, Any] | str = field(default_factory=dict)  # e.g. root, images, size
    parameters: dict[str, Any] = field(default_factory=dict)     # quantile, batch size, seed...
    skipped: int = 0                        # samples dropped (unreadable, no labels, ...)
    skip_reasons: dict[str, int] = field(default_factory=dict)   # reason -> number of samples
    timing: dict[str, float] = field(default_factory=dict)       # stage -> seconds
    warnings: list[str] = field(default_factory=list)             # results that mean little (see unit_warnings)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(
        timespec="seconds"))
    version: str = ""                       # dissect_kernels version that produced it

    def __post_init__(self):
        self.validate()

    def validate(self) -> "DissectionResult":
        """Check (and normalise) the run's fields and every layer; rerun by save_results."""
        if isinstance(self.convention, Convention):
            self.convention = self.convention.name
        if self.unit_base is None:
            conv = CONVENTIONS.get(self.convention)
            self.unit_base = conv.unit_base if conv is not None else 0
        self.unit_base = int(self.unit_base)
        if isinstance(self.layers, (list, tuple)):
            self.layers = {lr.layer: lr for lr in self.layers}
        for name, lr in self.layers.items():
            if not isinstance(lr, LayerResult):
                raise TypeError(f"layers[{name!r}] must be a LayerResult, got {type(lr).__name__}")
            if lr.layer != name:
                raise ValueError(f"layers[{name!r}] holds the result of layer {lr.layer!r}")
            lr.validate()
        self.skipped = int(self.skipped)
        self.skip_reasons = {str(k): int(v) for k, v in self.skip_reasons.items()}
        self.timing = {str(k): float(v) for k, v in self.timing.items()}
        self.warnings = [str(w) for w in self.warnings]
        if not self.version:
            from dissect_kernels._version import __version__
            self.version = __version__
        return self


# ---------------------------------------------------------------- saving


def unit_rows(lr: LayerResult, unit_base: int) -> list[dict[str, Any]]:
    """One dict per unit (what units.csv, summary.json and the report show): unit (numbered
    from unit_base), label, category, iou, threshold, detector[, iqr], exemplar."""
    labels, cats = lr.best_label.tolist(), lr.best_category.tolist()
    ious, dets = lr.best_iou.tolist(), lr.detector.tolist()
    safe = lr.best_label.clamp(min=0)[:, None]
    thr = lr.thresholds if lr.thresholds.dim() == 1 else lr.thresholds.gather(1, safe)[:, 0]
    thr = thr.tolist()
    iqr = None if lr.iqr is None else lr.iqr.gather(1, safe)[:, 0].tolist()
    rows = []
    for u in range(lr.num_units):
        row = {"unit": u + unit_base,
               "label": lr.concept_names[labels[u]] if labels[u] >= 0 else "-",
               "category": lr.category_names[cats[u]] if cats[u] >= 0 else "-",
               "iou": float(ious[u]), "threshold": float(thr[u]), "detector": bool(dets[u])}
        if iqr is not None:
            row["iqr"] = float(iqr[u])
        row["exemplar"] = lr.exemplar_strips.get(u)
        rows.append(row)
    return rows


def layer_tensors(lr: LayerResult) -> dict[str, torch.Tensor]:
    out = {name: getattr(lr, name) for name in LAYER_TENSORS if getattr(lr, name) is not None}
    out.update({f"counts.{k}": v for k, v in lr.counts.items()})
    return out


__all__ = ["LayerResult", "DissectionResult", "unit_rows", "layer_tensors", "LAYER_TENSORS"]
