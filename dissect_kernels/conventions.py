"""Convention presets: what each reference implementation computes (REFERENCE-CONVENTIONS §10,
docs/conventions.md), as data that the tally, IoU, quantile and driver code read. "exact" is
this engine's default.

Every rule is a field, so a preset can be changed one rule at a time:
`get_convention("netdissect-lite[stale_category_flag=true]")` or
`get_convention("dissect").with_options(union="category")`; the name then records the change.

Notes on some fields:
- `truth_per_layer`: how the truth count G[c] counts multi-layer labels. gandissect counts its
  intersection on "any channel = c" but takes G from a bincount over *all* segmentation
  channels, so its G is per layer while its I is any-layer. None means "same as per_layer".
- `label_rule`: "global" (argmax over concepts) or "per-category" (ND/NDL: best label inside
  each category, then the category whose best is highest); `category_ties` says which category
  wins equal bests ("first"; ND/NDL "last": they take the end of an ascending argsort).
- `quantile_readout`: how a quantile is read from the sorted values. "linear": numpy's default,
  value j sits at j/(N-1). "midpoint": the references' sketches' weighted-midpoint CDF, sample j
  at (j + 1/2)/N (on equal weights this is numpy's "hazen" method). ND reads column
  round(1000·0.005) = 5 of its 1000-point readout reversed, NDL column int(1000·(1 − 0.005) − 1)
  = 994 of it ascending: both read p = linspace(0, 1, 1000)[994] = 994/999 of that CDF.
- `threshold_dtype` / `threshold_compare`: NDL keeps float64 thresholds and compares float32
  maps with them; the kernels compare fp32 values with `>` against an fp32 threshold that gives
  the same answer (ops/tally.py: strict_thresholds).
- `dead_units`: a unit with no active pixel never gets a label: "none" reports IoU 0, "nan"
  reports NaN wherever the reference divides 0 by 0 (davidbau/dissect).
- `stale_category_flag`: NDL's bug on images without a pixel label (off in every preset).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

_CHOICES = {"quantile_population": ("raw", "upsampled"), "union": ("category", "touched", "all"),
            "label_rule": ("global", "per-category"), "category_ties": ("first", "last"),
            "quantile_readout": ("linear", "midpoint"), "threshold_dtype": ("float32", "float64"),
            "threshold_compare": (">", ">="), "dead_units": ("none", "nan")}


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
    category_ties: str = "first"                # per-category rule: "first" | "last" category wins
    quantile_readout: str = "linear"            # "linear" (numpy) | "midpoint" (the sketches)
    threshold_dtype: str = "float32"            # thresholds kept as "float32" | "float64" (NDL)
    threshold_compare: str = ">"                # active pixel: value > t | value >= t
    dead_units: str = "none"                    # "none": IoU 0, no label | "nan": NaN (DB)
    stale_category_flag: bool = False           # NDL's stale flag on images without pixel labels

    def __post_init__(self):
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"convention {self.name!r}: {key} must be one of {allowed}, "
                                 f"got {getattr(self, key)!r}")

    @property
    def truth_layers(self) -> bool:
        """Whether G[c] counts a pixel once per label layer holding c."""
        return self.per_layer if self.truth_per_layer is None else self.truth_per_layer

    @property
    def base(self) -> str:
        """The preset this convention was made from (its name without options)."""
        return self.name.split("[", 1)[0]

    def with_options(self, **changes) -> "Convention":
        """This convention with some rules changed; the name lists every rule that differs
        from the base preset, e.g. "netdissect-lite[stale_category_flag=true]"."""
        fields = {f.name for f in dataclasses.fields(self)} - {"name"}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown convention option(s) {unknown}; expected some of {sorted(fields)}")
        changed = dataclasses.replace(self, **changes)
        base = CONVENTIONS[self.base]
        diff = {f: getattr(changed, f) for f in sorted(fields) if getattr(changed, f) != getattr(base, f)}
        name = base.name + ("[" + ",".join(f"{k}={_format(v)}" for k, v in diff.items()) + "]" if diff else "")
        return dataclasses.replace(changed, name=name)

    def is_detector(self, iou, iqr=None):
        """Boolean mask of detectors from per-unit best IoU (and IQR where the preset uses it)."""
        hit = iou > self.detector_iou if self.detector_strict else iou >= self.detector_iou
        if self.detector_iqr is not None:
            if iqr is None:
                raise ValueError(f"convention {self.name!r} needs IQR values to decide detectors")
            hit = hit & (iqr > self.detector_iqr)
        return hit

    def readout_probability(self, q: float, count: int) -> float:
        """The probability to ask a numpy-"linear" quantile for, so that it returns this
        convention's readout of q over `count` values (the midpoint CDF puts value j at
        (j + 1/2)/count, the linear one at j/(count - 1))."""
        if self.quantile_readout == "linear" or count <= 1:
            return q
        return min(1.0, max(0.0, (q * count - 0.5) / (count - 1)))


def _format(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "+".join(v)
    return str(v)


ND_QUANTILE = 994 / 999  # = numpy.linspace(0, 1, 1000)[994]: the readout column ND and NDL use

CONVENTIONS: dict[str, Convention] = {
    "exact": Convention("exact", 0.995, "half-pixel", "raw", False, "category", 0.0,
                        0.04, False, None, False, 0, top_images=10),
    "netdissect": Convention("netdissect", ND_QUANTILE, "receptive-field", "raw", True, "category",
                             1e-20, 0.04, False, None, False, 1, sketch_resolution=24576,
                             top_images=10, label_rule="per-category", category_ties="last",
                             quantile_readout="midpoint"),
    "netdissect-lite": Convention("netdissect-lite", ND_QUANTILE, "pillow", "raw", True,
                                  "touched", 1e-10, 0.04, False, None, False, 1,
                                  excluded_categories=("material",), sketch_resolution=24576,
                                  top_images=10, label_rule="per-category", category_ties="last",
                                  quantile_readout="midpoint", threshold_dtype="float64"),
    "dissect": Convention("dissect", 0.99, "grid-sample", "upsampled", False, "all", 0.0,
                          0.04, True, None, True, 0, sketch_resolution=6144, top_images=5,
                          quantile_readout="midpoint", dead_units="nan"),
    "gandissect": Convention("gandissect", 0.995, "grid-sample-border", "raw", False, "category", 1e-20,
                             0.05, True, 0.01, False, 0, sketch_resolution=1024, top_images=20,
                             truth_per_layer=True, quantile_readout="midpoint"),
}


def get_convention(name: "str | Convention") -> Convention:
    """A preset by name, a preset with options ("name[key=value,...]"), or a Convention."""
    if isinstance(name, Convention):
        return name
    if not isinstance(name, str):
        raise TypeError(f"convention must be a name or a Convention, got {type(name).__name__}")
    base, _, rest = name.partition("[")
    if base not in CONVENTIONS:
        raise ValueError(f"unknown convention {base!r}; expected one of {sorted(CONVENTIONS)}")
    if not rest:
        return CONVENTIONS[base]
    if not rest.endswith("]"):
        raise ValueError(f"convention {name!r}: options go in brackets, e.g. {base}[union=category]")
    preset = CONVENTIONS[base]
    changes = {}
    for item in filter(None, rest[:-1].split(",")):
        key, eq, value = item.partition("=")
        if not eq or not hasattr(preset, key.strip()):
            raise ValueError(f"convention {name!r}: bad option {item!r} (expected key=value with a "
                             f"Convention field as key)")
        changes[key.strip()] = _parse(getattr(preset, key.strip()), value.strip(), name)
    return preset.with_options(**changes)


def _parse(current, text: str, name: str):
    """An option's value from text, typed like the preset's current value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"convention {name!r}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(filter(None, text.split("+")))
    if isinstance(current, (int, float)) or current is None:
        if text.lower() == "none":
            return None
        try:
            return type(current)(text) if current is not None else float(text)
        except ValueError:
            raise ValueError(f"convention {name!r}: expected a number, got {text!r}") from None
    return text
