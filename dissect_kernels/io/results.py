"""Results on disk: save_results / load_results of a DissectionResult as results.safetensors (every
tensor as `<layer>/<field>`: iou, thresholds, best_label, best_iou, best_category, detector,
category_of, [iqr, topk_indices, topk_values, rotation] and `<layer>/counts.<name>`), units.csv
(one row per unit: layer, unit numbered from unit_base, label, category, iou, threshold,
detector 1/0[, iqr]) and summary.json (the run's metadata, per-layer totals, names and unit
rows). The three are written atomically together; a run id ties the safetensors file to its
summary.json, so mixed files are refused on load."""
from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dissect_kernels.conventions import Convention
from dissect_kernels.io.atomic import atomic_write, ensure_dir, savable
from dissect_kernels.results import DissectionResult, LayerResult, layer_tensors, unit_rows

FORMAT = "dissect_kernels.results"
FORMAT_VERSION = 1
TENSORS_FILE = "results.safetensors"
UNITS_FILE = "units.csv"
SUMMARY_FILE = "summary.json"


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
        "tensors": sorted(layer_tensors(lr)),
        "rotation_info": lr.rotation_info,
        "extra": lr.extra,
        "unit_rows": unit_rows(lr, unit_base),
    }


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
        "warnings": result.warnings,
        "layers": {name: _layer_summary(lr, result.unit_base) for name, lr in result.layers.items()},
    }


def _write_tensors(path: Path, result: DissectionResult, run_id: str) -> None:
    tensors = {}
    for name, lr in result.layers.items():
        for key, t in layer_tensors(lr).items():
            tensors[f"{name}/{key}"] = t
    save_file(savable(tensors), str(path), metadata={"format": FORMAT, "run_id": run_id,
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
        warnings=summary.get("warnings", []), created=summary["created"], version=summary["version"])


__all__ = ["save_results", "load_results", "summary_dict", "FORMAT", "TENSORS_FILE", "UNITS_FILE",
           "SUMMARY_FILE"]
