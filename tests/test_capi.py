"""The C library (libdissect_kernels.so, the C ABI) gives the Python API's results on the same
inputs: tally, label_stats, geometry tables, top-k and exact quantiles on random shapes, strides,
dtypes and contents (ctypes; dissect_kernels.clib finds the library)."""
import ctypes as C

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dissect_kernels as dk
from capi_ctypes import (DK_ERR_INVALID_ARGUMENT, DK_ERR_STATE, DK_QUANTILE_EXACT, DK_QUANTILE_SKETCH, DTYPE, GEOMETRY,
                         AxisTable, TallyArgs, check, i64s, load, ptr)
from conftest import poison_like
from dissect_kernels.geometry import Geometry
from test_quantile import relu_like

LIB = load()
SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def c_tables(geometry: str, n_src: int, n_dst: int):
    """The C library's axis table (i0, i1, w0, w1) for a named geometry."""
    out = (torch.empty(n_dst, dtype=torch.int32), torch.empty(n_dst, dtype=torch.int32),
           torch.empty(n_dst), torch.empty(n_dst))
    check(LIB, LIB.dk_axis_table_named(GEOMETRY[geometry], n_src, n_dst, *(ptr(t) for t in out)))
    return out


@st.composite
def tally_case(draw):
    B, U, h, w = (draw(st.integers(1, n)) for n in (3, 6, 5, 5))
    L, H, W, M, C_ = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12)), \
        draw(st.integers(0, 2)), draw(st.integers(2, 9))
    dtype = draw(st.sampled_from(list(DTYPE)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    acts = torch.randn(B, h, U, w, generator=g).to(dtype)
    acts = acts.permute(0, 2, 1, 3) if draw(st.booleans()) else acts.reshape(B, U, h, w)
    thresholds = torch.rand(U, generator=g) * 1.5 - 0.5
    labels = torch.randint(0, C_, (B, L, H, W), generator=g, dtype=torch.int32)
    image_labels = torch.randint(0, C_, (B, M), generator=g, dtype=torch.int32) if M else None
    category_of = torch.randint(0, 3, (C_,), generator=g, dtype=torch.int32) if draw(st.booleans()) else None
    return dict(acts=acts, thresholds=thresholds, labels=labels, image_labels=image_labels,
                category_of=category_of, num_concepts=C_, per_layer=draw(st.booleans()),
                geometry=draw(st.sampled_from(sorted(GEOMETRY))))


def c_tally(case):
    """dk_tally on the case, with the C library's own geometry tables and poisoned outputs."""
    acts, labels = case["acts"], case["labels"]
    B, U, h, w = acts.shape
    _, L, H, W = labels.shape
    K = None if case["category_of"] is None else 3
    out = dk.TallyResult.empty(B, U, case["num_concepts"], K, torch.device("cpu"))
    for t in (out.active, out.max) + (() if out.touched is None else (out.touched,)):
        poison_like(t)
    ytab, xtab = c_tables(case["geometry"], h, H), c_tables(case["geometry"], w, W)
    a = TallyArgs(acts=ptr(acts), acts_dtype=DTYPE[acts.dtype], B=B, U=U, h=h, w=w, acts_stride=i64s(*acts.stride()),
                  thresholds=ptr(case["thresholds"]), labels=ptr(labels), L=L, H=H, W=W,
                  image_labels=ptr(case["image_labels"]), M=0 if case["image_labels"] is None else case["image_labels"].shape[1],
                  ytab=AxisTable(*(ptr(t) for t in ytab[:4])), xtab=AxisTable(*(ptr(t) for t in xtab[:4])),
                  num_concepts=case["num_concepts"], per_layer=int(case["per_layer"]),
                  category_of=ptr(case["category_of"]), num_categories=K or 0,
                  intersection=ptr(out.intersection), active=ptr(out.active), max=ptr(out.max), touched=ptr(out.touched))
    check(LIB, LIB.dk_tally(C.byref(a)))
    return out, (ytab, xtab)


@settings(**SETTINGS)
@given(case=tally_case())
def test_tally_and_tables_equal_the_python_api(case):
    got, (ytab, xtab) = c_tally(case)
    acts, labels = case["acts"], case["labels"]
    py_y, py_x = Geometry.named(case["geometry"]).tables(acts.shape[2:], labels.shape[2:])
    for c_t, p_t in zip(ytab + xtab, tuple(py_y[:4]) + tuple(py_x[:4])):
        assert torch.equal(c_t, p_t)
    for backend in ("reference", "auto"):
        want = dk.tally(acts, case["thresholds"], labels, num_concepts=case["num_concepts"],
                        image_labels=case["image_labels"], geometry=case["geometry"], per_layer=case["per_layer"],
                        category_of=case["category_of"], num_categories=None if case["category_of"] is None else 3,
                        backend=backend)
        for field in ("intersection", "active", "max", "touched"):
            a, b = getattr(got, field), getattr(want, field)
            assert (a is None and b is None) or torch.equal(a, b), (backend, field)


@settings(**SETTINGS)
@given(case=tally_case())
def test_label_stats_equal_the_python_api(case):
    labels, image_labels, category_of = case["labels"], case["image_labels"], case["category_of"]
    B, L, H, W = labels.shape
    C_ = case["num_concepts"]
    pixels = poison_like(torch.empty(B, C_, dtype=torch.int64))
    present = None if category_of is None else poison_like(torch.empty(B, 3, dtype=torch.uint8))
    check(LIB, LIB.dk_label_stats(ptr(labels), B, L, H, W, ptr(image_labels), 0 if image_labels is None else
                                  image_labels.shape[1], C_, int(case["per_layer"]), ptr(category_of),
                                  0 if category_of is None else 3, ptr(pixels), ptr(present)))
    for backend in ("reference", "auto"):
        want = dk.label_stats(labels, image_labels, num_concepts=C_, category_of=category_of,
                              num_categories=None if category_of is None else 3, per_layer=case["per_layer"],
                              backend=backend)
        assert torch.equal(pixels, want.pixels)
        assert (present is None and want.present is None) or torch.equal(present.bool(), want.present)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31), U=st.integers(1, 5), k=st.integers(1, 9), sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
       dtype=st.sampled_from(list(DTYPE)))
def test_topk_equals_the_python_api(seed, U, k, sizes, dtype):
    """Batches with ties (a coarse grid), item ids out of order, a strided score view, a merge."""
    g = torch.Generator().manual_seed(seed)
    ref, handles = dk.TopK(U, k), [C.c_void_p(), C.c_void_p()]
    for h in handles:
        check(LIB, LIB.dk_topk_create(U, k, C.byref(h)))
    for i, n in enumerate(sizes):
        scores = (torch.randint(0, 6, (U, n), generator=g).float() / 2).to(dtype).t()   # [n, U], strided
        ids = torch.randperm(1000, generator=g)[:n].long()
        ref.update(scores, ids)
        check(LIB, LIB.dk_topk_update(handles[i % 2], ptr(scores), DTYPE[dtype], n, U, *scores.stride(), ptr(ids)))
    check(LIB, LIB.dk_topk_merge(handles[0], handles[1]))
    values, indices = torch.empty(U, k), torch.empty(U, k, dtype=torch.int64)
    check(LIB, LIB.dk_topk_result(handles[0], ptr(values), ptr(indices)))
    want_v, want_i = ref.result()
    assert torch.equal(values, want_v) and torch.equal(indices, want_i)
    for h in handles:
        LIB.dk_topk_free(h)


class CQuantile:
    """A dk_quantile handle with the Python-side calls the test needs."""

    def __init__(self, U, **options):
        opt = LIB.dk_quantile_default_options(U)
        for key, value in options.items():
            setattr(opt, key, value)
        self.h, self.U = C.c_void_p(), U
        self.status = LIB.dk_quantile_create(C.byref(opt), C.byref(self.h))

    def update(self, x):
        if x.dim() == 2:
            return LIB.dk_quantile_update(self.h, ptr(x), DTYPE[x.dtype], x.shape[0], self.U, 1, i64s(x.stride(0), x.stride(1), 1))
        return LIB.dk_quantile_update_maps(self.h, ptr(x), DTYPE[x.dtype], *x.shape, i64s(*x.stride()))

    def quantile(self, qs):
        out = torch.empty(self.U, len(qs), dtype=torch.float64)
        status = LIB.dk_quantile_query(self.h, (C.c_double * len(qs))(*qs), len(qs), ptr(out))
        return status, out

    def rank_error_bound(self, qs):
        out = torch.empty(self.U, len(qs), dtype=torch.float64)
        check(LIB, LIB.dk_quantile_rank_error_bound(self.h, (C.c_double * len(qs))(*qs), len(qs), ptr(out)))
        return out

    def cdf(self, values):
        values = values.double().contiguous()
        out = torch.empty_like(values)
        check(LIB, LIB.dk_quantile_cdf(self.h, ptr(values), values.shape[1], ptr(out)))
        return out

    def mode(self):
        m = C.c_int32()
        check(LIB, LIB.dk_quantile_get_mode(self.h, C.byref(m)))
        return m.value

    def count(self):
        n = C.c_int64()
        check(LIB, LIB.dk_quantile_count(self.h, C.byref(n)))
        return n.value

    def serialize(self) -> bytes:
        size = C.c_size_t()
        check(LIB, LIB.dk_quantile_serialize(self.h, None, 0, C.byref(size)))
        buf = C.create_string_buffer(size.value)
        check(LIB, LIB.dk_quantile_serialize(self.h, buf, size, C.byref(size)))
        return buf.raw

    def __del__(self):
        LIB.dk_quantile_free(self.h)


@pytest.mark.parametrize("layout", ["rows", "maps"])
def test_exact_quantile_equals_the_python_api(layout):
    """Same batches into dk_quantile and ExactQuantile: equal quantiles and cdf, equal after a merge
    and a serialise round trip; the same refusal when exactness is lost."""
    qs = [0.95, 0.99, 0.995, 1.0]
    if layout == "rows":
        x = relu_like((5000, 11), 4)
        parts = torch.tensor_split(x, [1, 1700, 3100])
    else:
        x = relu_like((9, 7, 13, 11), 4, torch.bfloat16).permute(0, 2, 1, 3)   # [B, U, H, W], strided
        parts = torch.tensor_split(x, [2, 5])
    U = x.shape[1]
    n = x.numel() // U
    py = dk.ExactQuantile(U, expected_count=n, min_quantile=0.95, slack=64)
    c, c2 = (CQuantile(U, expected_count=n, min_quantile=0.95, slack=64) for _ in range(2))
    for i, part in enumerate(parts):
        py.update(part)
        check(LIB, (c if i % 2 == 0 else c2).update(part))
    check(LIB, LIB.dk_quantile_merge(c.h, c2.h))
    status, got = c.quantile(qs)
    check(LIB, status)
    assert torch.equal(got, py.quantile(qs))
    back = CQuantile.__new__(CQuantile)
    back.h, back.U = C.c_void_p(), U
    blob = c.serialize()
    check(LIB, LIB.dk_quantile_deserialize(blob, len(blob), C.byref(back.h)))
    assert torch.equal(back.quantile(qs)[1], got)
    pts = torch.cat([got, got + 0.01], 1).contiguous()   # >= quantile(min_quantile): cdf exact there
    cdf = torch.empty_like(pts)
    check(LIB, LIB.dk_quantile_cdf(c.h, ptr(pts), pts.shape[1], ptr(cdf)))
    assert torch.equal(cdf, py.cdf(pts))
    status, _ = c.quantile([0.5])
    assert status == DK_ERR_INVALID_ARGUMENT and b"below min_quantile" in LIB.dk_last_error()


@pytest.mark.parametrize("min_quantile", [0.5, 0.99])
def test_sketch_mode_reaches_the_python_tail_sketch(min_quantile):
    """Sketch mode (the full sketch at min_quantile 0.5, tail-only at 0.99) fed the same batches
    as Python's TailSketch: the same answers, bounds and cdf, after flushes inside updates, a
    merge of two shards (one of them fed [B, U, H, W] maps through a strided view) and a
    serialise round trip."""
    g = torch.Generator().manual_seed(3)
    x = (torch.relu(torch.randn(90_000, 5, generator=g)) * torch.randn(90_000, 5, generator=g).exp() * 20).round() / 20
    maps = x[60_000:].reshape(150, 20, 10, 5).permute(0, 3, 1, 2)           # [B, U, H, W], strided
    qs = [q for q in (0.5, 0.9, 0.99, 0.995, 0.999, 1.0) if q >= min_quantile]
    py = dk.TailSketch(5, min_quantile=min_quantile)
    c = CQuantile(5, mode=DK_QUANTILE_SKETCH, min_quantile=min_quantile)
    c2 = CQuantile(5, mode=DK_QUANTILE_SKETCH, min_quantile=min_quantile)
    py2 = dk.TailSketch(5, min_quantile=min_quantile)
    for part in torch.tensor_split(x[:60_000], [7, 40_000]):
        py.update(part)
        check(LIB, c.update(part))
    py2.update(maps)
    check(LIB, c2.update(maps))
    assert c.mode() == DK_QUANTILE_SKETCH and c.count() == py.count == 60_000

    def same(c_side, py_side):
        status, got = c_side.quantile(qs)
        check(LIB, status)
        assert torch.equal(got, py_side.quantile(qs).double())
        assert torch.equal(c_side.rank_error_bound(qs), py_side.rank_error_bound(qs))
        pts = torch.cat([py_side.quantile(qs), torch.zeros(5, 1), torch.full((5, 1), 1e6)], 1)
        assert torch.equal(c_side.cdf(pts), py_side.cdf(pts))

    same(c, py)
    same(c2, py2)
    check(LIB, LIB.dk_quantile_merge(c.h, c2.h))
    py.merge(py2)
    same(c, py)
    assert c.count() == py.count == 90_000
    back = CQuantile.__new__(CQuantile)
    back.h, back.U = C.c_void_p(), 5
    blob = c.serialize()
    check(LIB, LIB.dk_quantile_deserialize(blob, len(blob), C.byref(back.h)))
    same(back, py)
    check(LIB, back.update(x[:5000]))      # a restored sketch keeps streaming like the original
    py.update(x[:5000])
    same(back, py)


def test_auto_mode_picks_as_make_quantile_does():
    assert CQuantile(4, expected_count=10_000).mode() == DK_QUANTILE_EXACT
    assert CQuantile(4).mode() == DK_QUANTILE_SKETCH                                   # count unknown
    assert CQuantile(4, expected_count=10**9, max_bytes=2**20).mode() == DK_QUANTILE_SKETCH   # over budget
    assert isinstance(dk.make_quantile("auto", 4, expected_count=10**9, max_bytes=2**20), dk.TailSketch)


def test_lost_exactness_and_bad_input_are_refused_alike():
    x = relu_like((3000, 5), 17)
    py, c = dk.ExactQuantile(5, expected_count=2700), CQuantile(5, expected_count=2700)
    for part in torch.tensor_split(x, [1000, 2000]):
        py.update(part)
        check(LIB, c.update(part))
    with pytest.raises(ValueError, match="exactness lost"):
        py.quantile(0.99)
    status, _ = c.quantile([0.99])
    assert status == DK_ERR_STATE and b"exactness lost" in LIB.dk_last_error()
    bad = CQuantile(0, expected_count=10)
    assert bad.status == DK_ERR_INVALID_ARGUMENT and b"num_units" in LIB.dk_last_error()
    assert LIB.dk_tally(None) == DK_ERR_INVALID_ARGUMENT and b"args must not be NULL" in LIB.dk_last_error()
    assert LIB.dk_version().decode() == dk.__version__


@pytest.mark.gpu
def test_cuda_tally_through_the_c_abi_counts_past_16_bit_counters():
    """A 4200 x 4200 segmentation with every pixel active: each CUDA thread counts more than 2^16
    pixels, so the kernel's 16-bit per-thread counters must flush per chunk. dk_tally_cuda (device
    pointers, the current stream) and dk.tally(backend="cuda") both count exactly H*W active
    pixels and the label histogram."""
    H = W = 4200
    labels = torch.randint(0, 3, (1, 1, H, W), dtype=torch.int32).cuda()
    hist = torch.bincount(labels.flatten().long(), minlength=3).cpu()
    acts = torch.rand(1, 2, 4, 4).cuda()
    thresholds = torch.full((2,), -1.0).cuda()
    res = dk.tally(acts, thresholds, labels, num_concepts=3, backend="cuda")
    out = dk.TallyResult.empty(1, 2, 3, None, torch.device("cuda"))
    ytab, xtab = (tuple(t.cuda() for t in tab[:4]) for tab in Geometry.named("half-pixel").tables((4, 4), (H, W)))
    a = TallyArgs(acts=ptr(acts), acts_dtype=0, B=1, U=2, h=4, w=4, acts_stride=i64s(*acts.stride()),
                  thresholds=ptr(thresholds), labels=ptr(labels), L=1, H=H, W=W, image_labels=None, M=0,
                  ytab=AxisTable(*(ptr(t) for t in ytab[:4])), xtab=AxisTable(*(ptr(t) for t in xtab[:4])),
                  num_concepts=3, per_layer=0, category_of=None, num_categories=0,
                  intersection=ptr(out.intersection), active=ptr(out.active), max=ptr(out.max), touched=None)
    check(LIB, LIB.dk_tally_cuda(C.byref(a), torch.cuda.current_stream().cuda_stream))
    torch.cuda.synchronize()
    for got in (res, out):
        assert got.active.cpu().tolist() == [[H * W, H * W]]
        assert got.intersection[:, 1:].cpu().tolist() == [hist[1:].tolist()] * 2
