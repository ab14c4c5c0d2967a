"""ExactQuantile (directly and as QuantileSketch(mode="exact")) vs numpy.quantile on every backend;
merge, state_dict, cdf, bad input; the KLL reference sketch's rank error."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import poison_like
from dissect_kernels import ExactQuantile, QuantileSketch, _native
from dissect_kernels.reference.quantile import KLLSketch, as_samples, exact_cdf, exact_quantile

QS = [0.99, 0.995, 0.999, 1.0]
BACKENDS = [b for b in ("cpu", "torch", "triton")
            if b == "torch" or _native.available(b, torch.device("cpu"))]
# Triton runs interpreted here (~10^5 values/s with compactions): small sizes only.
SIZES = {"cpu": (6000, 37, 256), "torch": (3000, 21, 128), "triton": (1200, 6, 200)}


def relu_like(shape, seed, dtype=torch.float32):
    """Heavy-tailed ReLU-like activations with many exact zeros and ties; unit 0 keeps its
    negatives (and -0.0), unit 1 is constant (all ties), unit 2 has few distinct values."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 1.3).exp() - 2.5
    x = (x * 20).round() / 20                      # ties on a 0.05 grid
    raw = x.clone()
    x = x.relu()
    x.select(1, 0).copy_(torch.where(raw.select(1, 0) == 0, -0.0, raw.select(1, 0)))
    x.select(1, 1).fill_(0.75)
    x.select(1, 2).copy_(x.select(1, 2).clamp(max=0.2))
    return x.to(dtype)


def feed(sketch, x, seed, n_splits=5):
    """Update with x split at random rows (some batches may be tiny)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, x.shape[0]), size=min(n_splits, x.shape[0] - 1), replace=False))
    for part in torch.tensor_split(x, cuts.tolist()):
        sketch.update(part)


def oracle(x, qs=QS):
    return exact_quantile(as_samples(x.double().numpy()), qs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_matches_numpy_rows(backend):
    N, U, slack = SIZES[backend]
    for seed in (0, 1):
        x = relu_like((N, U), seed)
        s = ExactQuantile(U, expected_count=N, backend=backend, slack=slack)
        s._ensure_state(x.device)
        poison_like(s._state.buffer)               # slots past `kept` must never be read
        feed(s, x, seed)
        assert s.count == N
        np.testing.assert_array_equal(s.quantile(QS).numpy(), oracle(x))
        np.testing.assert_array_equal(s.quantile(0.995).numpy(), oracle(x, 0.995))
        assert s.quantile(0.995).dtype == torch.float64
        assert torch.equal(s.rank_error_bound(), torch.zeros(U, dtype=torch.float64))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled dissect_kernels._C")
def test_exact_cpu_large_buffers():
    """Buffers of >= 8192 values take the C++ sampled-pivot compaction (not nth_element)."""
    N, U = 100_000, 5
    x = relu_like((N, U), 29)
    qs = [0.95, 0.99, 0.999]
    s = ExactQuantile(U, min_quantile=0.95, expected_count=N, backend="cpu")
    assert s._capacity_for(N) >= 8192
    feed(s, x, 29, n_splits=9)
    np.testing.assert_array_equal(s.quantile(qs).numpy(), oracle(x, qs))
    t = QuantileSketch(U, mode="exact", min_quantile=0.95, expected_count=N, backend="torch")
    feed(t, x, 30, n_splits=3)
    np.testing.assert_array_equal(t.quantile(qs).numpy(), oracle(x, qs))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled dissect_kernels._C")
def test_exact_cpu_wide_rows_large_buffers():
    """U = 64 + 16 + 3 (the C++ row scan's 64-unit, 16-unit and scalar paths) with buffers large
    enough for the sampled-pivot compaction, compactions landing mid-row."""
    N, U = 60_000, 83
    x = relu_like((N, U), 31)
    qs = [0.9, 0.99, 1.0]
    s = ExactQuantile(U, min_quantile=0.9, expected_count=N, backend="cpu")
    assert s._capacity_for(N) >= 8192
    feed(s, x, 31, n_splits=4)
    np.testing.assert_array_equal(s.quantile(qs).numpy(), oracle(x, qs))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled dissect_kernels._C")
@pytest.mark.parametrize("slack,seed", [(40, 41), (5000, 42)])
def test_exact_cpu_tiles_strided_rows(slack, seed):
    """The C++ 16-row x 16-unit tile scan on rows that are a strided view (row stride != U),
    with the first rows all above the cut (transpose path), later ones mostly below (gather
    path), compactions landing inside tiles (small slack) or the early compaction (large),
    and a row count that leaves a partial tile."""
    N, U = 16 * 301 + 7, 35
    wide = relu_like((N, 2 * U + 3), seed)
    x = wide[:, 5:5 + U] if seed == 41 else wide[:, 3:3 + U].contiguous()  # row stride 2U+3 or U
    assert x.stride(1) == 1
    s = ExactQuantile(U, min_quantile=0.98, expected_count=N, backend="cpu", slack=slack)
    s._ensure_state(x.device)
    poison_like(s._state.buffer)
    feed(s, x, seed, n_splits=6)
    qs = [0.98, 0.99, 0.999, 1.0]
    np.testing.assert_array_equal(s.quantile(qs).numpy(), oracle(x, qs))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled dissect_kernels._C")
@pytest.mark.parametrize("row", [0, 40, 999])
def test_nan_inside_a_tile_is_counted(row):
    """A NaN in a full 16-row tile (before and after the unit's first compaction) or in the
    partial last rows is counted, never stored, and the update raises."""
    x = relu_like((1000, 40), 5)
    x[row, 33] = float("nan")
    s = ExactQuantile(40, expected_count=1000, backend="cpu", slack=30)
    with pytest.raises(ValueError, match="NaN"):
        s.update(x)
    assert s._state.nan_count.tolist() == [0] * 33 + [1] + [0] * 6
    assert not bool(torch.isnan(s._state.buffer[33, :int(s._state.kept[33])]).any())


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_matches_numpy_maps(backend):
    """[B, U, H, W]: every position is a sample; non-contiguous input (a permuted view);
    bfloat16 on triton (the half dtypes of cpu/torch are tested below)."""
    B, U, H, W = (6, 5, 9, 11) if backend == "triton" else (20, 9, 13, 12)
    dtype = torch.bfloat16 if backend == "triton" else torch.float32
    x = relu_like((B, H, U, W), 3, dtype).permute(0, 2, 1, 3)     # [B, U, H, W], not contiguous
    assert not x.is_contiguous()
    n = B * H * W
    s = QuantileSketch(U, mode="exact", min_quantile=0.99, expected_count=n, backend=backend,
                       slack=64 if backend == "triton" else 100)
    feed(s, x, 3, n_splits=3)
    np.testing.assert_array_equal(s.quantile(QS).numpy(), oracle(x.float()))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_exact_half_dtypes(backend, dtype):
    x = relu_like((4000, 12), 5, dtype)
    s = QuantileSketch(12, mode="exact", expected_count=4000, backend=backend, slack=80)
    feed(s, x, 5)
    np.testing.assert_array_equal(s.quantile(QS).numpy(), oracle(x.float()))


def test_backends_agree_on_random_shapes():
    """cpu / torch (and triton on a small case) give identical quantiles on random shapes,
    min_quantile and split points."""
    rng = np.random.default_rng(11)
    for trial in range(6):
        N, U = int(rng.integers(50, 3000)), int(rng.integers(1, 40))
        qmin = float(rng.choice([0.9, 0.99, 0.995]))
        x = relu_like((N, U), 100 + trial)
        qs = [qmin, (qmin + 1) / 2, 1.0]
        want = oracle(x, qs)
        for backend in [b for b in BACKENDS if b != "triton"]:
            s = QuantileSketch(U, mode="exact", min_quantile=qmin, expected_count=N,
                               backend=backend, slack=int(rng.integers(1, 200)))
            feed(s, x, trial, n_splits=int(rng.integers(1, 8)))
            np.testing.assert_array_equal(s.quantile(qs).numpy(), want, err_msg=f"{backend} {trial}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_shards(backend):
    N, U, slack = SIZES[backend]
    x = relu_like((N, U), 7)
    shards = torch.tensor_split(x, [N // 5, N // 2])
    sketches = []
    for i, part in enumerate(shards):
        # shard 0 sized for itself, the others for the whole stream
        s = QuantileSketch(U, mode="exact", expected_count=part.shape[0] if i == 0 else N,
                           backend=backend, slack=slack)
        feed(s, part, i, n_splits=2)
        sketches.append(s)
    merged = sketches[0].merge(sketches[1]).merge(sketches[2])
    assert merged.count == N
    np.testing.assert_array_equal(merged.quantile(QS).numpy(), oracle(x))
    empty = QuantileSketch(U, mode="exact", expected_count=N, backend=backend)
    np.testing.assert_array_equal(empty.merge(merged).quantile(QS).numpy(), oracle(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_safetensors_round_trip(backend, tmp_path):
    N, U, slack = SIZES[backend]
    x = relu_like((N, U), 9)
    a = QuantileSketch(U, mode="exact", expected_count=N, backend=backend, slack=slack)
    feed(a, x[: N // 2], 1, n_splits=2)
    save_file(a.state_dict(), str(tmp_path / "q.safetensors"))
    b = QuantileSketch(U, mode="exact", expected_count=N, backend=backend, slack=slack)
    b.load_state_dict(load_file(str(tmp_path / "q.safetensors")))
    assert b.count == N // 2
    feed(b, x[N // 2:], 2, n_splits=2)
    np.testing.assert_array_equal(b.quantile(QS).numpy(), oracle(x))


def test_cdf_exact_and_monotone():
    N, U = 5000, 8
    x = relu_like((N, U), 13)
    s = QuantileSketch(U, mode="exact", expected_count=N, backend="torch", slack=50)
    feed(s, x, 13)
    thr = s.quantile(0.99)
    # points at and above the kept tail: data values, quantiles, midpoints -> exact
    top = torch.sort(x, dim=0, descending=True).values[:40].t().double()      # [U, 40]
    pts = torch.cat([thr[:, None], top, top + 0.01, torch.full((U, 1), 1e9)], dim=1)
    got = s.cdf(pts)
    np.testing.assert_array_equal(got.numpy(), exact_cdf(x.numpy(), pts.numpy()))
    assert s.cdf(thr).shape == (U,)
    # monotone over a grid spanning values below the cut (there an upper bound)
    grid = torch.linspace(-3, 30, 400, dtype=torch.float64)[None].expand(U, -1)
    c = s.cdf(grid)
    assert bool((c[:, 1:] >= c[:, :-1]).all()) and bool((c >= 0).all()) and bool((c <= 1).all())
    assert bool((c >= torch.from_numpy(exact_cdf(x.numpy(), grid.numpy()))).all())


def test_more_values_than_expected():
    N, U = 3000, 5
    x = relu_like((N, U), 17)
    # 10% over: compactions keep the tail of the running count, so units whose values keep
    # arriving above the cut stay exact ...
    backend = "cpu" if "cpu" in BACKENDS else "torch"
    s = QuantileSketch(U - 3, mode="exact", expected_count=2700, backend=backend)
    feed(s, x[:, 3:], 17)
    np.testing.assert_array_equal(s.quantile(QS).numpy(), oracle(x[:, 3:]))
    # ... but the constant unit 1 dropped its ties at the cut once it held the expected tail:
    # its extra ranks are unknown -> a clear error, not a guess
    s = QuantileSketch(U, mode="exact", expected_count=2700, backend=backend)
    feed(s, x, 17)
    with pytest.raises(ValueError, match="exactness lost"):
        s.quantile(0.99)
    # 30x over with a tiny buffer: the tail cannot suffice -> a clear error, not garbage
    s = QuantileSketch(U, mode="exact", expected_count=100, backend="torch", slack=4)
    feed(s, x, 17, n_splits=40)
    with pytest.raises(ValueError, match="exactness lost"):
        s.quantile(0.99)


def test_bad_input():
    s = QuantileSketch(4, mode="exact", expected_count=1000)
    with pytest.raises(ValueError, match="empty"):
        s.quantile(0.99)
    with pytest.raises(ValueError, match="dimensions"):
        s.update(torch.rand(10))
    with pytest.raises(ValueError, match="num_units=4"):
        s.update(torch.rand(10, 5))
    with pytest.raises(TypeError, match="dtype"):
        s.update(torch.ones(10, 4, dtype=torch.int32))
    s.update(torch.rand(100, 4))
    with pytest.raises(ValueError, match="below min_quantile"):
        s.quantile(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.quantile([0.995, 1.5])
    with pytest.raises(ValueError, match=r"shape \[U\]"):
        s.cdf(torch.zeros(3))
    with pytest.raises(ValueError, match='mode="sketch"'):
        QuantileSketch(512, mode="exact", expected_count=10**9, max_bytes=2**30)
    with pytest.raises(ValueError, match="expected_count"):
        QuantileSketch(4, mode="exact")
    with pytest.raises(ValueError, match="mode"):
        QuantileSketch(4, mode="fast")
    with pytest.raises(ValueError, match="merge"):
        s.merge(QuantileSketch(5, mode="exact", expected_count=10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_an_error(backend):
    s = QuantileSketch(3, mode="exact", expected_count=100, backend=backend)
    x = torch.rand(50, 3)
    x[7, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        s.update(x)
    with pytest.raises(ValueError, match="NaN"):
        s.quantile(0.99)


def test_auto_mode_picks_exact_when_it_fits():
    assert QuantileSketch(8, expected_count=10_000).mode == "exact"
    assert QuantileSketch(8, mode="auto", expected_count=10_000).rank_error_bound().shape == (8,)


def test_sketch_mode_delegates_to_tail_sketch():
    """Runs once dissect_kernels.stats.tail_sketch (another engineer's module) is merged."""
    pytest.importorskip("dissect_kernels.stats.tail_sketch")
    x = relu_like((20000, 6), 19)
    s = QuantileSketch(6, mode="sketch")
    feed(s, x.reshape(20000, 6), 19)
    assert s.mode == "sketch" and s.count == 20000
    est = s.quantile([0.99, 0.995]).double()
    assert est.shape == (6, 2)
    assert torch.isfinite(est).all()
    auto = QuantileSketch(6)            # no expected_count -> sketch
    assert auto.mode == "sketch"
    bad = x[:10].clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        s.update(bad)


def test_kll_reference_rank_error():
    """The netdissect-style sketch (R=6144) on 200k ReLU-lognormal values: rank error at the
    0.99 / 0.995 quantiles within the documented few 1e-4 (§1: 3e-4 at R=6144), not exact."""
    N, U = 200_000, 4
    rng = np.random.default_rng(0)
    x = np.maximum(rng.lognormal(0, 1, (N, U)) - 1.5, 0).astype(np.float32)
    sk = KLLSketch(U, resolution=6144, seed=1)
    for i in range(0, N, 7000):
        sk.add(x[i:i + 7000])
    assert sk.count == N and sk.stored() < 20_000
    srt = np.sort(x.astype(np.float64), axis=0)
    for q in (0.99, 0.995):
        est = sk.quantiles(q)
        mid_rank = np.array([(np.searchsorted(srt[:, u], est[u], "left")
                              + np.searchsorted(srt[:, u], est[u], "right")) / 2 / N for u in range(U)])
        assert np.abs(mid_rank - q).max() < 1e-3
    cdf = sk.normalize(np.stack([exact_quantile(x, 0.99)] * 1, axis=1))
    assert np.abs(cdf[:, 0] - 0.99).max() < 1e-3
    # a different seed gives a different (still accurate) state: the coin flips matter
    sk2 = KLLSketch(U, resolution=6144, seed=2)
    for i in range(0, N, 7000):
        sk2.add(x[i:i + 7000])
    assert not np.array_equal(sk.quantiles(0.99), sk2.quantiles(0.99))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(200_000, 96), (40, 64, 28, 28)])
def test_triton_on_gpu_matches_numpy(shape):
    """Real-GPU run of the Triton filter/compaction (state stays on the device)."""
    x = relu_like(shape, 23).cuda()
    U = shape[1]
    n = x.numel() // U
    s = ExactQuantile(U, expected_count=n, backend="triton")
    feed(s, x, 23, n_splits=7)
    assert s._state.buffer.is_cuda
    np.testing.assert_array_equal(s.quantile(QS).cpu().numpy(), oracle(x.cpu()))


class _FakeTailSketch:
    """Stands in for dissect_kernels.stats.tail_sketch.TailSketch (another engineer's module)
    with its documented interface, storing every value: lets the delegation plumbing of
    mode="sketch" be tested before the real module is merged."""

    def __init__(self, num_units, *, device=None, seed=0, min_quantile=0.0):
        self.num_units, self.device, self.seed, self.min_quantile = num_units, device, seed, min_quantile
        self.data = torch.empty(0, num_units)
        self.calls = []

    @property
    def count(self):
        return self.data.shape[0]

    def update(self, x):
        assert x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous()
        if bool(torch.isnan(x).any()):
            raise ValueError("x contains NaN values")        # as TailSketch.update does
        self.calls.append(tuple(x.shape))
        self.data = torch.cat([self.data, x])

    def merge(self, other):
        self.data = torch.cat([self.data, other.data])

    def quantile(self, q):
        assert isinstance(q, torch.Tensor) and q.dim() == 1
        return torch.from_numpy(exact_quantile(self.data.numpy(), q.numpy()))

    def cdf(self, values):
        assert values.dim() == 2 and values.shape[0] == self.num_units
        return torch.from_numpy(exact_cdf(self.data.numpy(), values.numpy()))

    def rank_error_bound(self, q):
        return torch.full((self.num_units,), 1e-5, dtype=torch.float64)

    def state_dict(self):
        return {"data": self.data.clone()}

    def load_state_dict(self, sd):
        self.data = sd["data"].clone()


@pytest.fixture
def fake_tail_sketch(monkeypatch):
    import sys
    import types
    mod = types.ModuleType("dissect_kernels.stats.tail_sketch")
    mod.TailSketch = _FakeTailSketch
    monkeypatch.setitem(sys.modules, "dissect_kernels.stats.tail_sketch", mod)
    return mod


def test_sketch_mode_plumbing_with_a_stand_in(fake_tail_sketch, tmp_path):
    """mode="sketch"/"auto" route update/quantile/cdf/merge/state_dict through TailSketch
    (here a stand-in that is exact, so the answers are checkable)."""
    B, U, H, W = 4, 6, 5, 7
    x = relu_like((B, U, H, W), 31)
    s = QuantileSketch(U, min_quantile=0.5)                   # no expected_count -> sketch
    assert s.mode == "sketch" and s.impl.min_quantile == 0.5
    assert QuantileSketch(U, expected_count=10**9, max_bytes=2**20).mode == "sketch"  # over budget
    x = torch.cat([x[:2], x[2:].half().float()])          # what the sketch is fed
    s.update(x[:2])
    s.update(x[2:].half())                                    # cast to float32 for TailSketch
    assert s.impl.calls == [(2 * H * W, U), (2 * H * W, U)] and s.count == B * H * W
    flat = as_samples(x.numpy())
    np.testing.assert_array_equal(s.quantile([0.5, 0.99]).numpy(), exact_quantile(flat, [0.5, 0.99]))
    assert s.quantile(0.99).shape == (U,)
    pts = s.quantile(0.9).float()
    np.testing.assert_array_equal(s.cdf(pts).numpy(), exact_cdf(flat, pts[:, None].numpy())[:, 0])
    assert s.rank_error_bound().shape == (U,)
    save_file(s.state_dict(), str(tmp_path / "s.safetensors"))
    high = QuantileSketch(U, mode="sketch")                   # default min_quantile 0.99
    high.update(x[:1])
    with pytest.raises(ValueError, match="below min_quantile"):
        high.quantile(0.5)
    t = QuantileSketch(U, mode="sketch", min_quantile=0.5)
    t.load_state_dict(load_file(str(tmp_path / "s.safetensors")))
    assert t.count == s.count
    t.merge(s)
    assert t.count == 2 * s.count
    bad = x[:1].clone()
    bad[0, 2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        t.update(bad)
    with pytest.raises(ValueError, match="cannot merge"):
        t.merge(QuantileSketch(U, mode="exact", expected_count=10, min_quantile=0.5))
