"""dk.tally: fused upsample -> threshold -> intersect over a batch (see csrc/include/.../tally.h)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dissect_kernels import _native
from dissect_kernels.geometry import AffineMaps, AxisTable, Geometry, device_tables
from dissect_kernels.ops import _checks, _library

BACKENDS = ("cpu", "cuda", "triton", "reference")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@dataclass
class TallyResult:
    """Counts for one batch. intersection [U, C] int64; active [B, U] int64 (mask area per
    image); max [B, U] float32 (max of each source map); touched [B, U, K] uint8 or None
    (1 where an active pixel lies on a label of category k: NetDissect-Lite's union rule)."""

    intersection: torch.Tensor
    active: torch.Tensor
    max: torch.Tensor
    touched: torch.Tensor | None = None

    @staticmethod
    def empty(B: int, U: int, C: int, K: int | None, device) -> "TallyResult":
        return TallyResult(
            intersection=torch.zeros(U, C, dtype=torch.int64, device=device),
            active=torch.empty(B, U, dtype=torch.int64, device=device),
            max=torch.empty(B, U, dtype=torch.float32, device=device),
            touched=None if K is None else torch.empty(B, U, K, dtype=torch.uint8, device=device),
        )


def tally(acts: torch.Tensor, thresholds: torch.Tensor, labels: torch.Tensor, *,
          num_concepts: int, image_labels: torch.Tensor | None = None,
          geometry: "str | Geometry" = "half-pixel", per_layer: bool = False,
          category_of: torch.Tensor | None = None, num_categories: int | None = None,
          backend: str = "auto") -> TallyResult:
    """Count, per unit and concept, the pixels where the upsampled activation exceeds the
    unit's threshold and a label layer (or an image-level label) holds the concept.

    acts [B, U, h, w] float32/16/bf16 (any strides); thresholds [U] (a pixel is active when its
    fp32 value > the threshold, compared exactly: float64 thresholds are not rounded up to
    fp32 first, see strict_thresholds); labels [B, L, H, W] or
    [B, H, W] integer ids in [0, num_concepts), 0 = unlabelled; image_labels [B, M] or None.
    per_layer counts a pixel once per layer holding c (NetDissect), else once (any layer).
    category_of [C] (ids in [0, num_categories)) asks for the `touched` output.
    Runs as torch.ops.dissect_kernels.tally (torch.compile / torch.export see one node); the
    returned intersection is new (add it to a running total yourself).
    """
    acts = _checks.tensor("acts", acts, ndim=4, dtypes=_checks.FLOAT_DTYPES)
    thresholds = _checks.tensor("thresholds", thresholds, ndim=1,
                                dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16))
    labels, image_labels, category_of = _checks.label_inputs(labels, image_labels, category_of)
    _checks.same_device(acts=acts, thresholds=thresholds, labels=labels,
                        image_labels=image_labels, category_of=category_of)
    B, U, h, w = acts.shape
    _, L, H, W = labels.shape
    if not isinstance(num_concepts, int) or isinstance(num_concepts, bool) or num_concepts < 1:
        raise ValueError(f"num_concepts must be a positive int, got {num_concepts!r}")
    if labels.shape[0] != B:
        raise ValueError(f"labels has batch size {labels.shape[0]} but acts has {B}")
    if thresholds.shape[0] != U:
        raise ValueError(f"thresholds has {thresholds.shape[0]} entries but acts has {U} units")
    if image_labels is not None and image_labels.shape[0] != B:
        raise ValueError(f"image_labels has batch size {image_labels.shape[0]} but acts has {B}")
    if min(B, U, h, w, L, H, W) == 0:
        raise ValueError(f"empty input: acts {tuple(acts.shape)}, labels {tuple(labels.shape)}")
    K = _num_categories(category_of, num_categories, num_concepts)
    _native.check_name(backend, BACKENDS)
    maps = Geometry.named(geometry).affine_maps((h, w), (H, W))
    inter, active, amax, touched = torch.ops.dissect_kernels.tally(
        acts, thresholds, labels, image_labels, category_of, num_concepts, K or 0, per_layer,
        *maps, backend)
    return TallyResult(inter, active, amax, None if K is None else touched)


def strict_thresholds(thresholds: torch.Tensor, compare: str = ">") -> torch.Tensor:
    """The fp32 thresholds t' for which `value > t'` (what every kernel tests) holds exactly
    when `value > t` (compare ">") or `value >= t` (">=") holds, for every fp32 value and the
    given thresholds t of any float dtype: a float64 t is rounded down to fp32 (NetDissect-Lite
    compares fp32 maps with float64 thresholds), and `>=` moves to the next fp32 below."""
    if compare not in (">", ">="):
        raise ValueError(f"threshold comparison must be '>' or '>=', got {compare!r}")
    t = thresholds
    t32 = t.float()
    down = torch.full_like(t32, float("-inf"))
    if t.dtype == torch.float64:
        # largest fp32 <= t (">"), or < t (">="): one step down where rounding went up / landed on t
        over = t32.double() > t if compare == ">" else t32.double() >= t
        return torch.where(over, torch.nextafter(t32, down), t32)
    return torch.nextafter(t32, down) if compare == ">=" else t32


def _num_categories(category_of, num_categories, num_concepts) -> int | None:
    """K for the `touched` output (None without category_of); category_of.max() + 1 unless
    given (torch.compile needs it given: output shapes cannot depend on values)."""
    if category_of is None:
        if num_categories is not None:
            raise ValueError("num_categories was given without category_of; pass category_of [C] "
                             "to get the `touched` output")
        return None
    if category_of.shape[0] != num_concepts:
        raise ValueError(f"category_of has {category_of.shape[0]} entries, expected num_concepts={num_concepts}")
    if num_categories is not None:
        return int(num_categories)
    if torch.compiler.is_compiling():
        raise ValueError("under torch.compile / torch.export pass num_categories with category_of")
    return int(category_of.max()) + 1


def _tally_impl(acts, thresholds, labels, image_labels, category_of, num_concepts,
                num_categories, per_layer, scale_y, offset_y, scale_x, offset_x, boundary,
                arithmetic, backend):
    """torch.ops.dissect_kernels.tally: value checks (they read the data, so they run here,
    inside compiled graphs too), backend choice, then one backend on fresh outputs."""
    _checks.not_nan("thresholds", thresholds)
    _checks.not_nan("acts", acts)
    _checks.ids_in_range("labels", labels, num_concepts)
    _checks.ids_in_range("image_labels", image_labels, num_concepts)
    K = num_categories if category_of is not None else None
    if K is not None:
        _checks.ids_in_range("category_of", category_of, K, "num_categories")
    device = acts.device
    name = _native.resolve(backend, device, BACKENDS)
    (B, U, h, w), (H, W) = acts.shape, labels.shape[2:]
    ytab, xtab = device_tables(AffineMaps(scale_y, offset_y, scale_x, offset_x, boundary, arithmetic),
                               (h, w), (H, W), device)
    out = TallyResult.empty(B, U, num_concepts, K if K is not None else 0, device)
    tally_into(name, acts, strict_thresholds(thresholds).contiguous(), labels.to(torch.int32).contiguous(),
               None if image_labels is None else image_labels.to(torch.int32).contiguous(),
               ytab, xtab, num_concepts, per_layer,
               None if K is None else category_of.to(torch.int32).contiguous(), K,
               _without_touched(out, K))
    return out.intersection, out.active, out.max, out.touched


def _without_touched(out: TallyResult, K) -> TallyResult:
    return out if K is not None else TallyResult(out.intersection, out.active, out.max, None)


def _tally_fake(acts, thresholds, labels, image_labels, category_of, num_concepts,
                num_categories, per_layer, scale_y, offset_y, scale_x, offset_x, boundary,
                arithmetic, backend):
    B, U = acts.shape[:2]
    K = num_categories if category_of is not None else 0
    return (acts.new_empty((U, num_concepts), dtype=torch.int64),
            acts.new_empty((B, U), dtype=torch.int64), acts.new_empty((B, U), dtype=torch.float32),
            acts.new_empty((B, U, K), dtype=torch.uint8))


_library.define(
    "tally(Tensor acts, Tensor thresholds, Tensor labels, Tensor? image_labels, Tensor? category_of, "
    "int num_concepts, int num_categories, bool per_layer, float scale_y, float offset_y, "
    "float scale_x, float offset_x, str boundary, str arithmetic, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    _tally_impl, _tally_fake)


def tally_into(backend: str, acts, thresholds, labels, image_labels, ytab: AxisTable,
               xtab: AxisTable, num_concepts: int, per_layer: bool, category_of, num_categories,
               out: TallyResult) -> None:
    """Run one concrete backend on prepared inputs (int32 contiguous labels, fp32 thresholds,
    tables on the device), writing into `out`. Tests call this to poison outputs first."""
    args = (acts, thresholds, labels, image_labels, ytab, xtab, num_concepts, per_layer,
            category_of, num_categories, out)
    if backend == "reference":
        from dissect_kernels.reference.tally import tally_into as run
        run(*args)
    elif backend == "triton":
        from dissect_kernels.triton.tally import tally_into as run
        run(*args)
    else:
        module = _native.native("_C" if backend == "cpu" else "_cuda")
        module.tally(_native_spec(*args), _native.stream_handle(acts.device))


def _native_spec(acts, thresholds, labels, image_labels, ytab, xtab, num_concepts, per_layer,
                 category_of, num_categories, out) -> dict:
    """Pointers, shapes and element strides for the C++ entry point (python/bind_common.h)."""
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    B, U, h, w = acts.shape
    return dict(
        acts=ptr(acts), acts_dtype=_DTYPE_CODE[acts.dtype], B=B, U=U, h=h, w=w,
        acts_stride=list(acts.stride()), thresholds=ptr(thresholds),
        labels=ptr(labels), L=labels.shape[1], H=labels.shape[2], W=labels.shape[3],
        image_labels=ptr(image_labels), M=0 if image_labels is None else image_labels.shape[1],
        ytab=ytab.spec(), xtab=xtab.spec(),
        C=num_concepts, per_layer=bool(per_layer),
        category_of=ptr(category_of), K=num_categories or 0,
        intersection=ptr(out.intersection), active=ptr(out.active), max=ptr(out.max),
        touched=ptr(out.touched),
    )
