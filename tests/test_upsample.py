"""dk.upsample: every backend equals the oracle bit for bit on random shapes, strides, dtypes
and geometries (outputs poisoned first); thresholding its output reproduces dk.tally's active
counts for every convention's geometry; inputs are read as stored (never copied)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dissect_kernels as dk
from dissect_kernels import _native
from dissect_kernels import geometry as geometry_module
from dissect_kernels.conventions import CONVENTIONS
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.upsample import upsample_into
from dissect_kernels.reference.upsample import upsample as oracle

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced", "expanded")
RF = Geometry.receptive_field(offset=-2, size=7, stride=4, ratio=2)
needs_cpu = pytest.mark.skipif(_native.native("_C") is None, reason="dissect_kernels._C not built")
on_gpu = [pytest.param("cuda", marks=pytest.mark.gpu)]


def make_acts(seed: int, B, U, h, w, dtype, layout, device="cpu") -> torch.Tensor:
    """Random maps (with exact ties) in a given memory layout; not contiguous unless asked."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        x = torch.randn(*shape, generator=g)
        x[torch.rand(*shape, generator=g) < 0.2] = 0.5  # ties
        return x.to(device=device, dtype=dtype)

    if layout == "channels_last":
        return rand(B, U, h, w).contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return rand(B, U, w, h).transpose(2, 3)
    if layout == "sliced":
        return rand(B, 2 * U, h + 1, w + 2)[:, ::2, 1:, 1:w + 1]
    if layout == "expanded":
        return rand(1, U, h, w).expand(B, U, h, w)
    return rand(B, U, h, w)


@st.composite
def geometries(draw):
    kind = draw(st.sampled_from(["half-pixel", "align-corners", "zero-pad", "rf", "affine", "grid-sample",
                                 "grid-sample-border", "pillow"]))
    if kind == "rf":
        ratio = draw(st.sampled_from([1, 2]))
        return Geometry.receptive_field(draw(st.integers(-8, 4)), draw(st.integers(1, 30)),
                                        ratio * draw(st.integers(1, 6)), ratio)
    if kind == "affine":
        f, o = st.floats(0.05, 3.0), st.floats(-4.0, 4.0)
        return Geometry.affine(draw(f), draw(o), draw(f), draw(o),
                               draw(st.sampled_from(["clamp", "zero", "border"])))
    return Geometry.named(kind)


def run(backend: str, acts: torch.Tensor, geometry: Geometry, H: int, W: int) -> torch.Tensor:
    """upsample_into on a NaN-poisoned output."""
    ytab, xtab = (t.to(acts.device) for t in geometry.tables(tuple(acts.shape[2:]), (H, W)))
    out = torch.full((*acts.shape[:2], H, W), float("nan"), device=acts.device)
    upsample_into(backend, acts, ytab, xtab, out)
    return out


def check_backend(backend, B, U, h, w, H, W, dtype, layout, geometry, seed, device="cpu"):
    if geometry.arithmetic == "pillow":  # PIL's resize is reproduced when enlarging
        H, W = max(H, h), max(W, w)
    acts = make_acts(seed, B, U, h, w, dtype, layout, device)
    got = run(backend, acts, geometry, H, W).cpu()
    want = oracle(acts.cpu(), *geometry.tables((h, w), (H, W)))
    assert got.dtype == torch.float32 and got.shape == (B, U, H, W)
    assert torch.equal(got, want), f"{backend}: {(got != want).sum().item()} values differ"


@needs_cpu
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 4), U=st.integers(1, 9), h=st.integers(1, 9), w=st.integers(1, 9),
       H=st.integers(1, 40), W=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), geometry=geometries(), seed=st.integers(0, 2**31 - 1))
def test_cpu_equals_oracle(B, U, h, w, H, W, dtype, layout, geometry, seed):
    check_backend("cpu", B, U, h, w, H, W, dtype, layout, geometry, seed)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), U=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       H=st.integers(1, 20), W=st.integers(1, 20), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), geometry=geometries(), seed=st.integers(0, 2**31 - 1))
def test_triton_equals_oracle(B, U, h, w, H, W, dtype, layout, geometry, seed):
    """Interpreted on CPU tensors (small shapes), compiled on a GPU (test_gpu_... below)."""
    pytest.importorskip("triton")
    check_backend("triton", B, U, h, w, H, W, dtype, layout, geometry, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 4), U=st.integers(1, 40), h=st.integers(1, 15), w=st.integers(1, 15),
       H=st.integers(1, 130), W=st.integers(1, 130), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), geometry=geometries(), seed=st.integers(0, 2**31 - 1))
def test_gpu_backends_equal_oracle(backend, B, U, h, w, H, W, dtype, layout, geometry, seed):
    check_backend(backend, B, U, h, w, H, W, dtype, layout, geometry, seed, device="cuda")


def convention_cases():
    """(convention, geometry argument) for every preset; netdissect needs the layer's RF."""
    return [(name, RF if conv.geometry == "receptive-field" else None) for name, conv in CONVENTIONS.items()]


@pytest.mark.parametrize("backend", ["cpu", "triton", *on_gpu])
@pytest.mark.parametrize("convention,geometry", convention_cases())
def test_thresholded_upsample_is_the_tallys_mask(backend, convention, geometry):
    """(dk.upsample > t) counted per map equals dk.tally's `active`, bit for bit, with the
    geometry each convention uses (thresholds are exact upsampled values: ties)."""
    if backend == "cpu" and _native.native("_C") is None:
        pytest.skip("dissect_kernels._C not built")
    device = "cuda" if backend == "cuda" else "cpu"
    B, U, h, w, H, W = (2, 3, 3, 4, 11, 9) if backend == "triton" else (3, 7, 7, 5, 37, 41)
    acts = make_acts(9, B, U, h, w, torch.bfloat16, "channels_last", device)
    up = dk.upsample(acts, (H, W), convention=convention, geometry=geometry, backend=backend)
    flat = up.transpose(0, 1).reshape(U, -1)
    thresholds = flat[torch.arange(U), torch.randint(0, flat.shape[1], (U,))].contiguous()
    labels = torch.ones(B, H, W, dtype=torch.int64, device=device)
    geom = geometry if geometry is not None else CONVENTIONS[convention].geometry
    counts = dk.tally(acts, thresholds, labels, num_concepts=2, geometry=geom, backend=backend)
    active = (up > thresholds[None, :, None, None]).sum((2, 3))
    assert torch.equal(counts.active, active)
    assert torch.equal(counts.intersection[:, 1], active.sum(0))
    assert 0 < int(active.sum()) < B * U * H * W


def test_convention_picks_its_geometry_and_geometry_overrides():
    acts = make_acts(1, 2, 3, 4, 5, torch.float32, "contiguous")
    for name, conv in CONVENTIONS.items():
        if conv.geometry == "receptive-field":
            continue
        want = oracle(acts, *Geometry.named(conv.geometry).tables((4, 5), (9, 8)))
        assert torch.equal(dk.upsample(acts, (9, 8), convention=name), want), name
    zero = oracle(acts, *Geometry.named("zero-pad").tables((4, 5), (9, 8)))
    assert not torch.equal(zero, dk.upsample(acts, (9, 8)))  # the default really is different
    assert torch.equal(dk.upsample(acts, (9, 8), geometry="zero-pad"), zero)
    assert torch.equal(dk.upsample(acts, (9, 8), convention="netdissect", geometry=RF),
                       oracle(acts, *RF.tables((4, 5), (9, 8))))
    assert torch.equal(dk.upsample(acts, 9), dk.upsample(acts, (9, 9)))


def test_clear_errors():
    acts = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="receptive-field centres: pass geometry=Geometry.receptive_field"):
        dk.upsample(acts, 8, convention="netdissect")
    with pytest.raises(ValueError, match="unknown convention"):
        dk.upsample(acts, 8, convention="nope")
    with pytest.raises(ValueError, match="out_size must be"):
        dk.upsample(acts, (8, 0))
    with pytest.raises(ValueError, match="acts must have 4 dimensions"):
        dk.upsample(acts[0], 8)
    with pytest.raises(TypeError, match="acts must have dtype"):
        dk.upsample(acts.double(), 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        dk.upsample(acts, 8, backend="gpu")
    with pytest.raises(ValueError, match="out must be a float32 tensor of shape"):
        dk.upsample(acts, 8, out=torch.empty(2, 3, 8, 7))
    with pytest.raises(_native.BackendUnavailable, match="backend 'cuda' cannot run on cpu"):
        dk.upsample(acts, 8, backend="cuda")


@needs_cpu
def test_out_buffer_is_written_and_returned():
    acts = make_acts(2, 2, 3, 4, 4, torch.float16, "transposed")
    out = torch.full((2, 3, 10, 10), float("nan"))
    got = dk.upsample(acts, 10, out=out)
    assert got is out and torch.equal(out, oracle(acts, *Geometry.named("half-pixel").tables((4, 4), (10, 10))))


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_read_as_stored_without_copies(dtype):
    """A stride-0 input whose dense fp32 copy would need 34 GB: any .contiguous() / .float()
    of the whole input would fail to allocate; reading as stored costs nothing."""
    acts = torch.randn(1, 1, 64, 64).to(dtype).expand(4096, 512, 64, 64)
    out = dk.upsample(acts, 1, backend="cpu")
    want = oracle(acts[:1, :1], *Geometry.named("half-pixel").tables((64, 64), (1, 1)))
    assert out.shape == (4096, 512, 1, 1) and bool((out == want).all())


def test_empty_batch():
    assert dk.upsample(torch.randn(0, 3, 4, 4), 8).shape == (0, 3, 8, 8)


def test_tables_are_built_once_per_geometry_sizes_and_device(monkeypatch):
    """dk.upsample and dk.tally reuse the device tables across batches."""
    calls = []
    real = geometry_module.axis_table
    monkeypatch.setattr(geometry_module, "axis_table", lambda *a: calls.append(a) or real(*a))
    geometry_module.device_tables.cache_clear()
    acts = torch.randn(2, 3, 5, 6)
    labels = torch.ones(2, 12, 13, dtype=torch.int64)
    for _ in range(3):
        dk.upsample(acts, (12, 13), backend="reference")
        dk.tally(acts, torch.zeros(3), labels, num_concepts=2, backend="reference")
    assert len(calls) == 2  # one y table and one x table, shared by both ops
    dk.upsample(acts, (12, 13), geometry="zero-pad", backend="reference")
    dk.upsample(acts, (12, 14), backend="reference")
    assert len(calls) == 6
