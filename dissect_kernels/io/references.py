"""The reference tools' result files, read into one per-unit table and written from a
DissectionResult, so results can be compared whoever made them (dissect_kernels.comparison).

Formats (docs/conventions.md describes what each tool computes):
- NetDissect-Lite: a result folder with `tally.csv` (one row per unit in descending score
  order: unit numbered from 1, category, label, score, then per category the best label's
  name, truth, activation, intersection and IoU) and `quantile.npy` (float64 thresholds).
- davidbau/dissect (netdissect): a result folder with `report.json` (units numbered from 0:
  iou, label, cat; iou "NaN" where it divides 0 by 0) and `rq.npz` (its streaming quantile
  sketch; thresholds are read out of it at a given quantile, its way: the weighted-midpoint
  CDF interpolated linearly).
- gandissect: `dissect.json` (per layer, per unit: level = threshold, iou, iou_label,
  iou_cat, interp = its detector flag).
- this engine: a results folder (results.safetensors, summary.json).
A folder whose sub-folders each hold one of these is read layer by layer (the sub-folder
names, URL-unquoted, are the layers): that is how the writers lay out several layers.

In the table a unit without a label (a dead unit, an empty label, an IoU that is NaN or not
above 0) has label None.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from dissect_kernels.io.atomic import atomic_write, ensure_dir, write_json

FORMATS = ("dissect_kernels", "netdissect-lite", "netdissect", "gandissect")
MARKERS = {"summary.json": "dissect_kernels", "tally.csv": "netdissect-lite", "report.json": "netdissect",
           "dissect.json": "gandissect"}


@dataclass
class UnitRecords:
    """One layer's per-unit results (row u = unit u, 0-based), as any tool reports them."""

    layer: str
    source: str                        # one of FORMATS
    label: list                        # [U] concept name, None = no label
    category: list                     # [U] category name or None
    iou: np.ndarray                    # [U] float64 best IoU, NaN where undefined
    threshold: np.ndarray | None = None    # [U] float64, None when the files hold none
    detector: np.ndarray | None = None     # [U] bool, None when the files hold none

    @property
    def num_units(self) -> int:
        return len(self.label)


def _label(name, iou) -> str | None:
    """A reported label, or None for "no label" (empty, "-", or an IoU that is not > 0)."""
    if name is None or str(name) in ("", "-") or not (iou > 0):
        return None
    return str(name)


# ------------------------------------------------------------------------------------ reading
def detect_format(path) -> tuple[str, Path]:
    """(format, folder or file) of a results path; a clear error for anything else."""
    path = Path(path)
    if path.is_file():
        for marker, fmt in MARKERS.items():
            if path.name == marker:
                return fmt, path
        if path.name == "results.safetensors":
            return "dissect_kernels", path.parent
        raise ValueError(f"{path}: not a results file (expected one of {sorted(MARKERS)} or results.safetensors)")
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    for marker, fmt in MARKERS.items():
        if (path / marker).is_file():
            return fmt, path / marker if fmt in ("netdissect-lite", "netdissect", "gandissect") else path
    raise ValueError(f"{path}: holds none of {sorted(MARKERS)} (a results folder of this engine, "
                     "NetDissect-Lite, davidbau/dissect or gandissect)")


def load_units(path, *, layer: str | None = None, quantile: float = 0.99,
               detector_iou: float = 0.04) -> dict[str, UnitRecords]:
    """{layer: UnitRecords} from any supported results path (file, folder, or a folder of
    per-layer folders). `layer` names the layer of a one-layer reference folder (default: its
    folder name); `quantile` is the level netdissect's rq.npz is read at; `detector_iou` is
    NetDissect-Lite's and netdissect's detector level (>= and > respectively)."""
    path = Path(path)
    if path.is_dir() and not any((path / m).is_file() for m in MARKERS):
        subs = sorted(p for p in path.iterdir() if p.is_dir() and any((p / m).is_file() for m in MARKERS))
        if subs:
            out = {}
            for sub in subs:
                out.update(load_units(sub, layer=unquote(sub.name), quantile=quantile, detector_iou=detector_iou))
            return out
    fmt, found = detect_format(path)
    if fmt == "dissect_kernels":
        return _read_ours(found)
    if fmt == "gandissect":
        return _read_gandissect(found)
    name = layer or found.parent.resolve().name
    reader = _read_ndl if fmt == "netdissect-lite" else _read_netdissect
    return {name: reader(found, name, quantile, detector_iou)}


def _read_ours(folder: Path) -> dict[str, UnitRecords]:
    from dissect_kernels.io.results import load_results
    out = {}
    for name, lr in load_results(folder).layers.items():
        iou = lr.best_iou.double().numpy()
        label = [lr.concept_names[c] if c >= 0 else None for c in lr.best_label.tolist()]
        cat = [lr.category_names[k] if k >= 0 else None for k in lr.best_category.tolist()]
        thr = lr.thresholds.double().numpy() if lr.thresholds.dim() == 1 else None
        out[name] = UnitRecords(name, "dissect_kernels", [_label(a, i) for a, i in zip(label, iou)],
                                cat, iou, thr, lr.detector.numpy().copy())
    return out


def _read_ndl(path: Path, layer: str, quantile: float, detector_iou: float) -> UnitRecords:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"unit", "category", "label", "score"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: not a NetDissect-Lite tally.csv (missing columns {sorted(missing)})")
    units = [int(r["unit"]) - 1 for r in rows]
    if sorted(units) != list(range(len(rows))):
        raise ValueError(f"{path}: units must be numbered 1..{len(rows)} once each")
    iou = np.zeros(len(rows))
    label, cat = [None] * len(rows), [None] * len(rows)
    for u, r in zip(units, rows):
        iou[u] = float(r["score"])
        label[u] = _label(r["label"], iou[u])
        cat[u] = r["category"] if label[u] is not None else None
    thr = _npy(path.parent / "quantile.npy", len(rows))
    return UnitRecords(layer, "netdissect-lite", label, cat, iou, thr, iou >= detector_iou)


def _npy(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    t = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"{path}: {t.shape[0]} thresholds for {n} units")
    return t


def _read_netdissect(path: Path, layer: str, quantile: float, detector_iou: float) -> UnitRecords:
    report = json.loads(path.read_text(encoding="utf-8"))
    units = report.get("units") if isinstance(report, dict) else None
    if not isinstance(units, list) or not all("unit" in u and "iou" in u for u in units):
        raise ValueError(f"{path}: not a davidbau/dissect report.json (no units with unit and iou)")
    n = len(units)
    iou, label, cat = np.zeros(n), [None] * n, [None] * n
    for rec in units:
        u = int(rec["unit"])
        iou[u] = float(rec["iou"])                  # "NaN" parses to nan
        label[u] = _label(rec.get("label"), iou[u])
        cat[u] = rec.get("cat") if label[u] is not None else None
    rq = path.parent / "rq.npz"
    thr = sketch_quantiles(rq, quantile).astype(np.float64) if rq.is_file() else None
    return UnitRecords(layer, "netdissect", label, cat, iou, thr, iou > detector_iou)


def _read_gandissect(path: Path) -> dict[str, UnitRecords]:
    record = json.loads(path.read_text(encoding="utf-8"))
    layers = record.get("layers") if isinstance(record, dict) else None
    if not isinstance(layers, list):
        raise ValueError(f"{path}: not a gandissect dissect.json (no layers list)")
    out = {}
    for lrec in layers:
        units = sorted(lrec["units"], key=lambda r: int(r["unit"]))
        iou = np.array([float(r.get("iou", math.nan)) for r in units])
        label = [_label(r.get("iou_label"), i) for r, i in zip(units, iou)]
        cat = [r.get("iou_cat") if lab is not None else None for r, lab in zip(units, label)]
        thr = np.array([float(r["level"]) for r in units]) if all("level" in r for r in units) else None
        det = np.array([bool(r.get("interp", False)) for r in units])
        out[str(lrec["layer"])] = UnitRecords(str(lrec["layer"]), "gandissect", label, cat, iou, thr, det)
    return out


def sketch_quantiles(path, q: float) -> np.ndarray:
    """Thresholds [U] from netdissect's saved RunningQuantile state (rq.npz), read out as its
    quantiles(q) does: every retained sample weighs 2^level, the per-unit minimum and maximum
    weigh 0, sample j sits at (Σ_{k<=j} w_k - w_j/2) / Σ w, and q is interpolated linearly;
    the result has the sketch's dtype. Its precision as netdissect's: fp32 weights and
    positions (running sums accumulated in float64, as torch's CPU cumsum does) and q rounded
    to fp32 (it passes q through torch.tensor)."""
    state = np.load(path, allow_pickle=True)
    try:
        levels = [np.asarray(d) for d in state["data"] if d is not None]
        extremes = np.asarray(state["extremes"])
    except KeyError as err:
        raise ValueError(f"{path}: not a RunningQuantile state (missing {err})") from None
    out = np.empty(extremes.shape[0], dtype=extremes.dtype)
    for u in range(extremes.shape[0]):
        values = [lv[:, u] for lv in levels if lv.size]
        weights = [np.full(lv.shape[0], 2.0 ** i, dtype=np.float32) for i, lv in enumerate(levels) if lv.size]
        v = np.concatenate(values) if values else np.zeros(0, extremes.dtype)
        w = np.concatenate(weights) if weights else np.zeros(0, np.float32)
        order = np.argsort(v, kind="stable")
        v = np.concatenate([extremes[u, :1], v[order], extremes[u, 1:]])
        w = np.concatenate([[0.0], w[order], [0.0]]).astype(np.float32)
        cw = np.cumsum(w, dtype=np.float64).astype(np.float32) - w / np.float32(2)
        out[u] = np.interp(np.float32(q), cw / np.float32(w.sum(dtype=np.float64)), v)
    return out


# ------------------------------------------------------------------------------------ writing
def export_results(result, fmt: str, out_dir) -> list[Path]:
    """Write a DissectionResult in a reference tool's format: per layer a folder out_dir/<layer>
    (the name URL-quoted; NetDissect-Lite: tally.csv + quantile.npy; netdissect: report.json +
    rq.npz), or one
    out_dir/dissect.json (gandissect). Returns the files written."""
    writers = {"netdissect-lite": _write_ndl, "netdissect": _write_netdissect}
    out_dir = ensure_dir(out_dir)
    if fmt == "gandissect":
        return atomic_write(out_dir, {"dissect.json": lambda p: write_json(p, _gandissect_record(result))})
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS[1:]}")
    written = []
    for name, lr in result.layers.items():
        written += writers[fmt](lr, ensure_dir(out_dir / quote(name, safe="")))
    return written


def _names(lr, u: int) -> tuple[str, str]:
    c, k = int(lr.best_label[u]), int(lr.best_category[u])
    return (lr.concept_names[c] if c >= 0 else ""), (lr.category_names[k] if k >= 0 else "")


def _write_ndl(lr, folder: Path) -> list[Path]:
    cats = lr.category_names
    counts = lr.counts
    inter, truth, act = (counts.get(k) for k in ("intersection", "truth", "activation"))
    order = sorted(range(lr.num_units), key=lambda u: (-_finite(lr.best_iou[u]), u))
    fields = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in cats
                                                      for f in ("label", "truth", "activation", "intersect", "iou")]
    rows = []
    for u in order:
        label, cat = _names(lr, u)
        row = {"unit": u + 1, "category": cat, "label": label, "score": repr(_finite(lr.best_iou[u]))}
        for k, cname in enumerate(cats):
            members = [c for c in range(1, len(lr.concept_names)) if int(lr.category_of[c]) == k]
            best = max(members, key=lambda c: (float(lr.iou[u, c]), -c), default=None)
            ok = best is not None and float(lr.iou[u, best]) > 0
            row.update({f"{cname}-label": lr.concept_names[best] if ok else "",
                        f"{cname}-truth": _count(truth, u, best) if ok else 0,
                        f"{cname}-activation": int(act[u, k]) if act is not None else 0,
                        f"{cname}-intersect": int(inter[u, best]) if ok and inter is not None else 0,
                        f"{cname}-iou": repr(float(lr.iou[u, best])) if ok else "0.0"})
        rows.append(row)

    def write_csv(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerows(rows)

    thr = lr.thresholds.double().numpy() if lr.thresholds.dim() == 1 else None
    files = {"tally.csv": write_csv}
    if thr is not None:
        files["quantile.npy"] = lambda p: _save_npy(p, thr)
    return atomic_write(folder, files)


def _count(truth, u: int, c: int) -> int:
    """G[c] from the saved counts (IoUTally's truth [C]; 0 when the result holds none)."""
    if truth is None:
        return 0
    return int(truth[c] if truth.dim() == 1 else truth[u, c])


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:          # a file object: np.save would append .npy to a name
        np.save(f, array)


def _finite(v) -> float:
    v = float(v)
    return 0.0 if math.isnan(v) else v


def _write_netdissect(lr, folder: Path) -> list[Path]:
    units = []
    for u in range(lr.num_units):
        label, cat = _names(lr, u)
        iou = float(lr.best_iou[u])
        units.append(dict(image=f"image/unit{u}.jpg", unit=u, iou="NaN" if math.isnan(iou) else iou,
                          label=label or "-", cat=cat or "-"))
    report = dict(header=dict(name=lr.layer, image="concepts_99.svg"), units=units)
    files = {"report.json": lambda p: write_json(p, report)}
    if lr.thresholds.dim() == 1:
        files["rq.npz"] = lambda p: _write_sketch(p, lr.thresholds.numpy())
    return atomic_write(folder, files)


def _write_sketch(path: Path, thresholds: np.ndarray) -> None:
    """A RunningQuantile state (netdissect's own loader reads it) holding one sample per unit,
    the threshold, with the threshold as minimum and maximum: every quantile reads it back."""
    U = thresholds.shape[0]
    data = np.array([thresholds[None, :].copy(), None], dtype=object)
    with path.open("wb") as f:
        np.savez(f, constructor="netdissect.runningstats.RunningQuantile()", resolution=2, depth=U,
                 buffersize=1, samplerate=1.0, data=data, sizes=[1],
                 extremes=np.stack([thresholds, thresholds], 1), size=1, batchcount=1)


def _gandissect_record(result) -> dict:
    layers = []
    for name, lr in result.layers.items():
        units = []
        for u in range(lr.num_units):
            label, cat = _names(lr, u)
            iqr = lr.unit_iqr(u)
            units.append(dict(unit=u, interp=bool(lr.detector[u]), level=lr.unit_threshold(u),
                              iou=_finite(lr.best_iou[u]), iou_iqr=0.0 if iqr is None else float(iqr),
                              iou_labelnum=max(int(lr.best_label[u]), 0), iou_label=label or "-",
                              iou_cat=cat or "-"))
        layers.append(dict(layer=name, units=units, rankings=[]))
    return dict(netname=str(result.model.get("class", "")), meta={}, default_ranking="unit",
                quantile_threshold=result.parameters.get("quantile"), layers=layers)
