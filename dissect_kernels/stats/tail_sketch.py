"""TailSketch: a mergeable per-unit streaming quantile summary, deterministic, with a rank-error
bound read off its own state and relative (rank-from-the-top) accuracy in the upper tail.

Algorithm (a batched, biased-quantile Greenwald-Khanna summary; rules in tail_sketch.h):
  * Per unit a sorted list of entries (v, rmin, rmax) with rmin <= pos <= rmax, pos being the
    entry's position in one sorted order of all N values seen. Every operation keeps this
    invariant exactly, so the bounds below are deterministic guarantees for any input order.
  * A value x with v_0 <= x < tau (tau = the entry ~N/32 from the top) is not stored: the count of
    its gap (v_g, v_g+1), or of its ties with v_g, is incremented (one branchless binary search;
    values in the first gap, e.g. ReLU zeros, need none). Other values (the top ~1/32, new minima)
    wait in a pending buffer. A flush turns counts into exact position shifts (ties with v_g are
    ordered right after it and get a run-end entry, so a spike of equal values is certified),
    sorts the pending values and merges them in, each taking the bounds of the gap it lands in.
  * Prune: entry i is dropped when rmax[i+1] - rmin[i-1] <= G, in alternating-parity rounds to a
    fixpoint. With s = N - rmax + 1 (rank from the top), G = s / 2^k_t for s <= N/32 and
    G = max(N / 2^(k_t+5), N / 2^k_l) below. Capacity C = 2^c gives k_t = c - 7, k_l = c - 4,
    a summary of <= C/2 entries and a pending buffer of C/2 values (C = 65536: k_t = 9, k_l = 12).
Bound: quantile(q) returns a stored value v; with i1..i2 the entries holding v, the distance from
  qN to v's rank interval [#<v, #<=v] is <= max(0, qN - rmin[i2], rmax[i1] - 1 - qN) =
  rank_error_bound(q) * N. Every span rmax[i+1] - rmin[i-1] created by the prune is <= G at its
  upper end, so in the top 1/32 the bound is ~ G(s) ~ 2^-k_t (1 - q) N or less (measured <= 1e-3 (1-q):
  8e-6 at q = 0.99, 4e-6 at q = 0.995), independent of N: the targets at N = 1e8 are 4e-3 (1-q)
  (2e-5 at 0.995, 4e-5 at 0.99). In the bulk it is ~N / 2^k_l for stationary input; gaps that
  keep filling under a drifting input widen and the reported bound grows with them (honestly).
Space: ~2^(k_t+1) exact top entries, ~2^(k_t+1) ln(N / 2^(k_t+5)) tail entries (~10k at N = 1e8),
  <= ~2^(k_l+1) bulk entries; a unit that would exceed C/2 entries lowers its k's by one
  ("coarsen"; the reported bound reflects it). Stored values <= C per unit; bookkeeping per
  summary entry: rmin, rmax, gap and tie counts (int64), i.e. ~1.3 MB per unit at C = 65536.
Tail-only (min_quantile >= 1 - 2^-5.5 ~ 0.978, e.g. QuantileSketch's default 0.99): k_l = 0, so
  below the tail region the prune allows any span (G = N) and keeps no entries between the minimum
  and tau, and the tail region shrinks to the top N / 2^tail_shift values that still cover
  min_quantile with a sqrt(2) margin (tail_shift 6 at 0.99: the top 1/64). Every value below tau then
  lands in the first gap and is only counted (no search), and fewer values wait pending; the tail
  bounds keep the same form, and quantiles below the tail get the large bounds they deserve
  (rank_error_bound reports them). tau is placed at the first flush (P values) and afterwards only
  moves up, so the accuracy at min_quantile assumes the stream's first P values are representative
  (a shuffled dataset; a stream that starts with only its largest values gets large bounds instead).
Merge combines two summaries with GK's rule (bounds add; relative error is preserved).
The CPU core (C++/OpenMP) and the batched torch path (any device; one scalar host sync per
block of C/16 rows and per prune round of a flush) reach identical states. `seed` is accepted for
interface compatibility and unused (the algorithm is deterministic); the state depends on data
order and on batch boundaries only through when pending buffers flush.
"""
from __future__ import annotations

import math

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks
from dissect_kernels.ops.quantile import canonical_device
from dissect_kernels.stats import _tail_torch

_STATE = ("values", "rmin", "rmax", "gap", "eq", "size", "total", "counted", "pend", "pend_n", "tidx", "coarsen")
_CONFIG = ("num_units", "capacity", "k_t", "k_l", "tail_shift", "block_rows", "seed")
BACKENDS = ("cpu", "torch")        # the C++ core (CPU tensors) and batched torch (any device)
MAX_TAIL_SHIFT = 10


def tail_shift_for(min_quantile: float) -> int:
    """The largest tail_shift (tail region: the top N / 2^tail_shift values) that still holds
    quantiles >= min_quantile with a margin of sqrt(2); 5 (the top 1/32) at least, 10 at most."""
    if min_quantile >= 1.0:
        return MAX_TAIL_SHIFT
    return int(min(MAX_TAIL_SHIFT, max(5, math.floor(math.log2(1.0 / (1.0 - min_quantile)) - 0.5))))


TAIL_ONLY_FROM = 1 - 2.0 ** -5.5   # min_quantile (~0.978) from which the bulk is only counted


class TailSketch:
    """Per-unit streaming quantiles, most accurate near the top; mergeable, deterministic.

    update(x [N, U]) keeps the state on x's device (C++/OpenMP core for CPU tensors, batched torch
    for others); quantile / cdf / rank_error_bound read a flushed copy without changing the state.
    """

    mode = "sketch"

    def __init__(self, num_units: int, *, device=None, seed: int = 0, capacity: int = 65536,
                 backend: str = "auto", min_quantile: float = 0.0):
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive int, got {num_units!r}")
        if not 0.0 <= float(min_quantile) <= 1.0:
            raise ValueError(f"min_quantile must lie in [0, 1], got {min_quantile!r}")
        if not isinstance(capacity, int) or capacity < 2 ** 10 or capacity > 2 ** 24 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two in [1024, 2^24], got {capacity!r}")
        if backend not in ("auto", "cpu", "torch"):
            raise ValueError(f"backend must be 'auto', 'cpu' or 'torch', got {backend!r}")
        c = int(math.log2(capacity))
        self.min_quantile = float(min_quantile)
        tail_only = self.min_quantile >= TAIL_ONLY_FROM
        self.cfg = dict(num_units=num_units, capacity=capacity, k_t=c - 7, k_l=0 if tail_only else c - 4,
                        tail_shift=tail_shift_for(self.min_quantile) if tail_only else 5,
                        block_rows=capacity // 16, seed=int(seed))
        self.backend = backend
        self._device = canonical_device(device)     # "cuda" -> "cuda:<index>", as tensors report
        self.st = None if device is None else self._empty(self._device)

    # ----------------------------------------------------------------- state
    def _empty(self, device) -> dict:
        U, half = self.cfg["num_units"], self.cfg["capacity"] // 2
        z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=device)  # noqa: E731
        return dict(values=torch.full((U, half), math.inf, device=device), rmin=z(U, half),
                    rmax=z(U, half), gap=z(U, half), eq=z(U, half), size=z(U), total=z(U), counted=z(U),
                    pend=torch.zeros(U, half, device=device), pend_n=z(U),
                    tidx=torch.full((U,), -1, dtype=torch.int64, device=device), coarsen=z(U))

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    def _state(self) -> dict:
        if self.st is None:
            self._device = self.device
            self.st = self._empty(self._device)
        return self.st

    def _use_native(self) -> bool:
        """Whether the C++ core runs updates and flushes: the backend resolved like every op's
        (dissect_kernels._native.resolve), "auto" taking the C++ core for CPU tensors."""
        return _native.resolve(self.backend, self.device, BACKENDS) == "cpu"

    def _spec(self, st: dict) -> dict:
        d = {k: st[k].data_ptr() for k in _STATE}
        d.update(U=self.cfg["num_units"], M=st["values"].shape[1], P=st["pend"].shape[1],
                 k_t=self.cfg["k_t"], k_l=self.cfg["k_l"], tail_shift=self.cfg["tail_shift"],
                 block_rows=self.cfg["block_rows"])
        return d

    def _flushed(self) -> dict:
        """A copy of the state with every pending value and gap count folded in."""
        st = {k: t.clone() for k, t in self._state().items()}
        if self._use_native():
            _native.native("_C").tail_sketch_flush(self._spec(st))
        else:
            _tail_torch.flush(st, torch.arange(self.cfg["num_units"], device=self.device), self._tcfg())
        return st

    def _tcfg(self) -> dict:
        return {k: self.cfg[k] for k in ("k_t", "k_l", "tail_shift", "block_rows")}

    # ----------------------------------------------------------------- update / merge
    def update(self, x: torch.Tensor) -> None:
        """Add a batch x [N, U] (float32; other float dtypes are converted) of values per unit, or
        maps [B, U, H, W] (every position of every image is a value)."""
        x = _checks.tensor("x", x, ndim=(2, 4), dtypes=_checks.FLOAT_DTYPES + (torch.float64,))
        U = self.cfg["num_units"]
        if x.dim() == 4:
            if x.shape[1] != U:
                raise ValueError(f"x must have shape [B, {U}, H, W] (num_units={U}), got {tuple(x.shape)}")
            x = x.permute(0, 2, 3, 1).reshape(-1, U)
        if x.shape[1] != U:
            raise ValueError(f"x must have shape [N, {U}] (num_units={U}), got {tuple(x.shape)}")
        if self._device is not None and x.device != self._device:
            raise ValueError(f"x is on {x.device} but the sketch lives on {self._device}")
        if self._device is None:
            self._device = x.device
        if x.shape[0] == 0:
            return
        x = x.to(torch.float32)
        if bool(torch.isnan(x.amax())):  # amax propagates NaN; ~5x cheaper than isnan(x).any()
            raise ValueError("x contains NaN values")
        if x.stride(1) != 1 or x.stride(0) < U:
            x = x.contiguous()
        st = self._state()
        if self._use_native():
            _native.native("_C").tail_sketch_update(self._spec(st), x.data_ptr(), x.shape[0], x.stride(0))
        else:
            _tail_torch.update(st, x, self._tcfg())

    def _check_compatible(self, other: "TailSketch") -> None:
        if not isinstance(other, TailSketch):
            raise TypeError(f"can only merge another TailSketch, got {type(other).__name__}")
        for key in ("num_units", "capacity", "tail_shift", "k_l"):
            if self.cfg[key] != other.cfg[key]:
                raise ValueError(f"cannot merge sketches with different {key}: {self.cfg[key]} vs {other.cfg[key]}")
        if other.count and self.count and other.device != self.device:
            raise ValueError(f"cannot merge a sketch on {other.device} into one on {self.device}")

    def merge(self, other: "TailSketch") -> "TailSketch":
        """Fold `other` (same num_units and capacity) into this sketch; returns self."""
        self._check_compatible(other)
        if other.count == 0:
            return self
        b = {k: t.to(self.device) for k, t in other._flushed().items()}
        self.st = _tail_torch.merge(self._flushed(), b, self._tcfg())
        return self

    # ----------------------------------------------------------------- queries
    @property
    def count(self) -> int:
        """Number of values seen per unit (the same for every unit)."""
        if self.st is None:
            return 0
        st = self.st
        return int((st["total"][0] + st["counted"][0] + st["pend_n"][0]).item())

    def _q(self, q) -> tuple[torch.Tensor, bool]:
        scalar = isinstance(q, (int, float)) or (isinstance(q, torch.Tensor) and q.dim() == 0)
        qt = torch.as_tensor(q, dtype=torch.float64).reshape(-1).to(self.device)
        if qt.numel() == 0 or bool(((qt < 0) | (qt > 1) | torch.isnan(qt)).any()):
            raise ValueError(f"q must hold probabilities in [0, 1], got {q!r}")
        if self.count == 0:
            raise ValueError("the sketch is empty: update it before asking for quantiles")
        return qt, scalar

    def _select(self, qt: torch.Tensor):
        """For each unit and q: a stored value and a bound on the distance from qN to its rank
        interval [#<v, #<=v]: with i1..i2 the entries holding that value,
        max(0, qN - rmin[i2], rmax[i1] - 1 - qN); candidates around rmin + rmax ~ 2qN."""
        st = self._flushed()
        N = st["total"].to(torch.float64)
        t = qt[None, :] * N[:, None]
        n = st["size"]
        M = st["values"].shape[1]
        ar = torch.arange(M, device=self.device)
        valid = ar < n[:, None]
        v = st["values"]
        lo, hi = st["rmin"].to(torch.float64), st["rmax"].to(torch.float64)
        new_run = torch.ones_like(valid)
        new_run[:, 1:] = v[:, 1:] != v[:, :-1]
        first = torch.where(new_run, ar, torch.zeros_like(ar)).cummax(1).values
        end_run = torch.ones_like(valid)
        end_run[:, :-1] = v[:, 1:] != v[:, :-1]
        last = torch.where(end_run, ar, torch.full_like(ar, M - 1)).flip(1).cummin(1).values.flip(1)
        last = torch.minimum(last, n[:, None] - 1)
        mid = torch.where(valid, lo + hi, torch.full_like(lo, math.inf))
        i0 = torch.searchsorted(mid, (2 * t).contiguous())
        best_i, best_b = None, None
        for d in (1, 0):
            i = torch.minimum((i0 - d).clamp(min=0), n[:, None] - 1)
            i1, i2 = first.gather(1, i), last.gather(1, i)
            b = torch.clamp(torch.maximum(t - lo.gather(1, i2), hi.gather(1, i1) - 1 - t), min=0)
            if best_b is None:
                best_i, best_b = i, b
            else:
                better = b < best_b
                best_i, best_b = torch.where(better, i, best_i), torch.where(better, b, best_b)
        return st, best_i, best_b / N[:, None]

    def quantile(self, q) -> torch.Tensor:
        """Estimated q-quantiles per unit: [U, Q] float32 for a list/tensor q, [U] for a scalar."""
        qt, scalar = self._q(q)
        st, i, _ = self._select(qt)
        out = st["values"].gather(1, i)
        return out[:, 0] if scalar else out

    def rank_error_bound(self, q=None) -> torch.Tensor:
        """Guaranteed |rank(quantile(q)) - q N| / N per unit ([U] float64; [U, Q] for a list);
        q defaults to min_quantile."""
        qt, scalar = self._q(self.min_quantile if q is None else q)
        _, _, b = self._select(qt)
        return b[:, 0] if scalar else b

    def cdf(self, values: torch.Tensor) -> torch.Tensor:
        """Estimated fraction of values <= each of values [U, K] (or [U]) per unit, float64;
        exact beyond the extremes, within the summary's gap bounds elsewhere."""
        values = _checks.tensor("values", torch.as_tensor(values), ndim=(1, 2),
                                dtypes=_checks.FLOAT_DTYPES + (torch.float64,))
        U = self.cfg["num_units"]
        if values.shape[0] != U:
            raise ValueError(f"values must have shape [{U}, K] (num_units={U}), got {tuple(values.shape)}")
        _checks.not_nan("values", values)
        if self.count == 0:
            raise ValueError("the sketch is empty: update it before asking for cdf values")
        flat = values.dim() == 1
        y = values.reshape(U, -1).to(device=self.device, dtype=torch.float32).contiguous()
        st = self._flushed()
        n, N = st["size"][:, None], st["total"][:, None].to(torch.float64)
        e = torch.minimum(torch.searchsorted(st["values"], y, right=True) - 1, n - 1)
        lower = torch.where(e >= 0, st["rmin"].gather(1, e.clamp(min=0)).to(torch.float64), torch.zeros_like(N))
        f = e + 1
        upper = torch.where(f < n, st["rmax"].gather(1, f.clamp(max=st["values"].shape[1] - 1)).to(torch.float64) - 1, N)
        est = (lower + upper) / 2 / N
        est = torch.where(e >= n - 1, torch.ones_like(est), est)
        est = torch.where(e < 0, torch.zeros_like(est), est)
        return est[:, 0] if flat else est

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain contiguous tensors (safetensors-compatible), config included."""
        st = self._state()
        out = {k: t.clone().contiguous() for k, t in st.items()}
        out["config"] = torch.tensor([self.cfg[k] for k in _CONFIG], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict from a sketch of the same num_units and capacity."""
        missing = [k for k in _STATE + ("config",) if k not in state]
        if missing:
            raise KeyError(f"state_dict is missing {missing}")
        cfg = dict(zip(_CONFIG, (int(v) for v in state["config"].tolist())))
        for key in ("num_units", "capacity", "k_t", "k_l", "tail_shift", "block_rows"):
            if cfg[key] != self.cfg[key]:
                why = " (min_quantile sets k_l and tail_shift: build this sketch with the writer's min_quantile)" \
                    if key in ("k_l", "tail_shift") else ""
                raise ValueError(f"state_dict has {key}={cfg[key]} but this sketch has {self.cfg[key]}{why}")
        ref = self._empty("meta")
        for k in _STATE:
            if tuple(state[k].shape) != tuple(ref[k].shape) or state[k].dtype != ref[k].dtype:
                raise ValueError(f"state_dict[{k!r}] has shape {tuple(state[k].shape)} {state[k].dtype}, "
                                 f"expected {tuple(ref[k].shape)} {ref[k].dtype}")
        self.st = {k: state[k].to(self.device).clone().contiguous() for k in _STATE}
        self._device = self.device

