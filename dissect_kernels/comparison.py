"""Comparing two result sets unit by unit (this engine's or a reference tool's, any mix; read
with dissect_kernels.io.references.load_units): how often the best label is the same, how often
the detector verdict is, how far the best IoUs and the thresholds lie apart. Used by
`dissect-kernels compare` and benchmarks/vs_reference.py."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from dissect_kernels.io.references import UnitRecords

# |ΔIoU| histogram: exactly 0, then one bin per decade up to 1
HIST_EDGES = [0.0] + [10.0 ** e for e in range(-12, 1)]


@dataclass
class LayerComparison:
    """One layer of A against one layer of B."""

    layer_a: str
    layer_b: str
    units: int
    same_label: int                       # units whose labels agree (no label on both sides counts)
    same_detector: int | None             # units whose detector flags agree (None: a side has none)
    iou_delta_max: float                  # max |IoU_a - IoU_b| over units where both are numbers
    iou_delta_mean: float
    nan_mismatch: int                     # units where one IoU is NaN and the other is a number
    #                                       (dead units, unlabelled on both sides with NaN or 0, agree)
    iou_histogram: list[int]              # counts of |ΔIoU| == 0, in (0, 1e-12], ..., (0.1, 1]
    threshold_delta_max: float | None     # max |t_a - t_b| (None: a side has no thresholds)
    threshold_rel_max: float | None       # max |t_a - t_b| / max(|t_a|, |t_b|, 1e-30)
    disagreements: list[dict] = field(default_factory=list)   # the units whose labels differ

    @property
    def same_label_share(self) -> float:
        return self.same_label / self.units if self.units else 1.0

    @property
    def same_detector_share(self) -> float | None:
        return None if self.same_detector is None else self.same_detector / max(1, self.units)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(same_label_share=self.same_label_share, same_detector_share=self.same_detector_share)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def compare_layer(a: UnitRecords, b: UnitRecords, max_listed: int = 50) -> LayerComparison:
    """Unit-by-unit agreement of two tables of the same layer (same unit count)."""
    if a.num_units != b.num_units:
        raise ValueError(f"layer {a.layer!r} has {a.num_units} units in A but {b.num_units} in B "
                         f"({b.layer!r}); compare the same layer")
    same = [la == lb for la, lb in zip(a.label, b.label)]
    nan_a, nan_b = np.isnan(a.iou), np.isnan(b.iou)
    # a unit without a label on either side is dead for both: NaN (davidbau/dissect) and 0
    # (formats that cannot hold NaN, e.g. NetDissect-Lite's) say the same thing
    unlabelled = np.array([la is None and lb is None for la, lb in zip(a.label, b.label)], dtype=bool)
    dead = unlabelled & (nan_a | (a.iou == 0)) & (nan_b | (b.iou == 0))
    nan_a, nan_b = nan_a & ~dead, nan_b & ~dead
    both = ~nan_a & ~nan_b & ~dead
    delta = np.abs(a.iou - b.iou)[both]
    hist = histogram(np.concatenate([delta, np.zeros(int((nan_a & nan_b).sum() + dead.sum()))]))
    det = None if a.detector is None or b.detector is None else int((a.detector == b.detector).sum())
    tmax = trel = None
    if a.threshold is not None and b.threshold is not None:
        dt = np.abs(a.threshold - b.threshold)
        tmax = float(dt.max()) if dt.size else 0.0
        scale = np.maximum(np.maximum(np.abs(a.threshold), np.abs(b.threshold)), 1e-30)
        trel = float((dt / scale).max()) if dt.size else 0.0
    listed = [dict(unit=u, label_a=a.label[u], label_b=b.label[u], iou_a=_num(a.iou[u]), iou_b=_num(b.iou[u]))
              for u in range(a.num_units) if not same[u]][:max_listed]
    return LayerComparison(a.layer, b.layer, a.num_units, int(sum(same)), det,
                           float(delta.max()) if delta.size else 0.0, float(delta.mean()) if delta.size else 0.0,
                           int((nan_a ^ nan_b).sum()), hist, tmax, trel, listed)


def histogram(delta: np.ndarray) -> list[int]:
    """Counts of |ΔIoU| == 0, then in (0, 1e-12], (1e-12, 1e-11], ..., (0.1, 1] (HIST_EDGES)."""
    counts = [int((delta == 0).sum())]
    for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:]):
        counts.append(int(((delta > lo) & (delta <= hi)).sum()))
    return counts


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def pair_layers(a: dict, b: dict, pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """The (layer of A, layer of B) pairs to compare: those given, else the layers both have,
    else the only layer of each."""
    if pairs:
        for la, lb in pairs:
            if la not in a or lb not in b:
                raise ValueError(f"layer pair {la}={lb}: A has {sorted(a)}, B has {sorted(b)}")
        return pairs
    common = [name for name in a if name in b]
    if common:
        return [(n, n) for n in common]
    if len(a) == 1 and len(b) == 1:
        return [(next(iter(a)), next(iter(b)))]
    raise ValueError(f"no layer in common (A: {sorted(a)}, B: {sorted(b)}); name the pairs, e.g. --layers A=B")


def compare(a: dict, b: dict, pairs=None) -> list[LayerComparison]:
    """Every paired layer of two {layer: UnitRecords} sets."""
    return [compare_layer(a[la], b[lb]) for la, lb in pair_layers(a, b, pairs)]


def within(results: list[LayerComparison], iou_tolerance: float, min_same_label: float) -> bool:
    """Whether every layer agrees: |ΔIoU| <= iou_tolerance on every unit (no NaN on one side
    only) and the same label on at least min_same_label of the units."""
    return all(r.iou_delta_max <= iou_tolerance and r.nan_mismatch == 0 and r.same_label_share >= min_same_label
               for r in results)


def summary_lines(results: list[LayerComparison]) -> list[str]:
    """A few human-readable lines per layer."""
    lines = []
    for r in results:
        name = r.layer_a if r.layer_a == r.layer_b else f"{r.layer_a} vs {r.layer_b}"
        det = "" if r.same_detector_share is None else f", same detector verdict {100 * r.same_detector_share:.1f}%"
        thr = "" if r.threshold_delta_max is None else \
            f"; thresholds: max |Δ| {r.threshold_delta_max:.3g} (relative {r.threshold_rel_max:.3g})"
        lines.append(f"{name}: {r.units} units, same label {r.same_label}/{r.units} "
                     f"({100 * r.same_label_share:.1f}%){det}")
        lines.append(f"  IoU: max |Δ| {r.iou_delta_max:.3g}, mean {r.iou_delta_mean:.3g}"
                     f"{f', NaN on one side only: {r.nan_mismatch}' if r.nan_mismatch else ''}{thr}")
    return lines
