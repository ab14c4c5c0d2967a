"""dk.tally: the CPU kernel equals the oracle bit for bit on random shapes, dtypes, strides,
geometries and thresholds (ties, inf, adversarial bounds); bad input gets a clear error."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dissect_kernels as dk
from dissect_kernels import _native
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally_into
from dissect_kernels.reference.tally import upsample
from tests.conftest import poison_like

needs_cpu = pytest.mark.skipif(_native.native("_C") is None, reason="dissect_kernels._C not built")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FIELDS = ("intersection", "active", "max", "touched")


def run_backend(backend, acts, thresholds, labels, image_labels, geometry, C, per_layer,
                category_of=None, K=None, seed=0):
    """tally_into on poisoned outputs; intersection starts from random non-zero counts and is
    returned minus that start (so += is checked)."""
    B, U, h, w = acts.shape
    H, W = labels.shape[-2:]
    ytab, xtab = Geometry.named(geometry).tables((h, w), (H, W))
    out = TallyResult.empty(B, U, C, K, acts.device)
    poison_like(out.active), poison_like(out.max)
    if out.touched is not None:
        poison_like(out.touched)
    start = torch.randint(1, 1 << 40, (U, C), generator=torch.Generator().manual_seed(seed))
    out.intersection.copy_(start)
    tally_into(backend, acts, thresholds.float().contiguous(), labels.to(torch.int32).contiguous(),
               None if image_labels is None else image_labels.to(torch.int32).contiguous(),
               ytab, xtab, C, per_layer,
               None if category_of is None else category_of.to(torch.int32).contiguous(), K, out)
    out.intersection -= start
    return out


def assert_same(a: TallyResult, b: TallyResult):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None:
            assert x is None and y is None, f
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert torch.equal(x, y), f"{f} differs: {(x != y).sum().item()} entries"


def both(*args, **kw):
    got = run_backend("cpu", *args, **kw)
    want = run_backend("reference", *args, **kw)
    assert_same(got, want)
    assert (got.intersection >= 0).all() and (got.active >= 0).all()
    return got


# ---------------------------------------------------------------------------- strategies
@st.composite
def geometries(draw):
    kind = draw(st.sampled_from(["half-pixel", "align-corners", "zero-pad", "rf", "affine", "grid-sample",
                                 "grid-sample-border", "grid-conv", "pillow"]))
    if kind == "rf":
        ratio = draw(st.sampled_from([1, 2]))
        stride = ratio * draw(st.integers(1, 8))
        return Geometry.receptive_field(draw(st.integers(-12, 4)), draw(st.integers(1, 40)), stride, ratio)
    if kind == "grid-conv":   # davidbau/dissect's conv-list mapping (scale_offset + image size)
        so = st.tuples(st.sampled_from([4.0, 8.0, 16.0, 32.0]), st.floats(-3.0, 40.0))
        return Geometry.grid_sample((draw(so), draw(so)), (draw(st.integers(20, 240)),) * 2,
                                    draw(st.sampled_from(["zero", "border"])))
    if kind == "affine":
        f = st.floats(0.02, 3.0)
        o = st.floats(-5.0, 5.0)
        return Geometry.affine(draw(f), draw(o), draw(f), draw(o),
                               draw(st.sampled_from(["clamp", "zero", "border"])))
    return kind


def make_acts(gen, B, U, h, w, dtype, layout, content):
    """Activations in a given memory layout; contents with ties, negatives and outliers."""
    def rand(*shape):
        x = torch.randn(*shape, generator=gen)
        if content == "relu":
            x = x.relu() * torch.rand(shape[:2] + (1,) * (len(shape) - 2), generator=gen) * 4
        elif content == "ties":  # few distinct values: exact ties everywhere
            x = torch.randint(-3, 4, shape, generator=gen).float() * 0.25
        elif content == "heavy":
            x = x.exp() * 10.0 ** torch.randint(-2, 3, shape[:2] + (1,) * (len(shape) - 2), generator=gen)
        elif content == "negative":
            x = -x.abs() - 0.5
        return x.to(dtype)

    if layout == "transposed":
        return rand(B, U, w, h).transpose(2, 3)
    if layout == "sliced":
        return rand(B, 2 * U, h + 1, w + 3)[:, ::2, 1:, 2:w + 2]
    if layout == "expanded":
        return rand(1, U, h, w).expand(B, U, h, w)
    if layout == "channels_last":
        return rand(B, U, h, w).contiguous(memory_format=torch.channels_last)
    return rand(B, U, h, w)


def make_thresholds(gen, up, mode):
    """[U] thresholds from the upsampled values (exact ties), quantiles, or extreme values."""
    B, U = up.shape[:2]
    flat = up.transpose(0, 1).reshape(U, -1)
    if mode == "value":
        idx = torch.randint(0, flat.shape[1], (U,), generator=gen)
        return flat[torch.arange(U), idx].clone()
    if mode == "quantile":
        q = torch.rand(U, generator=gen) * 0.2 + 0.8
        return torch.stack([flat[i].quantile(q[i]) for i in range(U)])
    if mode == "max":  # the largest upsampled value and its fp32 neighbours
        top = flat.amax(1)
        step = torch.randint(-1, 2, (U,), generator=gen)
        t = torch.where(step < 0, torch.nextafter(top, torch.tensor(-math.inf)), top)
        return torch.where(step > 0, torch.nextafter(top, torch.tensor(math.inf)), t)
    if mode == "negative":
        return -torch.rand(U, generator=gen) * 3
    if mode == "inf":
        return torch.tensor([math.inf, -math.inf])[torch.randint(0, 2, (U,), generator=gen)]
    raise AssertionError(mode)


@needs_cpu
@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 4), U=st.integers(1, 37), h=st.integers(1, 9), w=st.integers(1, 9),
       H=st.integers(1, 40), W=st.integers(1, 40), L=st.integers(1, 3), M=st.integers(0, 3),
       C=st.integers(2, 60), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(["contiguous", "transposed", "sliced", "expanded", "channels_last"]),
       content=st.sampled_from(["normal", "relu", "ties", "heavy", "negative"]),
       geometry=geometries(),
       tmode=st.sampled_from(["value", "quantile", "max", "negative", "inf"]),
       per_layer=st.booleans(), with_categories=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_cpu_equals_reference(B, U, h, w, H, W, L, M, C, dtype, layout, content, geometry, tmode,
                              per_layer, with_categories, seed):
    if geometry == "pillow":  # PIL's resize is reproduced when enlarging
        H, W = max(H, h), max(W, w)
    if isinstance(geometry, Geometry) and geometry.name == "grid-sample" and min(H, W) == 1:
        H, W = max(H, 2), max(W, 2)  # a conv-list grid rescaled to a 1-pixel target is refused (see below)
    gen = torch.Generator().manual_seed(seed)
    acts = make_acts(gen, B, U, h, w, dtype, layout, content)
    ytab, xtab = Geometry.named(geometry).tables((h, w), (H, W))
    thresholds = make_thresholds(gen, upsample(acts, ytab, xtab), tmode)
    # Labels: blobs of repeated ids (duplicates across layers, zeros) plus noise.
    labels = torch.randint(0, C, (B, L, H, W), generator=gen)
    labels[:, :, : H // 2] = labels[:, :1, : H // 2]  # same id in several layers
    labels[torch.rand(B, L, H, W, generator=gen) < 0.3] = 0
    image_labels = None if M == 0 else torch.randint(0, C, (B, M), generator=gen)
    if image_labels is not None and M > 1:
        image_labels[:, -1] = image_labels[:, 0]  # a repeated image-level label
        labels[0, 0, 0, 0] = int(image_labels[0, 0])  # a pixel label equal to an image label
    K = category_of = None
    if with_categories:
        K = int(torch.randint(1, 6, (1,), generator=gen))
        category_of = torch.randint(0, K, (C,), generator=gen)
    got = both(acts, thresholds, labels, image_labels, geometry, C, per_layer, category_of, K, seed=seed)
    # Properties that do not depend on the oracle (so these cases cannot pass vacuously):
    if tmode == "inf":
        assert (got.active[:, thresholds == math.inf] == 0).all()
        assert (got.active[:, thresholds == -math.inf] == H * W).all()
    if tmode == "negative" and content in ("relu", "heavy"):  # values >= 0 > t everywhere
        assert (got.active == H * W).all()
        assert got.max.ge(0).all()


# ------------------------------------------------------------ adversarial tests of the skip bound
@needs_cpu
@pytest.mark.parametrize("geometry", ["half-pixel", "align-corners", "zero-pad",
                                      Geometry.affine(0.37, -1.3, 0.71, 2.2, "zero")])
def test_bound_constant_maps_overshoot(geometry):
    """Constant maps: fp32 weight sums slightly above 1 make some upsampled values exceed the
    source max by an ulp. Thresholds at the source max (and its neighbours) must still count
    them: a skip bound without rounding slack would drop these pixels."""
    gen = torch.Generator().manual_seed(7)
    U = 300
    vals = torch.randn(U, generator=gen) * 10.0 ** torch.randint(-30, 30, (U,), generator=gen)
    acts = vals[None, :, None, None].expand(2, U, 5, 3).contiguous()
    acts[1] = -acts[1]
    labels = torch.randint(0, 5, (2, 1, 13, 29), generator=gen)
    ytab, xtab = Geometry.named(geometry).tables((5, 3), (13, 29))
    up = upsample(acts, ytab, xtab)
    overshoot = (up.amax((2, 3)) > acts.amax((2, 3))).sum().item()
    for t in (vals, vals.abs(), -vals.abs(), torch.nextafter(vals, torch.tensor(-math.inf)),
              torch.nextafter(-vals.abs(), torch.tensor(-math.inf))):
        got = both(acts, t, labels, None, geometry, 5, False)
    if geometry in ("half-pixel", "align-corners"):
        assert overshoot > 0  # the case this test is about does occur here
        assert got.active.sum() > 0


@needs_cpu
@pytest.mark.parametrize("geometry", ["half-pixel", "zero-pad", "align-corners"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bound_thresholds_near_max(geometry, sign):
    """Thresholds just below / at / above each map's upsampled max, for positive and all-negative
    maps (zero padding blends toward 0, so values above a negative max appear at the border)."""
    gen = torch.Generator().manual_seed(3 if sign > 0 else 4)
    B, U, h, w, H, W = 3, 23, 4, 6, 19, 27
    acts = (torch.rand(B, U, h, w, generator=gen) + 0.1) * sign * 10.0 ** torch.randint(-3, 4, (1, U, 1, 1), generator=gen)
    labels = torch.randint(0, 9, (B, 2, H, W), generator=gen)
    ytab, xtab = Geometry.named(geometry).tables((h, w), (H, W))
    top = upsample(acts, ytab, xtab).transpose(0, 1).reshape(U, -1).amax(1)
    src_max = acts.amax((0, 2, 3))
    below_top = torch.nextafter(top, torch.tensor(-math.inf))
    for t in (top, below_top, torch.nextafter(top, torch.tensor(math.inf)),
              src_max, torch.nextafter(src_max, torch.tensor(-math.inf)), src_max * (1 - 1e-6)):
        got = both(acts, t, labels, torch.randint(0, 9, (B, 2), generator=gen), geometry, 9, False,
                   torch.randint(0, 3, (9,), generator=gen), 3)
        if t is below_top:  # the top pixel of every unit is active: nothing may be skipped
            assert (got.active.sum(0) >= 1).all()
        if t is top:
            assert (got.active == 0).all()


@needs_cpu
def test_bound_tiny_and_subnormal_values():
    """Maps of subnormal / tiny magnitude: the bound's absolute slack covers underflow."""
    gen = torch.Generator().manual_seed(11)
    acts = torch.rand(2, 17, 3, 4, generator=gen) * torch.tensor([1e-44, 1e-38, 1e-30])[torch.randint(0, 3, (1, 17, 1, 1), generator=gen)]
    labels = torch.randint(0, 4, (2, 1, 11, 7), generator=gen)
    for geometry in ("half-pixel", "zero-pad"):
        ytab, xtab = Geometry.named(geometry).tables((3, 4), (11, 7))
        top = upsample(acts, ytab, xtab).transpose(0, 1).reshape(17, -1).amax(1)
        for t in (top, torch.nextafter(top, torch.tensor(-math.inf)), torch.zeros(17)):
            both(acts, t, labels, None, geometry, 4, True)


@needs_cpu
def test_nonfinite_acts():
    """+-inf in a map (inf*0 = NaN in the interpolation): no skipping, same result as the oracle."""
    gen = torch.Generator().manual_seed(5)
    acts = torch.randn(2, 6, 3, 3, generator=gen)
    acts[0, 1, 1, 1] = math.inf
    acts[1, 2, 0, 0] = -math.inf
    acts[1, 3] = -math.inf
    labels = torch.randint(0, 4, (2, 1, 8, 8), generator=gen)
    for geometry in ("half-pixel", "zero-pad", "align-corners"):
        for t in (torch.zeros(6), torch.full((6,), -math.inf), torch.full((6,), 3.0)):
            both(acts, t, labels, torch.randint(0, 4, (2, 1), generator=gen), geometry, 4, False)


# ----------------------------------------------------------------- whole-tally semantics, by hand
@needs_cpu
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_semantics_by_hand(backend):
    """A 1x1 map upsampled to 2x3 is constant: every pixel is active. Counts worked by hand."""
    acts = torch.tensor([[[[2.0]], [[-1.0]]]])  # B=1, U=2
    thresholds = torch.tensor([1.0, 0.0])  # unit 0 active everywhere, unit 1 nowhere
    labels = torch.tensor([[[[1, 1, 2], [0, 3, 3]],
                            [[1, 2, 2], [3, 0, 4]]]])  # L=2, H=2, W=3
    image_labels = torch.tensor([[4, 4, 0]])
    category_of = torch.tensor([0, 0, 1, 1, 2])
    r = dk.tally(acts, thresholds, labels, num_concepts=5, image_labels=image_labels,
                 category_of=category_of, num_categories=3, backend=backend)
    # any layer: c1 at (0,0),(0,1) -> 2; c2 at (0,1),(0,2) -> 2 (dedup at (0,2));
    # c3 at (1,0),(1,1),(1,2) -> 3; c4: image label covers all 6 pixels (pixel (1,2) deduped).
    assert r.intersection[0].tolist() == [0, 2, 2, 3, 6]
    assert r.intersection[1].tolist() == [0] * 5
    assert r.active.tolist() == [[6, 0]]
    assert r.max.tolist() == [[2.0, -1.0]]
    assert r.touched.tolist() == [[[1, 1, 1], [0, 0, 0]]]
    p = dk.tally(acts, thresholds, labels, num_concepts=5, image_labels=image_labels,
                 per_layer=True, backend=backend)
    # per layer: c1 3, c2 3, c3 3, c4: 1 pixel label + 2 image labels x 6 pixels = 13.
    assert p.intersection[0].tolist() == [0, 3, 3, 3, 13]
    assert p.touched is None


@needs_cpu
def test_public_entry_point_matches_reference():
    """dk.tally(backend="cpu") == backend="reference" including [B,H,W] labels and int64 ids."""
    gen = torch.Generator().manual_seed(2)
    acts = torch.randn(3, 11, 7, 7, generator=gen).relu()
    labels = torch.randint(0, 30, (3, 28, 28), generator=gen)
    kw = dict(num_concepts=30, image_labels=torch.randint(0, 30, (3, 2), generator=gen),
              category_of=torch.randint(0, 4, (30,), generator=gen), geometry="zero-pad")
    t = torch.rand(11, generator=gen)
    assert_same(dk.tally(acts, t, labels, backend="cpu", **kw),
                dk.tally(acts, t, labels, backend="reference", **kw))
    assert_same(dk.tally(acts, t, labels, **kw), dk.tally(acts, t, labels, backend="reference", **kw))


@needs_cpu
def test_accumulates_across_calls():
    """intersection is accumulated (+=): two calls on halves equal one call on the whole."""
    gen = torch.Generator().manual_seed(9)
    acts = torch.randn(4, 5, 3, 3, generator=gen)
    labels = torch.randint(0, 6, (4, 2, 9, 9), generator=gen)
    t = torch.zeros(5)
    whole = run_backend("cpu", acts, t, labels, None, "half-pixel", 6, False)
    ytab, xtab = Geometry.named("half-pixel").tables((3, 3), (9, 9))
    out = TallyResult.empty(2, 5, 6, None, "cpu")
    for half in (slice(0, 2), slice(2, 4)):
        tally_into("cpu", acts[half], t, labels[half].int().contiguous(), None, ytab, xtab, 6, False, None, None, out)
    assert torch.equal(out.intersection, whole.intersection)
    assert whole.intersection.sum() > 0


# ------------------------------------------------------------------------------- bad input
def _good():
    g = torch.Generator().manual_seed(0)
    return dict(acts=torch.rand(2, 3, 4, 4, generator=g), thresholds=torch.rand(3, generator=g),
                labels=torch.randint(0, 5, (2, 1, 8, 8), generator=g), num_concepts=5,
                image_labels=torch.randint(0, 5, (2, 2), generator=g), category_of=torch.tensor([0, 1, 0, 1, 1]))


def _call(**changes):
    kw = _good()
    kw.update(changes)
    return dk.tally(kw.pop("acts"), kw.pop("thresholds"), kw.pop("labels"), **kw)


@pytest.mark.parametrize("changes, error, words", [
    (dict(labels=torch.full((2, 1, 8, 8), 5)), ValueError, ["labels", "num_concepts"]),
    (dict(labels=torch.full((2, 1, 8, 8), -1)), ValueError, ["labels", "[0, 5)"]),
    (dict(image_labels=torch.full((2, 2), 7)), ValueError, ["image_labels", "num_concepts"]),
    (dict(image_labels=torch.full((2, 2), -3)), ValueError, ["image_labels"]),
    (dict(labels=torch.randint(0, 5, (3, 1, 8, 8))), ValueError, ["labels", "batch"]),
    (dict(labels=torch.randint(0, 5, (8, 8))), ValueError, ["labels", "dimensions"]),
    (dict(thresholds=torch.rand(4)), ValueError, ["thresholds", "units"]),
    (dict(thresholds=torch.rand(3, 1)), ValueError, ["thresholds", "dimensions"]),
    (dict(image_labels=torch.randint(0, 5, (3, 2))), ValueError, ["image_labels", "batch"]),
    (dict(image_labels=torch.randint(0, 5, (2,))), ValueError, ["image_labels", "dimensions"]),
    (dict(category_of=torch.randint(0, 2, (4,))), ValueError, ["category_of", "num_concepts"]),
    (dict(category_of=torch.tensor([0, 1, -1, 0, 0])), ValueError, ["category_of"]),
    (dict(category_of=torch.tensor([0, 1, 3, 0, 0]), num_categories=2), ValueError, ["category_of", "num_categories"]),
    (dict(thresholds=torch.tensor([0.5, math.nan, 0.1])), ValueError, ["thresholds", "NaN"]),
    (dict(acts=torch.rand(2, 3, 4, 4).index_put_((torch.tensor([1]),) * 4, torch.tensor(math.nan))), ValueError, ["acts", "NaN"]),
    (dict(labels=torch.rand(2, 1, 8, 8)), TypeError, ["labels", "dtype"]),
    (dict(image_labels=torch.rand(2, 2)), TypeError, ["image_labels", "dtype"]),
    (dict(category_of=torch.rand(5)), TypeError, ["category_of", "dtype"]),
    (dict(acts=torch.randint(0, 5, (2, 3, 4, 4))), TypeError, ["acts", "dtype"]),
    (dict(acts=torch.rand(2, 3, 4, 4, dtype=torch.float64)), TypeError, ["acts", "dtype"]),
    (dict(acts=torch.rand(3, 4, 4)), ValueError, ["acts", "dimensions"]),
    (dict(acts=[[0.0]]), TypeError, ["acts", "Tensor"]),
    (dict(thresholds=torch.randint(0, 3, (3,))), TypeError, ["thresholds", "dtype"]),
    (dict(geometry="bicubic"), ValueError, ["geometry", "bicubic"]),
    (dict(backend="gpu"), ValueError, ["backend", "gpu"]),
    (dict(backend="cuda"), RuntimeError, ["backend", "cuda"]),
    (dict(num_concepts=0), ValueError, ["num_concepts"]),
    (dict(num_concepts=5.0), ValueError, ["num_concepts"]),
    (dict(acts=torch.rand(2, 3, 0, 4)), ValueError, ["empty"]),
    (dict(num_concepts=True), ValueError, ["num_concepts"]),
    (dict(category_of=None, num_categories=3), ValueError, ["num_categories", "category_of"]),
    (dict(labels=torch.randint(0, 5, (2, 1, 8, 8)).bool()), TypeError, ["labels", "dtype"]),
    (dict(thresholds=torch.rand(3).to("meta")), ValueError, ["thresholds", "meta"]),
])
def test_bad_input(changes, error, words):
    with pytest.raises(error) as info:
        _call(**changes)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_good_input_passes():
    """The baseline of the bad-input table itself runs (so each failure above is the change)."""
    r = _call()
    assert r.intersection.shape == (3, 5) and r.touched.shape == (2, 3, 2)


def test_bad_geometry_boundary():
    with pytest.raises(ValueError, match="boundary"):
        Geometry.affine(1.0, 0.0, 1.0, 0.0, "reflect")


def test_threshold_dtypes_accepted():
    """float64 thresholds compare exactly with the fp32 values (value > t in float64, as
    NetDissect-Lite compares), not after rounding t to fp32: thresholds just above and below
    fp32 values, whose nearest fp32 is that value, split the ties the exact way."""
    kw = _good()
    up = upsample(kw["acts"], *Geometry.named("half-pixel").tables(kw["acts"].shape[2:], kw["labels"].shape[2:]))
    vals = up[0, :, 2, 3].double()                       # one upsampled value per unit
    for t64 in (vals + vals.abs() * 1e-12, vals - vals.abs() * 1e-12, torch.rand(3, dtype=torch.float64)):
        a = _call(**dict(kw, thresholds=t64), backend="cpu")
        b = _call(**dict(kw, thresholds=t64), backend="reference")
        assert_same(a, b)
        assert torch.equal(a.active, (up.double() > t64[None, :, None, None]).sum((2, 3)))


def test_strict_thresholds_match_the_comparison():
    """strict_thresholds(t, compare) makes `v > t'` equal `v > t` / `v >= t` for fp32 v."""
    from dissect_kernels.ops.tally import strict_thresholds
    g = torch.Generator().manual_seed(3)
    v = torch.randn(4000, generator=g)
    t64 = torch.cat([v[:50].double(), v[50:100].double() + 1e-9, torch.randn(50, generator=g, dtype=torch.float64),
                     torch.tensor([math.inf, -math.inf, 3e39, -3e39], dtype=torch.float64)])
    for t in (t64, t64.float()):
        for cmp in (">", ">="):
            want = v.double()[:, None] > t[None, :].double() if cmp == ">" else v.double()[:, None] >= t[None, :].double()
            got = v[:, None] > strict_thresholds(t, cmp)[None, :]
            assert torch.equal(got, want), (t.dtype, cmp)


@functools.lru_cache(maxsize=1)
def _large_case():
    """Large enough for the kernel's OpenMP team (>= 2^25 unit-pixels): realistic sparse maps,
    high-quantile thresholds (the skip paths), blob labels. The expected result comes from calls
    on 16-unit chunks, small enough to run on one thread."""
    gen = torch.Generator().manual_seed(21)
    B, U, h, w, H, W, C = 16, 176, 7, 7, 112, 112, 40
    acts = (F.avg_pool2d(torch.randn(B * U, 1, h + 2, w + 2, generator=gen), 3, stride=1)
            .reshape(B, U, h, w) * 3 - 0.3).relu() * torch.randn(B, U, 1, 1, generator=gen).exp()
    ytab, xtab = Geometry.named("half-pixel").tables((h, w), (H, W))
    labels = torch.randint(0, C, (B, 2, H // 8, W // 8), generator=gen).repeat_interleave(8, 2).repeat_interleave(8, 3)
    image_labels = torch.randint(0, C, (B, 1), generator=gen)
    category_of = torch.randint(0, 5, (C,), generator=gen)
    thresholds = torch.empty(U)
    for lo in range(0, U, 16):  # ~1 % or ~50 active pixels per unit (fewer with ties)
        part = upsample(acts[:, lo:lo + 16], ytab, xtab).transpose(0, 1).reshape(-1, B * H * W)
        k = B * H * W - (50 if lo % 32 else B * H * W // 100)
        thresholds[lo:lo + 16] = part.kthvalue(k, dim=1).values
    args = (labels, image_labels, "half-pixel", C, False, category_of, 5)
    chunks = [run_backend("cpu", acts[:, lo:lo + 16], thresholds[lo:lo + 16], *args) for lo in range(0, U, 16)]
    want = TallyResult(torch.cat([c.intersection for c in chunks]), torch.cat([c.active for c in chunks], 1),
                       torch.cat([c.max for c in chunks], 1), torch.cat([c.touched for c in chunks], 1))
    return acts, thresholds, args, chunks, want


@needs_cpu
def test_large_case_chunks_equal_reference():
    """The single-threaded expectation of the large case equals the oracle (two chunks)."""
    acts, thresholds, args, chunks, want = _large_case()
    for lo in (0, 16):
        assert_same(chunks[lo // 16], run_backend("reference", acts[:, lo:lo + 16], thresholds[lo:lo + 16], *args))
    assert (want.active.sum(0) > 0).float().mean() > 0.5  # most units have active pixels


@needs_cpu
@pytest.mark.parametrize("strategy", ["partials", "unit-blocks"])
def test_multithreaded_equals_single_threaded(strategy, monkeypatch):
    """Both parallel strategies: per-thread partial counts (default) and unit blocks (used when
    U*C is huge; forced here through the environment override)."""
    if strategy == "unit-blocks":
        monkeypatch.setenv("DK_TALLY_CPU_PARTIAL_BYTES", "0")
    acts, thresholds, args, chunks, want = _large_case()
    assert_same(run_backend("cpu", acts, thresholds, *args), want)


def test_grid_sample_with_image_size_refuses_a_one_pixel_target():
    """davidbau/dissect rescales a conv-list scale_offset by (T - 1) / (N - 1): 0 for a 1-pixel
    target, where its grid divides by zero; here that is a clear error instead."""
    geometry = Geometry.grid_sample(((8.0, 0.0), (8.0, 0.0)), (64, 64))
    with pytest.raises(ValueError, match="1-pixel target"):
        geometry.tables((4, 4), (1, 6))
