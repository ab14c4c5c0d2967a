"""ExactQuantile: the C++ state machine against its Python oracle (reference/exact_quantile.py);
every backend (C++ core, torch, Triton) reaching the same state on the same data; the device
readout path equal to the core's; make_quantile and the QuantileEstimator protocol; a checkpoint
written by the original QuantileSketch."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import dissect_kernels as dk
from dissect_kernels import _native
from dissect_kernels.reference import exact_quantile as ref
from dissect_kernels.reference.quantile import as_samples, exact_quantile
from dissect_kernels.stats.exact_quantile import ExactQuantile, core
from test_quantile import feed, relu_like
from test_tail_sketch import observed_rank_error

BACKENDS = [b for b in ("cpu", "torch", "triton") if b == "torch" or _native.available(b, torch.device("cpu"))]
GOLDEN = Path(__file__).parent / "golden" / "quantile_sketch_exact_v0.safetensors"


def cfg(num_units, q, expected, slack):
    return dict(num_units=num_units, min_quantile=q, expected_count=expected,
                slack=-1 if slack is None else slack, max_bytes=1 << 62)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 10**12), q=st.floats(0, 1), slack=st.none() | st.integers(1, 10**6),
       extra=st.integers(0, 10**12))
def test_sizing_and_readout_match_the_oracle(n, q, slack, extra):
    mod = core()
    c = cfg(3, q, n, slack)
    assert mod.exact_tail_needed(n, q) == ref.tail_needed(n, q)
    cap = mod.exact_capacity(c, n)
    assert cap == ref.capacity_for(n, q, slack)
    assert mod.exact_target(c, n + extra, cap) == ref.compaction_target(n, q, n + extra, cap)
    assert mod.exact_readout(n, q) == ref.readout(n, q)


@settings(max_examples=200, deadline=None)
@given(ea=st.integers(1, 10**9), eb=st.integers(1, 10**9), na=st.integers(0, 10**9), nb=st.integers(0, 10**9),
       q=st.sampled_from([0.9, 0.99, 0.995, 1.0]), slack=st.none() | st.integers(1, 5000),
       lo=st.floats(-1e6, 1e6), hi=st.floats(-1e6, 1e6), gamma=st.floats(0, 1))
def test_merge_plan_and_lerp_match_the_oracle(ea, eb, na, nb, q, slack, lo, hi, gamma):
    mod = core()
    ca, cb = cfg(4, q, ea, slack), cfg(4, q, eb, slack)
    capa, capb = mod.exact_capacity(ca, ea), mod.exact_capacity(cb, eb)
    assert mod.exact_merge_plan(ca, na, capa, cb, nb, capb) == ref.merge_plan(ea, na, capa, eb, nb, capb, q, slack)
    assert mod.exact_lerp(lo, hi, gamma) == ref.lerp(lo, hi, gamma)


def run(backend, x, splits, seed, **kw):
    s = ExactQuantile(x.shape[1], backend=backend, **kw)
    feed(s, x, seed, n_splits=splits)
    return s


def same_state(a: ExactQuantile, b: ExactQuantile) -> None:
    """What the state machine decides is identical: count, expected count, capacity and the kept
    tail a quantile can read (the top tail_needed(count) values of every unit)."""
    assert (a.count, a.expected_count, a._state.capacity) == (b.count, b.expected_count, b._state.capacity)
    assert torch.equal(a.tail(), b.tail())


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cpu"])
def test_backends_reach_the_same_state(backend):
    """The torch path and the Triton kernels (interpreted here; the same code runs on a GPU) fed
    the same batches as the C++ core agree with it on the state and the answers, also after
    merging shards of different expected counts and after a state_dict crosses backends."""
    N, U = 600, 6
    x = relu_like((N, U), 3)
    qs = [0.95, 0.975, 0.99, 1.0]
    kw = dict(min_quantile=0.95, expected_count=N, slack=9)
    want = exact_quantile(as_samples(x.double().numpy()), qs)
    states = {b: run(b, x, 4, 3, **kw) for b in ("cpu", backend)}
    same_state(states["cpu"], states[backend])
    for s in states.values():
        np.testing.assert_array_equal(s.quantile(qs).numpy(), want)
    merged = {}
    for b in ("cpu", backend):
        shard = run(b, x[:200], 2, 1, min_quantile=0.95, expected_count=200, slack=9)
        merged[b] = shard.merge(run(b, x[200:], 2, 2, **kw))
    same_state(merged["cpu"], merged[backend])
    np.testing.assert_array_equal(merged[backend].quantile(qs).numpy(), want)
    moved = ExactQuantile(U, backend=backend, **kw)
    half = run("cpu", x[:350], 1, 0, **kw)
    moved.load_state_dict(half.state_dict())
    moved.update(x[350:])
    half.update(x[350:])
    same_state(half, moved)


def test_device_readout_path_equals_the_core():
    """quantile()/cdf() on a GPU take the core's plan and verdict but read the data with torch:
    on CPU data both paths give identical answers and the same 'exactness lost' refusal."""
    N, U = 4000, 7
    x = relu_like((N, U), 9)
    s = run("cpu", x, 5, 9, min_quantile=0.95, expected_count=N, slack=50)
    qs = [0.95, 0.975, 0.9951, 0.999, 1.0]
    assert torch.equal(s._quantile_torch(qs), s.quantile(qs))
    pts = torch.cat([s.quantile(qs), torch.tensor([[-1.0, 1e9]]).expand(U, -1)], 1).double()
    assert torch.equal(s._cdf_torch(pts), s.cdf(pts))
    lost = run("cpu", x[:, :5], 5, 17, expected_count=2700)   # the constant unit 1 drops its ties
    for read in (lambda: lost.quantile(0.99), lambda: lost._quantile_torch([0.99])):
        with pytest.raises(ValueError, match="exactness lost"):
            read()


def test_make_quantile_and_the_protocol():
    """mode="auto" picks exact when its state fits the budget, else the sketch; both answer the
    same protocol calls on [B, U, H, W] maps (exact: numpy's values; sketch: within its bound)."""
    assert isinstance(dk.make_quantile("auto", 8, expected_count=10_000), dk.ExactQuantile)
    assert isinstance(dk.make_quantile("auto", 8, expected_count=10**9, max_bytes=2**20), dk.TailSketch)
    assert isinstance(dk.make_quantile("auto", 8), dk.TailSketch)
    with pytest.raises(ValueError, match='mode="sketch"'):
        dk.make_quantile("exact", 8, expected_count=10**9, max_bytes=2**20)
    with pytest.raises(ValueError, match="mode"):
        dk.make_quantile("fast", 8)
    x = relu_like((12, 8, 10, 10), 1)
    flat = as_samples(x.numpy())
    qs = [0.9, 0.99]
    want = exact_quantile(flat, qs)
    for mode in ("exact", "sketch"):
        est = dk.make_quantile(mode, 8, expected_count=1200, min_quantile=0.9)
        assert isinstance(est, dk.QuantileEstimator) and est.mode == mode
        est.update(x[:5])
        est.update(x[5:])
        assert est.count == 1200
        got = est.quantile(qs)
        bound = est.rank_error_bound()
        assert got.shape == (8, 2) and bound.shape == (8,)
        if mode == "exact":
            np.testing.assert_array_equal(got.numpy(), want)
            assert not bool(bound.any())
        else:
            xs = torch.from_numpy(flat).t().contiguous().sort(1).values
            assert (observed_rank_error(xs, got, qs) <= est.rank_error_bound(qs) + 1e-12).all()
        back = dk.make_quantile(mode, 8, expected_count=1200, min_quantile=0.9)
        back.load_state_dict(est.state_dict())
        assert torch.equal(back.quantile(qs), got)
        back.merge(est)
        assert back.count == 2400


def test_an_old_quantile_sketch_checkpoint_loads():
    """tests/golden: a state_dict the single-class QuantileSketch wrote (exact mode, 3000 rows
    of 7 units, expected_count 6000) loads into QuantileSketch and ExactQuantile, answers exactly
    and keeps streaming."""
    sd = load_file(str(GOLDEN))
    x = sd.pop("test.data")
    qs = [0.99, 0.995, 1.0]
    for est in (dk.QuantileSketch(7, mode="exact", expected_count=6000, slack=100),
                ExactQuantile(7, expected_count=6000, slack=100)):
        est.load_state_dict(sd)
        assert est.count == 3000
        np.testing.assert_array_equal(est.quantile(qs).numpy(), exact_quantile(x.double().numpy(), qs))
        est.update(x.flip(0))
        both = torch.cat([x, x.flip(0)]).double().numpy()
        np.testing.assert_array_equal(est.quantile(qs).numpy(), exact_quantile(both, qs))
        assert set(est.state_dict()) == set(sd)


@pytest.mark.gpu
def test_gpu_state_equals_cpu_state():
    """On a GPU (Triton filter, torch merge and readout) the state and answers equal the C++
    core's on the same batches."""
    N, U = 200_000, 64
    x = relu_like((N, U), 23)
    kw = dict(min_quantile=0.99, expected_count=N, slack=300)
    cpu = run("cpu", x, 7, 23, **kw)
    gpu = run("auto", x.cuda(), 7, 23, **kw)
    assert gpu._state.buffer.is_cuda
    same_state(cpu, gpu)
    qs = [0.99, 0.995, 0.999, 1.0]
    assert torch.equal(cpu.quantile(qs), gpu.quantile(qs).cpu())
    a = run("auto", x[:50_000].cuda(), 3, 1, **kw).merge(run("auto", x[50_000:].cuda(), 3, 2, **kw))
    b = run("cpu", x[:50_000], 3, 1, **kw).merge(run("cpu", x[50_000:], 3, 2, **kw))
    same_state(a, b)
