"""TailSketch: the reported rank-error bound holds (and implies the 1e8 targets), the C++ and torch
paths reach identical states, merge / determinism / state_dict / cdf / bad input."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from dissect_kernels.stats.tail_sketch import TailSketch

QS = [0.5, 0.9, 0.99, 0.995, 0.999]
TAIL_QS = [0.99, 0.995, 0.999]


def relu_lognormal(n, u, seed, discrete=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, u, generator=g)) * torch.randn(n, u, generator=g).exp()
    if discrete:
        x = torch.round(x * 20) / 20  # ties everywhere, ~50% exact zeros
    return x.float()


def observed_rank_error(x_sorted, values, qs):
    """dist(qN, [#<v, #<=v]) / N per unit and q (tie-aware rank error of an estimate v)."""
    U, N = x_sorted.shape
    out = torch.empty(U, len(qs), dtype=torch.float64)
    for u in range(U):
        lt = torch.searchsorted(x_sorted[u], values[u].contiguous(), right=False).double()
        le = torch.searchsorted(x_sorted[u], values[u].contiguous(), right=True).double()
        t = torch.tensor(qs, dtype=torch.float64) * N
        out[u] = torch.clamp(torch.maximum(lt - t, t - le), min=0) / N
    return out


def feed(sketch, x, sizes):
    i, k = 0, 0
    while i < x.shape[0]:
        b = sizes[k % len(sizes)]
        sketch.update(x[i:i + b])
        i, k = i + b, k + 1


def comparable_state(sk):
    st = sk.state_dict()
    n = st["pend_n"]
    valid = torch.arange(st["pend"].shape[1]) < n[:, None]
    st["pend"] = torch.where(valid, st["pend"], torch.zeros_like(st["pend"]))  # slots past pend_n are scratch
    return st


def agree_across_backends(x, sizes, **kwargs):
    """Feed x to the C++ core and to the torch path with the same split; assert identical states
    and observed rank errors within the reported bounds. Returns the C++ sketch."""
    a, b = (TailSketch(x.shape[1], backend=be, **kwargs) for be in ("cpu", "torch"))
    feed(a, x, sizes)
    feed(b, x, sizes)
    sa, sb = comparable_state(a), comparable_state(b)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    xs = x.t().contiguous().sort(1).values
    for sk in (a, b):
        assert (observed_rank_error(xs, sk.quantile(QS), QS) <= sk.rank_error_bound(QS) + 1e-12).all()
    return a


@pytest.fixture(scope="module")
def big():
    """3 units x 2M values (2 continuous ReLU-lognormal units with a scale shift, 1 discrete)."""
    x = relu_lognormal(2_000_000, 3, seed=1)
    x[:, 1] *= 7.5
    x[:, 2] = relu_lognormal(2_000_000, 1, seed=2, discrete=True)[:, 0]
    sk = TailSketch(3, backend="cpu")
    feed(sk, x, [65536, 100_000, 3136])
    return x, x.t().contiguous().sort(1).values, sk


def test_bound_holds_and_implies_targets(big):
    """Observed rank error <= rank_error_bound at every q, and the bound meets the issue's targets
    when scaled to N = 1e8. Scaling argument: in the top 1/32 the prune rule caps every span
    rmax[i+1] - rmin[i-1] at s / 2^k_t with s = rank from the top ~ (1-q) N, and a query's bound is at
    most about one span, so bound(q) / (1-q) is independent of N as long as the sketch never had
    to coarsen (asserted here; the benchmark asserts it at N = 1e8, where the summary needs ~20k of
    its 32k entries). Targets: 2e-5 at q=0.995 and 4e-5 at q=0.99 are 4e-3 * (1-q) both; we ask
    for half of that."""
    x, xs, sk = big
    assert sk.count == x.shape[0]
    est = sk.quantile(QS)
    bound = sk.rank_error_bound(QS)
    obs = observed_rank_error(xs, est, QS)
    assert est.shape == (3, len(QS)) and bound.shape == (3, len(QS))
    assert (obs <= bound + 1e-12).all(), (obs, bound)
    assert (sk.st["coarsen"] == 0).all()
    for j, q in enumerate(QS):
        if q in TAIL_QS:
            assert (bound[:, j] / (1 - q) <= 2e-3).all(), (q, bound[:, j])
    # the tail bound is far below the measured error of the references' R = 6144 KLL (3e-4)
    assert bound[:, QS.index(0.995)].max() < 3e-5
    # a scalar q gives [U]
    assert torch.equal(sk.rank_error_bound(0.995), bound[:, QS.index(0.995)])
    assert torch.equal(sk.quantile(0.995), est[:, QS.index(0.995)])


def test_space_within_capacity(big):
    _, _, sk = big
    st = sk.state_dict()
    assert int(st["size"].max()) <= 65536 // 2 and st["pend"].shape[1] == 65536 // 2


def test_cdf_monotone_and_accurate(big):
    x, xs, sk = big
    U, N = xs.shape
    probes = torch.stack([torch.cat([xs[u, [0, N // 3, N // 2, (9 * N) // 10, (99 * N) // 100,
                                            (995 * N) // 1000, (999 * N) // 1000, N - 1]],
                                     torch.tensor([-1.0, 1e9])]) for u in range(U)])
    probes, _ = probes.sort(1)
    est = sk.cdf(probes)
    true = torch.stack([torch.searchsorted(xs[u], probes[u], right=True).double() / N for u in range(U)])
    assert (est[:, 1:] >= est[:, :-1]).all()
    assert (est[:, 0] == 0).all() and (est[:, -1] == 1).all()
    err = (est - true).abs()
    assert err.max() < 2e-3, err
    tail = true >= 0.99
    assert err[tail].max() < 2e-5, err[tail]
    # a [U] vector of values gives [U]
    assert sk.cdf(probes[:, 3]).shape == (U,)


def test_cpu_and_torch_paths_identical():
    """Same data order -> the same state from the C++ core and the batched torch path (small
    capacity so that flushes, coarsening, ties and negative values all occur)."""
    x = relu_lognormal(60_000, 5, seed=3)
    x[:, 1] = -x[:, 1]
    x[:, 2] = torch.round(x[:, 2] * 4) / 4
    x[:, 3] = torch.arange(60_000).float().flip(0)  # strictly decreasing input
    agree_across_backends(x, [5000, 777, 20000], capacity=2048)


def test_small_capacity_coarsens_and_bound_still_holds():
    """A stream (lognormal, seed 0: checked to overflow capacity 1024) whose summary must coarsen;
    the torch path coarsens identically."""
    x = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0)).exp()
    sk = agree_across_backends(x, [20_000], capacity=1024)
    assert int(sk.st["size"].max()) <= 512
    assert int(sk.st["coarsen"].max()) >= 1  # the over-capacity path ran


@pytest.mark.parametrize("min_quantile", [0.0, 0.99])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_merge_of_shards(backend, min_quantile):
    n = 300_000 if backend == "cpu" else 60_000
    x = relu_lognormal(n, 3, seed=5)
    shards = [x[:n // 6], x[n // 6:(11 * n) // 15], x[(11 * n) // 15:]]
    sketches = []
    for s in shards:
        sk = TailSketch(3, capacity=4096, backend=backend, min_quantile=min_quantile)
        feed(sk, s, [n // 10])
        sketches.append(sk)
    merged = sketches[0].merge(sketches[1]).merge(sketches[2]).merge(
        TailSketch(3, capacity=4096, min_quantile=min_quantile))
    assert merged.count == x.shape[0]
    xs = x.t().contiguous().sort(1).values
    bound = merged.rank_error_bound(QS)
    obs = observed_rank_error(xs, merged.quantile(QS), QS)
    assert (obs <= bound + 1e-12).all()
    # relative accuracy survives the merge: tail bound still a small fraction of (1 - q)
    for j, q in enumerate(QS):
        if q in TAIL_QS:
            assert (bound[:, j] / (1 - q) <= 2e-2).all(), (q, bound[:, j])
    merged.update(x[:1000])  # still updatable after a merge
    assert merged.count == x.shape[0] + 1000


def test_deterministic_for_fixed_order_and_bounds_hold_for_any_split():
    x = relu_lognormal(200_000, 4, seed=6)
    runs = []
    for _ in range(2):
        sk = TailSketch(4, capacity=4096, seed=123)
        feed(sk, x, [10_000, 3_000])
        runs.append(comparable_state(sk))
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    # another split of the same order: the state may differ, the guarantees do not
    other = TailSketch(4, capacity=4096)
    feed(other, x, [200_000])
    xs = x.t().contiguous().sort(1).values
    obs = observed_rank_error(xs, other.quantile(QS), QS)
    assert (obs <= other.rank_error_bound(QS) + 1e-12).all()


def test_state_dict_round_trip(tmp_path):
    x = relu_lognormal(120_000, 3, seed=7, discrete=True)
    sk = TailSketch(3, capacity=4096)
    feed(sk, x[:70_000], [9_000])
    path = tmp_path / "sketch.safetensors"
    save_file(sk.state_dict(), str(path))
    back = TailSketch(3, capacity=4096)
    back.load_state_dict(load_file(str(path)))
    assert back.count == sk.count
    for s in (sk, back):
        feed(s, x[70_000:], [9_000])
    assert torch.equal(sk.quantile(QS), back.quantile(QS))
    assert torch.equal(sk.rank_error_bound(QS), back.rank_error_bound(QS))
    with pytest.raises(ValueError, match="capacity"):
        TailSketch(3, capacity=8192).load_state_dict(sk.state_dict())


def test_queries_do_not_change_state():
    x = relu_lognormal(50_000, 2, seed=8)
    a, b = TailSketch(2, capacity=4096), TailSketch(2, capacity=4096)
    a.update(x[:20_000]); b.update(x[:20_000])
    a.quantile(QS); a.cdf(torch.zeros(2, 3)); a.rank_error_bound(0.99)
    a.update(x[20_000:]); b.update(x[20_000:])
    sa, sb = comparable_state(a), comparable_state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bad_input():
    sk = TailSketch(3)
    with pytest.raises(ValueError, match="empty"):
        sk.quantile(0.5)
    with pytest.raises(ValueError, match="NaN"):
        sk.update(torch.tensor([[1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        sk.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="dimensions"):
        sk.update(torch.zeros(4))
    with pytest.raises(TypeError, match="dtype"):
        sk.update(torch.zeros(4, 3, dtype=torch.int32))
    sk.update(torch.rand(100, 3))
    with pytest.raises(ValueError, match="probabilities"):
        sk.quantile([0.5, 1.5])
    with pytest.raises(ValueError, match="capacity"):
        sk.merge(TailSketch(3, capacity=4096))
    with pytest.raises(ValueError, match="num_units"):
        sk.merge(TailSketch(4))
    with pytest.raises(ValueError, match="capacity must be"):
        TailSketch(3, capacity=1000)
    with pytest.raises(ValueError, match="values"):
        sk.cdf(torch.zeros(2, 4))


def test_extremes_and_infinities_exact():
    x = relu_lognormal(30_000, 2, seed=9)
    x[123, 0], x[77, 1] = float("inf"), float("-inf")
    sk = TailSketch(2, capacity=4096)
    feed(sk, x, [4_000])
    lo_hi = sk.quantile([0.0, 1.0])
    assert lo_hi[0, 1] == float("inf") and lo_hi[1, 0] == float("-inf")
    assert lo_hi[0, 0] == x[:, 0].min() and lo_hi[1, 1] == x[:, 1].max()


@pytest.mark.gpu
def test_cuda_state_equals_cpu():
    x = relu_lognormal(300_000, 6, seed=10, discrete=True)
    a = TailSketch(6, capacity=4096, backend="cpu")
    b = TailSketch(6, capacity=4096, device="cuda")
    feed(a, x, [40_000, 1_000])
    feed(b, x.cuda(), [40_000, 1_000])
    sa, sb = comparable_state(a), {k: v.cpu() for k, v in comparable_state(b).items()}
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _awkward(kind, n, U, g):
    if kind == "zeros":
        return torch.zeros(n, U)
    if kind == "negative":
        return -torch.rand(n, U, generator=g)
    if kind == "signed_zeros":
        sign = torch.where(torch.rand(n, U, generator=g) < 0.5, -1.0, 1.0)
        return torch.randint(0, 3, (n, U), generator=g).float() * sign  # -0.0 and +0.0 both occur
    if kind == "infinities":
        x = torch.randn(n, U, generator=g)
        x[::7], x[::11] = float("inf"), float("-inf")
        return x
    if kind == "periodic":
        return (torch.arange(n * U).float().reshape(n, U) % 97)
    return torch.relu(torch.randn(n, U, generator=g)) * torch.randn(n, U, generator=g).exp()


@pytest.mark.parametrize("kind,U,n,sizes", [
    ("zeros", 3, 3000, [1, 100, 1000]), ("negative", 3, 500, [1000, 100, 7]),
    ("signed_zeros", 17, 900, [100, 7, 1]), ("infinities", 17, 500, [7, 100, 1]),
    ("periodic", 3, 12000, [1000, 1, 100]), ("relu_lognormal", 17, 2500, [1, 100, 7]),
])
def test_awkward_inputs_backends_agree_and_bound_holds(kind, U, n, sizes):
    """Odd shapes (U not a multiple of 16, 1-row batches) and contents (all equal, negative, +-0,
    +-inf, periodic ties): both paths reach the same state, bounds hold, extremes are exact."""
    x = _awkward(kind, n, U, torch.Generator().manual_seed(n + U))
    a, b = TailSketch(U, capacity=1024, backend="cpu"), TailSketch(U, capacity=1024, backend="torch")
    for sk in (a, b):
        feed(sk, x, sizes)
    sa, sb = comparable_state(a), comparable_state(b)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    xs = x.t().contiguous().sort(1).values
    qs = QS + [0.0, 1.0]
    obs = observed_rank_error(xs, a.quantile(qs), qs)
    assert (obs <= a.rank_error_bound(qs) + 1e-12).all()
    assert torch.equal(a.quantile([0.0, 1.0]), xs[:, [0, -1]])
    assert a.count == n


def _state_in_subprocess(tmp_path, env_extra: dict, min_quantile: float = 0.0):
    """The C++ state of a fixed awkward stream, computed in a fresh process (the AVX-512 /
    portable choice is made once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / f"state-{len(env_extra)}-{min_quantile}.safetensors"
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[2])\n"
        "from safetensors.torch import save_file\n"
        "from test_tail_sketch import relu_lognormal, feed, comparable_state, TailSketch\n"
        "x = relu_lognormal(40_000, 17, seed=5); x[:, 1] = -x[:, 1]\n"
        "x[:, 2] = torch.round(x[:, 2] * 4) / 4; x[:, 3] = 0.0\n"
        f"a = TailSketch(17, capacity=2048, backend='cpu', min_quantile={min_quantile})\n"
        "feed(a, x, [3000, 511, 9000])\n"
        "save_file({k: v.contiguous() for k, v in comparable_state(a).items()}, sys.argv[1])\n"
    )
    here = Path(__file__).parent
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent), str(here), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", code, str(out), str(here)], check=True, env=env)
    return load_file(str(out))


@pytest.mark.parametrize("min_quantile", [0.0, 0.99])
def test_portable_and_vectorised_cpu_paths_identical(tmp_path, min_quantile):
    """DK_TAIL_SKETCH_SCALAR=1 forces the portable C++ update; on an AVX-512 machine the default
    is the vectorised one (for tail-only summaries: the searchless tiles). Both must reach the
    same state."""
    fast = _state_in_subprocess(tmp_path, {}, min_quantile)
    portable = _state_in_subprocess(tmp_path, {"DK_TAIL_SKETCH_SCALAR": "1"}, min_quantile)
    assert fast.keys() == portable.keys()
    for k in fast:
        assert torch.equal(fast[k], portable[k]), k


def test_tail_only_bound_holds_meets_targets_and_keeps_no_bulk(big):
    """min_quantile >= 1 - 2^-6 (k_l = 0): the summary keeps no entries between the minimum and tau
    (every value below tau is only counted); the tail bounds meet the same scaled targets as the
    full sketch, and below the tail the bound is large but still holds."""
    x, xs, full = big
    sk = TailSketch(3, backend="cpu", min_quantile=0.99)
    assert sk.cfg["k_l"] == 0 and TailSketch(3, min_quantile=0.97).cfg["k_l"] == 12
    feed(sk, x, [65536, 100_000, 3136])
    st, ref = sk._flushed(), full._flushed()
    t = st["tidx"]
    below = st["values"].gather(1, (t - 1).clamp(min=0)[:, None])[:, 0]
    assert (t >= 1).all() and (below == st["values"][:, 0]).all()   # [v0, tau) holds no other entry
    assert (ref["tidx"] > 200).all()
    # no wide entries pile up near tau (a tau that drifted into the tail region must stay tau)
    N, T = st["total"][:, None], st["total"][:, None] >> sk.cfg["tail_shift"]
    used = torch.arange(st["rmin"].shape[1]) < st["size"][:, None]
    tail = used & (N - st["rmax"] + 1 <= T)
    assert ((st["rmax"] - st["rmin"])[tail] < T.expand_as(tail)[tail] // 64).all()
    assert (st["size"] < ref["size"] - 300).all(), (st["size"], ref["size"])  # no bulk entries
    bound = sk.rank_error_bound(QS)
    obs = observed_rank_error(xs, sk.quantile(QS), QS)
    assert (obs <= bound + 1e-12).all(), (obs, bound)
    for j, q in enumerate(QS):
        if q in TAIL_QS:
            assert (bound[:, j] / (1 - q) <= 2e-3).all(), (q, bound[:, j])
    assert (bound[:, QS.index(0.9)] > 0.02).all(), bound  # the bulk is not located, and says so


def test_tail_only_cpu_and_torch_identical_and_not_mergeable_with_full():
    """21 units (the C++ searchless 16-unit tile path plus the slab path for the last 5), rows a
    strided view, ties, negatives, a constant unit, NaN-free infinities, batch sizes not multiples
    of 16; then the merge rules."""
    U = 21
    wide = relu_lognormal(60_000, U + 3, seed=13)
    wide[:, 1] = -wide[:, 1]
    wide[:, 2] = torch.round(wide[:, 2] * 4) / 4
    wide[:, 4] = 0.5
    wide[::97, 6] = float("inf")
    wide[5000:5100, 7] = -1.0                              # new minima after the first flushes
    x = wide[:, 1:1 + U]                                   # row stride U + 3
    a = agree_across_backends(x, [5000, 777, 20000], capacity=2048, min_quantile=0.995)
    assert a.cfg["tail_shift"] == 7                     # the top 1/128 covers q >= 0.995
    with pytest.raises(ValueError, match="tail_shift"):
        a.merge(TailSketch(U, capacity=2048))
    with pytest.raises(ValueError, match="k_l"):           # same tail_shift, one tail-only
        TailSketch(U, capacity=2048, min_quantile=0.98).merge(TailSketch(U, capacity=2048))
    with pytest.raises(ValueError, match="min_quantile"):
        TailSketch(5, min_quantile=1.5)
    with pytest.raises(ValueError, match="k_l=0 but this sketch has 7.*min_quantile"):
        TailSketch(U, capacity=2048).load_state_dict(a.state_dict())


def test_tail_only_with_an_unrepresentative_start_reports_its_loss():
    """The first 40k values are all high (plus the minimum): tau is placed near their top, and the
    0.99 quantile of the whole stream ends up below it, inside the counted gap. The sketch cannot
    locate it and its bound says so (never a silent wrong answer). A descending stream is fine:
    every value is a new minimum and waits pending."""
    g = torch.Generator().manual_seed(3)
    head = 0.9 + 0.1 * torch.rand(40_000, 2, generator=g)
    head[0] = 0.0
    x = torch.cat([head, torch.rand(400_000, 2, generator=g)])
    sk = agree_across_backends(x, [40_000], capacity=4096, min_quantile=0.99)
    assert (sk.rank_error_bound(0.99) > 1e-3).all()
    down = agree_across_backends(torch.arange(200_000, 0, -1).float()[:, None].repeat(1, 2), [40_000],
                                 capacity=4096, min_quantile=0.99)
    assert (down.rank_error_bound(0.99) < 1e-3).all()


def test_tail_only_new_minimum_does_not_pull_tau_down():
    """Signed data and a new minimum long after the first flush: tau stays (it never moves down),
    so no value lands in the counted gap below it and no wide entries pile up in the tail."""
    x = torch.randn(300_000, 2, generator=torch.Generator().manual_seed(11))
    x[150_000, :] = -10.0
    sk = agree_across_backends(x, [30_000], capacity=4096, min_quantile=0.99)
    st = sk._flushed()
    N, T = st["total"][:, None], st["total"][:, None] >> sk.cfg["tail_shift"]
    used = torch.arange(st["rmin"].shape[1]) < st["size"][:, None]
    tail = used & (N - st["rmax"] + 1 <= T)
    assert ((st["rmax"] - st["rmin"])[tail] < T.expand_as(tail)[tail] // 8).all()  # the pile-up: ~N/2
    assert (sk.rank_error_bound(0.99) < 1e-3).all()
