"""Convention presets: what each reference implementation computes (REFERENCE-CONVENTIONS §10),
as data that the tally, IoU, quantile and driver code read. "exact" is this engine's default.

Two fields were added for the IoU accumulator (stats/iou_tally.py):
- `truth_per_layer`: how the truth count G[c] counts multi-layer labels. gandissect counts its
  intersection on "any channel = c" but takes G from a bincount over *all* segmentation
  channels (`run_and_segment_batch(want_bincount=True)` flattens every channel), so its G is
  per layer while its I is any-layer. None means "same as per_layer".
- `label_rule`: "global" (argmax over concepts) or "per-category" (ND/NDL: best label inside
  each category, then the category whose best is highest; differs from the global argmax only
  on ties).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    name: str
    quantile: float | None          # threshold probability; None: per-(unit, concept) IQR search
    geometry: str                   # a Geometry name; "receptive-field" needs the layer's RF
    quantile_population: str        # "raw" featuremaps or "upsampled" maps
    per_layer: bool                 # count intersection/truth once per label layer holding c
    union: str                      # "category": activation in images annotating c's category
                                    # "touched": ... where an active pixel hits that category (NDL)
                                    # "all": every pixel of every image (DB)
    epsilon: float                  # added to the IoU denominator
    detector_iou: float             # detector threshold on the unit's best IoU
    detector_strict: bool           # iou > t (True) or iou >= t (False)
    detector_iqr: float | None      # GD also needs IQR > this
    background_competes: bool       # DB: condition 0 ("all pixels") takes part in the argmax
    unit_base: int                  # first unit id in reports (ND/NDL are 1-based)
    excluded_categories: tuple[str, ...] = ()   # NDL drops material
    sketch_resolution: int | None = None        # the reference's KLL sketch size R, if any
    top_images: int = 10
    truth_per_layer: bool | None = None         # None: same as per_layer (see module docstring)
    label_rule: str = "global"                  # "global" | "per-category" (ND/NDL)

    @property
    def truth_layers(self) -> bool:
        """Whether G[c] counts a pixel once per label layer holding c."""
        return self.per_layer if self.truth_per_layer is None else self.truth_per_layer

    def is_detector(self, iou, iqr=None):
        """Boolean mask of detectors from per-unit best IoU (and IQR where the preset uses it)."""
        hit = iou > self.detector_iou if self.detector_strict else iou >= self.detector_iou
        if self.detector_iqr is not None:
            if iqr is None:
                raise ValueError(f"convention {self.name!r} needs IQR values to decide detectors")
            hit = hit & (iqr > self.detector_iqr)
        return hit


ND_QUANTILE = 994 / 999  # ND/NDL read column round(1000*0.005) of a reversed 1000-point readout

CONVENTIONS: dict[str, Convention] = {
    "exact": Convention("exact", 0.995, "half-pixel", "raw", False, "category", 0.0,
                        0.04, False, None, False, 0, top_images=10),
    "netdissect": Convention("netdissect", ND_QUANTILE, "receptive-field", "raw", True, "category",
                             1e-20, 0.04, False, None, False, 1, sketch_resolution=24576,
                             top_images=10, label_rule="per-category"),
    "netdissect-lite": Convention("netdissect-lite", ND_QUANTILE, "half-pixel", "raw", True,
                                  "touched", 1e-10, 0.04, False, None, False, 1,
                                  excluded_categories=("material",), sketch_resolution=24576,
                                  top_images=10, label_rule="per-category"),
    "dissect": Convention("dissect", 0.99, "zero-pad", "upsampled", False, "all", 0.0,
                          0.04, True, None, True, 0, sketch_resolution=6144, top_images=5),
    "gandissect": Convention("gandissect", 0.995, "half-pixel", "raw", False, "category", 1e-20,
                             0.05, True, 0.01, False, 0, sketch_resolution=1024, top_images=20,
                             truth_per_layer=True),
}


def get_convention(name: "str | Convention") -> Convention:
    if isinstance(name, Convention):
        return name
    if name not in CONVENTIONS:
        raise ValueError(f"unknown convention {name!r}; expected one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[name]
