"""Dissection results: per-layer IoU scores, labels and counts (`LayerResult`, `DissectionResult`),
saved atomically as results.safetensors + units.csv + summary.json and loaded back exactly.

Files: results.safetensors holds every tensor as `<layer>/<field>` (iou, thresholds, best_label,
best_iou, best_category, detector, category_of, [iqr, topk_indices, topk_values, rotation]) and
`<layer>/counts.<name>`; units.csv has one row per unit (layer, unit numbered from unit_base,
label, category, iou, threshold, detector 1/0[, iqr]); summary.json holds the run's metadata,
per-layer totals (units, detectors, unique_concepts, detector_concepts), names and unit rows.
A run id ties the safetensors file to its summary.json, so mixed files are refused on load."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dissect_kernels.conventions import CONVENTIONS, Convention, get_convention

FORMAT = "dissect_kernels.results"
FORMAT_VERSION = 1
TENSORS_FILE = "results.safetensors"
UNITS_FILE = "units.csv"
SUMMARY_FILE = "summary.json"
_LAYER_TENSORS = ("iou", "thresholds", "best_label", "best_iou", "best_category", "detector",
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
        return self

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
        if not self.version:
            from dissect_kernels import __version__
            self.version = __version__
        return self


# ---------------------------------------------------------------- saving


def _jsonable(section: str):
    def default(o):
        if isinstance(o, Path):
            return o.as_posix()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (np.ndarray, torch.Tensor)):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, Convention):
            return o.name
        raise TypeError(f"{section}: value of type {type(o).__name__} is not JSON-serialisable")
    return default


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


def _layer_summary(lr: LayerResult, unit_base: int) -> dict[str, Any]:
    counts = lr.detector_counts()
    return {
        "units": lr.num_units,
        "detectors": lr.num_detectors,
        "unique_concepts": len(counts),
        "detector_concepts": {lr.concept_names[c]: n for c, n in
                              sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))},
        "concept_names": lr.concept_names,
        "category_names": lr.category_names,
        "exemplar_strips": {str(u): p for u, p in lr.exemplar_strips.items()},
        "tensors": sorted(_layer_tensors(lr)),
        "rotation_info": lr.rotation_info,
        "extra": lr.extra,
        "unit_rows": unit_rows(lr, unit_base),
    }


def _layer_tensors(lr: LayerResult) -> dict[str, torch.Tensor]:
    out = {name: getattr(lr, name) for name in _LAYER_TENSORS if getattr(lr, name) is not None}
    out.update({f"counts.{k}": v for k, v in lr.counts.items()})
    return out


def summary_dict(result: DissectionResult, run_id: str = "") -> dict[str, Any]:
    """The content of summary.json (also what the HTML report reads)."""
    meta = {}
    for section in ("model", "dataset", "parameters", "skip_reasons", "timing", "convention"):
        value = getattr(result, section)
        json.dumps(value, default=_jsonable(section))  # name the section if it cannot be saved
        meta[section] = value
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id,
        "created": result.created, "version": result.version,
        "convention": result.convention, "unit_base": result.unit_base,
        "model": meta["model"], "dataset": meta["dataset"], "parameters": meta["parameters"],
        "skipped": result.skipped, "skip_reasons": result.skip_reasons, "timing": result.timing,
        "layers": {name: _layer_summary(lr, result.unit_base) for name, lr in result.layers.items()},
    }


def _write_tensors(path: Path, result: DissectionResult, run_id: str) -> None:
    tensors = {}
    for name, lr in result.layers.items():
        for key, t in _layer_tensors(lr).items():
            tensors[f"{name}/{key}"] = t.detach().cpu().contiguous().clone()
    save_file(tensors, str(path), metadata={"format": FORMAT, "run_id": run_id,
                                            "layers": json.dumps(list(result.layers))})


def _write_units_csv(path: Path, result: DissectionResult, run_id: str) -> None:
    with_iqr = any(lr.iqr is not None for lr in result.layers.values())
    cols = ["layer", "unit", "label", "category", "iou", "threshold", "detector"]
    cols += ["iqr"] if with_iqr else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for name, lr in result.layers.items():
        for row in unit_rows(lr, result.unit_base):
            line = [name, row["unit"], row["label"], row["category"], repr(row["iou"]),
                    repr(row["threshold"]), int(row["detector"])]
            if with_iqr:
                line.append("" if row.get("iqr") is None else repr(row["iqr"]))
            w.writerow(line)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _write_summary(path: Path, result: DissectionResult, run_id: str) -> None:
    text = json.dumps(summary_dict(result, run_id), indent=1, default=_jsonable("summary"))
    path.write_text(text + "\n", encoding="utf-8")


_WRITERS = ((TENSORS_FILE, "_write_tensors"), (UNITS_FILE, "_write_units_csv"),
            (SUMMARY_FILE, "_write_summary"))  # looked up at call time


def ensure_dir(out_dir) -> Path:
    """Create out_dir (and parents); a clear OSError naming it if it cannot be created/written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise NotADirectoryError(f"{out} is not a directory")
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        raise OSError(f"cannot write to output directory '{out}': "
                      f"{e.strerror or e}") from e
    return out


def atomic_write(out_dir: Path, files: dict[str, Any]) -> list[Path]:
    """Write every file of `files` (name -> writer(path)) to temp files in out_dir, then move
    them all into place; on any error remove the temps and leave existing files untouched."""
    temps: dict[str, Path] = {}
    try:
        for name, writer in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            temps[name] = Path(tmp)
            writer(temps[name])
        for name, tmp in temps.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
    return [out_dir / name for name in files]


def save_results(out_dir, result: DissectionResult, *, extra_files=None) -> dict[str, Path]:
    """Write results.safetensors, units.csv and summary.json into out_dir (created if needed),
    atomically: either all three are replaced or none (earlier files stay intact).
    `extra_files` (name -> writer(path), e.g. report.html) join the same all-or-nothing write."""
    if not isinstance(result, DissectionResult):
        raise TypeError(f"result must be a DissectionResult, got {type(result).__name__}")
    result.validate()
    run_id = uuid.uuid4().hex
    summary_dict(result, run_id)  # validate metadata before touching the disk
    out = ensure_dir(out_dir)
    files = {name: (lambda p, w=globals()[writer]: w(p, result, run_id)) for name, writer in _WRITERS}
    files.update(extra_files or {})
    paths = atomic_write(out, files)
    return dict(zip(files, paths))


# ---------------------------------------------------------------- loading


def load_results(out_dir) -> DissectionResult:
    """Rebuild the DissectionResult that save_results wrote into out_dir."""
    out = Path(out_dir)
    spath, tpath = out / SUMMARY_FILE, out / TENSORS_FILE
    for p in (spath, tpath):
        if not p.is_file():
            raise FileNotFoundError(f"no dissection results in '{out}': {p.name} is missing")
    summary = json.loads(spath.read_text(encoding="utf-8"))
    if summary.get("format") != FORMAT or summary.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{spath} is not a {FORMAT} v{FORMAT_VERSION} summary "
                         f"(format={summary.get('format')!r}, version={summary.get('format_version')!r})")
    with safe_open(str(tpath), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("run_id") != summary["run_id"]:
            raise ValueError(f"{tpath.name} and {spath.name} in '{out}' come from different runs "
                             f"({meta.get('run_id')!r} vs {summary['run_id']!r})")
        keys = set(f.keys())
        layers = {}
        for name, ls in summary["layers"].items():
            t = {k: f.get_tensor(f"{name}/{k}") for k in ls["tensors"] if f"{name}/{k}" in keys}
            missing = set(ls["tensors"]) - set(t)
            if missing:
                raise ValueError(f"{tpath} lacks tensors {sorted(missing)} of layer {name!r}")
            counts = {k[len("counts."):]: v for k, v in t.items() if k.startswith("counts.")}
            layers[name] = LayerResult(
                name, t["iou"], t["thresholds"], t["best_label"], t["best_iou"], t["best_category"],
                t["detector"], ls["concept_names"], ls["category_names"], t["category_of"],
                iqr=t.get("iqr"), counts=counts, topk_indices=t.get("topk_indices"),
                topk_values=t.get("topk_values"),
                exemplar_strips={int(u): p for u, p in ls["exemplar_strips"].items()},
                rotation=t.get("rotation"), rotation_info=ls["rotation_info"], extra=ls["extra"])
    return DissectionResult(
        layers, convention=summary["convention"], unit_base=summary["unit_base"],
        model=summary["model"], dataset=summary["dataset"], parameters=summary["parameters"],
        skipped=summary["skipped"], skip_reasons=summary["skip_reasons"], timing=summary["timing"],
        created=summary["created"], version=summary["version"])


__all__ = ["LayerResult", "DissectionResult", "save_results", "load_results", "summary_dict", "unit_rows",
           "atomic_write", "ensure_dir"]
