"""Random tally inputs shared by the backend tests: small shapes, ties at the threshold, label
duplicates across layers and image labels, odd strides; and a poisoned-output runner."""
from __future__ import annotations

import random

import torch

from conftest import poison_like
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally_into
from dissect_kernels.reference.tally import upsample

GEOMETRIES = ("half-pixel", "align-corners", "zero-pad", "receptive-field", "affine-zero", "grid-sample",
              "grid-sample-border", "pillow")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def geometry(name: str) -> Geometry:
    if name == "receptive-field":
        return Geometry.receptive_field(offset=-2, size=7, stride=4, ratio=2)
    if name == "affine-zero":
        return Geometry.affine(0.37, -0.6, 0.29, 0.4, boundary="zero")
    return Geometry.named(name)


def make_case(seed: int, *, B=2, U=5, h=3, w=4, H=7, W=9, L=2, M=2, C=6, K=3,
              dtype=torch.float32, geom="half-pixel", layout="contiguous", scale=1.0,
              negative=False, device="cpu") -> dict:
    """Inputs ready for tally_into. Thresholds are exact upsampled values (ties), quantiles,
    above the map max (dead units) or -inf (everything active), unit by unit."""
    if geom == "pillow":  # PIL's resize is reproduced when enlarging
        H, W = max(H, h), max(W, w)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, U, h, w, generator=g) * scale
    if negative:
        base = -base.abs() - 1e-3 * scale
    filler = torch.randn(B, 2 * U, w, h, generator=g)
    # dtype and device first: .to() of a non-dense view returns a contiguous copy
    acts = _layout(base.to(device, dtype), filler.to(device, dtype), layout)
    if layout != "contiguous" and U > 1 and h * w > 1:
        assert not acts.is_contiguous(), layout
    ytab, xtab = geometry(geom).tables((h, w), (H, W))
    up = upsample(acts.cpu(), ytab, xtab)  # fp32 [B, U, H, W], the kernels' exact values
    thr = torch.empty(U, dtype=torch.float32)
    rng = random.Random(seed)
    for u in range(U):
        kind = rng.choice(("tie", "tie", "quantile", "dead", "all"))
        vals = up[:, u].reshape(-1)
        if kind == "tie":
            thr[u] = vals[rng.randrange(vals.numel())]
        elif kind == "quantile":
            thr[u] = torch.quantile(vals.double(), 0.8).float()
        elif kind == "dead":
            top = float(acts[:, u].float().max())
            thr[u] = top + abs(top) * 1e-5 + 1e-30
        else:
            thr[u] = float("-inf")
    labels = torch.randint(0, C, (B, L, H, W), generator=g, dtype=torch.int32)
    labels[torch.rand(B, L, H, W, generator=g) < 0.3] = 0
    image_labels = None
    if M:
        image_labels = torch.randint(0, C, (B, M), generator=g, dtype=torch.int32)
    category_of = torch.randint(0, K, (C,), generator=g, dtype=torch.int32)
    init = torch.randint(-50, 1000, (U, C), generator=g, dtype=torch.int64)
    case = dict(thresholds=thr, labels=labels, image_labels=image_labels,
                ytab=ytab, xtab=xtab, num_concepts=C, category_of=category_of,
                num_categories=K, init=init)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.items()} | {
        "acts": acts, "ytab": ytab.to(device), "xtab": xtab.to(device)}


def _layout(base: torch.Tensor, filler: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `base` [B, U, h, w] in another memory layout."""
    if layout == "channels-last":  # [B, h, w, U] storage
        return base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    if layout == "strided":  # every other unit of a larger tensor, maps transposed
        big = filler.clone()
        big[:, ::2] = base.transpose(2, 3)
        return big[:, ::2].transpose(2, 3)
    return base.clone()


def run(backend: str, case: dict, *, per_layer: bool, touched: bool, **kw) -> TallyResult:
    """Run one backend with poisoned outputs; intersection starts at case['init']."""
    acts = case["acts"]
    B, U = acts.shape[:2]
    C, K = case["num_concepts"], case["num_categories"]
    out = TallyResult.empty(B, U, C, K if touched else None, acts.device)
    for t in (out.active, out.max, out.touched):
        if t is not None:
            poison_like(t)
    out.intersection.copy_(case["init"])
    args = (acts, case["thresholds"], case["labels"], case["image_labels"], case["ytab"],
            case["xtab"], C, per_layer, case["category_of"] if touched else None,
            K if touched else None, out)
    if kw:  # block sizes, statistics or group limits for the Triton kernel
        from dissect_kernels.triton.tally import tally_into as triton_into
        triton_into(*args, **kw)
    else:
        tally_into(backend, *args)
    return out


def assert_same(got: TallyResult, want: TallyResult, what: str = "") -> None:
    """Every output bit-identical (counts exact, max exact, touched exact)."""
    for field in ("intersection", "active", "max", "touched"):
        a, b = getattr(got, field), getattr(want, field)
        if b is None:
            assert a is None, f"{what}: {field} should be None"
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {field} {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a.cpu(), b.cpu()), (
            f"{what}: {field} differs at {(a.cpu() != b.cpu()).nonzero()[:5].tolist()}")
