"""QuantileSketch: per-unit streaming high quantiles. mode="exact" keeps every value that can
still be in the top (1 - min_quantile) tail and reproduces numpy.quantile exactly; mode="sketch"
delegates to the mergeable TailSketch; "auto" picks exact when it fits the memory budget."""
from __future__ import annotations

import math

import numpy as np
import torch

from dissect_kernels.ops import _checks
from dissect_kernels.ops.quantile import (TailState, canonical_device, check_input, merge_states,
                                          quantile_filter)

DEFAULT_MAX_BYTES = 2 << 30        # exact-mode state budget: 2 GiB
MIN_SLACK = 1024                   # free buffer slots beyond the target tail (per unit)
MODES = ("auto", "exact", "sketch")


def virtual_index(n: int, q: float) -> float:
    """numpy.quantile(method="linear")'s position (n - 1) * q, in float64."""
    return float(n - 1) * float(q)


def tail_needed(n: int, q: float) -> int:
    """How many of the largest of n values the linear quantile at q (and every q' >= q) reads:
    ranks floor((n-1)q) .. n-1, plus one of margin for float rounding of (n-1)q."""
    return min(n, n - math.floor(virtual_index(n, q)) + 1)


class QuantileSketch:
    """Per-unit streaming quantiles of x [N, U] (rows are samples) or [B, U, H, W] (every
    position is a sample), float32/16/bf16, on x's device (or `device`).

    mode="exact" (needs expected_count, the total number of samples per unit): keeps the
    values above a running per-unit cut, about (1 - min_quantile) * expected_count + slack
    floats per unit. quantile(q) for q in [min_quantile, 1] equals
    numpy.quantile(all_values.astype(float64), q, method="linear") exactly: the order
    statistics are the exact float32 inputs, interpolated in float64 with numpy's formula.
    More values than expected_count are fine while the kept tail still covers the ranks a
    query needs; otherwise quantile() raises (never a silent wrong value). Values equal to the
    cut are dropped (exact up to expected_count), so a unit whose upper tail is one repeated
    value loses exactness as soon as more than expected_count values arrive. The state is
    refused (naming mode="sketch") when it exceeds `max_bytes`.
    mode="sketch": TailSketch (dissect_kernels.stats.tail_sketch), any count, bounded memory,
    rank error reported by rank_error_bound(); q >= min_quantile as in exact mode. With
    min_quantile >= ~0.978 (the default 0.99) the TailSketch is tail-only: values below its top
    2^-tail_shift (1/64 at 0.99) are counted, not located, several times faster (see
    tail_sketch.py for what that assumes). mode="auto": exact when expected_count is given and
    fits max_bytes, else sketch.
    NaN in the input is an error: on CPU update() raises at once; on the GPU (to avoid a host
    sync per batch) the NaNs are counted on the device and the next quantile()/cdf()/merge()/
    state_dict() raises. Either way the sketch is unusable afterwards (the count includes them).
    """

    def __init__(self, num_units: int, *, mode: str = "auto", min_quantile: float = 0.99,
                 expected_count: int | None = None, device=None,
                 max_bytes: int = DEFAULT_MAX_BYTES, slack: int | None = None,
                 backend: str = "auto", seed: int = 0):
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive int, got {num_units!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= float(min_quantile) <= 1.0:
            raise ValueError(f"min_quantile must lie in [0, 1], got {min_quantile!r}")
        if expected_count is not None and (int(expected_count) != expected_count or expected_count < 1):
            raise ValueError(f"expected_count must be a positive int or None, got {expected_count!r}")
        self.num_units = num_units
        self.min_quantile = float(min_quantile)
        self.expected_count = None if expected_count is None else int(expected_count)
        self.max_bytes = int(max_bytes)
        if slack is not None and (int(slack) != slack or slack < 1):
            raise ValueError(f"slack must be a positive int or None, got {slack!r}")
        self.slack = slack
        self.backend = backend
        self.seed = seed
        self.device = canonical_device(device)
        self._count = 0
        self._state: TailState | None = None
        self._sketch = None
        exact_bytes = None if expected_count is None else self._exact_bytes(self._capacity_for(self.expected_count))
        if mode == "exact":
            if expected_count is None:
                raise ValueError('mode="exact" needs expected_count (samples per unit); '
                                 'use mode="sketch" when the count is unknown')
            if exact_bytes > self.max_bytes:
                raise ValueError(
                    f'mode="exact" needs {exact_bytes / 2**20:.1f} MiB for {num_units} units x '
                    f'{self._capacity_for(self.expected_count)} values (expected_count={expected_count}, '
                    f'min_quantile={min_quantile}), over max_bytes={self.max_bytes / 2**20:.1f} MiB; '
                    f'raise max_bytes or use mode="sketch"')
        elif mode == "auto":
            mode = "exact" if exact_bytes is not None and exact_bytes <= self.max_bytes else "sketch"
        self.mode = mode
        if mode == "sketch":
            self._sketch = self._make_sketch()

    # --- sizing -----------------------------------------------------------------------------
    def _capacity_for(self, n: int) -> int:
        target = tail_needed(n, self.min_quantile)
        return target + (max(target, MIN_SLACK) if self.slack is None else int(self.slack))

    def _exact_bytes(self, capacity: int) -> int:
        return self.num_units * (capacity * 4 + 20)

    def _target(self, n_after: int, cap: int) -> int:
        """Values a compaction keeps: the tail needed for max(expected, seen) samples, capped
        so a quarter of the slack stays free."""
        slack = cap - tail_needed(self.expected_count, self.min_quantile)
        want = tail_needed(max(self.expected_count, n_after), self.min_quantile)
        return max(1, min(want, cap - max(1, slack // 4)))

    def _make_sketch(self):
        from dissect_kernels.stats.tail_sketch import TailSketch   # lazy: separate module
        return TailSketch(self.num_units, device=self.device, seed=self.seed, min_quantile=self.min_quantile)

    def _ensure_state(self, device) -> None:
        if self._state is None:
            self.device = torch.device(device)
            self._state = TailState.empty(self.num_units, self._capacity_for(self.expected_count),
                                          self.device)

    # --- public API -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples per unit seen so far (int64 semantics; a Python int)."""
        return int(self._sketch.count) if self.mode == "sketch" else self._count

    def update(self, x: torch.Tensor) -> None:
        """Add x [N, U] or [B, U, H, W] (every position of every image is a sample)."""
        x = check_input(x, self.num_units)
        if self.device is not None and x.device != self.device:
            raise ValueError(f"x is on {x.device} but the sketch lives on {self.device}")
        n = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[2] * x.shape[3]
        if n == 0:
            return
        if self.mode == "sketch":
            if self._sketch is None:
                self._sketch = self._make_sketch()
            flat = x if x.dim() == 2 else x.permute(0, 2, 3, 1).reshape(-1, self.num_units)
            self._sketch.update(flat.float().contiguous())  # raises on NaN (one amax pass)
            return
        self._ensure_state(x.device)
        self._count += n
        quantile_filter(x, self._state, self._target(self._count, self._state.capacity), backend=self.backend)
        if x.device.type == "cpu":
            self._check_nan()

    def _check_nan(self) -> None:
        if self._state is not None and bool((self._state.nan_count > 0).any()):
            bad = int((self._state.nan_count > 0).sum())
            raise ValueError(f"x contained NaN values ({bad} of {self.num_units} units); "
                             "quantiles of data with NaN are undefined and this sketch is now invalid")

    def _q_list(self, q) -> tuple[list[float], bool]:
        scalar = not isinstance(q, (list, tuple, torch.Tensor)) or (
            isinstance(q, torch.Tensor) and q.dim() == 0)
        qs = [float(q)] if scalar else [float(v) for v in (q.tolist() if isinstance(q, torch.Tensor) else q)]
        if not qs:
            raise ValueError("q must be a float or a non-empty list of floats")
        for v in qs:
            if not 0.0 <= v <= 1.0 or math.isnan(v):
                raise ValueError(f"q must lie in [0, 1], got {v}")
        return qs, scalar

    def _check_ready(self) -> None:
        if self.count == 0:
            raise ValueError("the sketch is empty: call update() before quantile()/cdf()")
        if self.mode == "exact":
            self._check_nan()
            if bool((self._state.kept > self._state.capacity).any()):
                raise RuntimeError("internal error: exact-tail buffer overflow")

    def quantile(self, q) -> torch.Tensor:
        """Per-unit quantile(s): [U] for a float q, [U, len(q)] for a list. Exact mode: float64,
        equal to numpy.quantile(values.astype(float64), q, method="linear"), q >= min_quantile."""
        qs, scalar = self._q_list(q)
        self._check_ready()
        for v in qs:
            if v < self.min_quantile:
                raise ValueError(f'q={v} is below min_quantile={self.min_quantile}: mode="{self.mode}" only '
                                 'keeps the upper tail (build the sketch with a lower min_quantile)')
        if self.mode == "sketch":
            out = self._sketch.quantile(torch.tensor(qs, dtype=torch.float64, device=self.device))
            return out[:, 0] if scalar else out
        st, n = self._state, self._count
        plan = []
        for v in qs:
            vi = virtual_index(n, v)
            if vi >= n - 1:
                prev = nxt = n - 1
            else:
                prev = math.floor(vi)
                nxt = prev + 1
            need_rank = n - 1 - prev                       # descending rank of the lower stat
            short = st.kept <= need_rank
            known_all = st.cut == float("-inf")            # nothing > -inf was ever dropped
            if bool((short & ~known_all).any()):
                bad = int((short & ~known_all).sum())
                raise ValueError(
                    f"exactness lost for q={v}: {n} values arrived (expected_count="
                    f"{self.expected_count}) and {bad} units keep fewer than the {need_rank + 1} "
                    'largest values the quantile needs; build with a larger expected_count or '
                    'use mode="sketch"')
            plan.append((need_rank, n - 1 - nxt, vi - prev))
        stats = self._order_stats(st, {r for a, b, _ in plan for r in (a, b)})
        cols = []
        for ra, rb, gamma in plan:
            a, b = stats[ra], stats[rb]
            diff = b - a
            cols.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)   # numpy _lerp
        out = torch.stack(cols, dim=1)
        return out[:, 0] if scalar else out

    @staticmethod
    def _order_stats(st: TailState, ranks: set[int]) -> dict[int, torch.Tensor]:
        """Descending-rank order statistics per unit as float64, by selection (numpy partition
        on CPU, a sort on GPU); the -inf padding sorts first, so descending rank r is ascending
        position capacity-1-r. Past the kept values: -inf (reachable only when the cut is -inf,
        i.e. only -inf values were ever dropped)."""
        masked = torch.where(st.valid_mask(), st.buffer, float("-inf"))
        cap = masked.shape[1]
        pos = {r: cap - 1 - min(r, cap - 1) for r in ranks}
        if masked.device.type == "cpu":
            part = torch.from_numpy(np.partition(masked.numpy(), sorted(set(pos.values())), axis=1))
        else:
            part = masked.sort(dim=1).values
        out = {}
        for r, p in pos.items():
            col = part[:, p].double()
            out[r] = torch.where(st.kept > r, col, torch.full_like(col, float("-inf")))
        return out

    def cdf(self, values) -> torch.Tensor:
        """Estimated fraction of values <= `values` per unit ([U] or [U, K]), float64.
        Exact mode: exact for every value >= the unit's cut (in particular >= quantile(
        min_quantile)); below the cut it is an upper bound (N - #kept above value) / N."""
        self._check_ready()
        vals = torch.as_tensor(values, device=self.device)
        if vals.dim() not in (1, 2) or vals.shape[0] != self.num_units:
            raise ValueError(f"values must have shape [U] or [U, K] with U={self.num_units}, "
                             f"got {tuple(vals.shape)}")
        squeeze = vals.dim() == 1
        vals2 = vals[:, None] if squeeze else vals
        if self.mode == "sketch":
            out = self._sketch.cdf(vals2.float())
        else:
            st = self._state
            asc = torch.where(st.valid_mask(), st.buffer, float("inf")).double().sort(dim=1).values
            le = torch.searchsorted(asc, vals2.double().contiguous(), right=True)
            gt = st.kept[:, None] - torch.minimum(le, st.kept[:, None])
            out = (self._count - gt).double() / self._count
        return out[:, 0] if squeeze else out

    def rank_error_bound(self, q=None) -> torch.Tensor:
        """[U] bound on |rank error| of quantile(q) (default q = min_quantile): 0 in exact mode."""
        if self.mode == "sketch":
            return self._sketch.rank_error_bound(self.min_quantile if q is None else float(q))
        dev = self.device or torch.device("cpu")
        return torch.zeros(self.num_units, dtype=torch.float64, device=dev)

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """Fold another sketch of the same units and mode into this one (in place; returns self)."""
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge a QuantileSketch, got {type(other).__name__}")
        if other.num_units != self.num_units or other.mode != self.mode:
            raise ValueError(f"cannot merge a {other.mode} sketch of {other.num_units} units into "
                             f"a {self.mode} sketch of {self.num_units} units")
        if self.mode == "sketch":
            self._sketch.merge(other._sketch)
            return self
        if other.min_quantile != self.min_quantile:
            raise ValueError(f"min_quantile differs: {self.min_quantile} vs {other.min_quantile}")
        other._check_nan()
        self._check_nan()
        if other._state is None:
            return self
        if self._state is None:
            self._ensure_state(other._state.buffer.device)
        _checks.same_device(self=self._state.buffer, other=other._state.buffer)
        n = self._count + other._count
        self.expected_count = max(self.expected_count, other.expected_count, n)
        cap = max(self._state.capacity, other._state.capacity, self._capacity_for(self.expected_count))
        if self._exact_bytes(cap) > self.max_bytes:
            raise ValueError(f"merged exact state would need {self._exact_bytes(cap) / 2**20:.1f} MiB, "
                             f'over max_bytes; use mode="sketch"')
        self._state = merge_states(self._state, other._state, cap, self._target(n, cap))
        self._count = n
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible): config, count and the kept tail."""
        i64 = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
        sd = {"num_units": i64(self.num_units), "mode": i64(MODES.index(self.mode)),
              "min_quantile": torch.tensor([self.min_quantile], dtype=torch.float64),
              "expected_count": i64(-1 if self.expected_count is None else self.expected_count)}
        if self.mode == "sketch":
            sd.update({f"sketch.{k}": v for k, v in self._sketch.state_dict().items()})
            return sd
        sd["count"] = i64(self._count)
        if self._state is not None:
            self._check_nan()
            st = self._state
            width = max(1, int(st.kept.max()))
            sd.update(values=torch.where(st.valid_mask(), st.buffer, float("-inf"))[:, :width].contiguous(),
                      kept=st.kept.clone(), cut=st.cut.clone(),
                      capacity=i64(st.capacity))
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore from state_dict() output (tensors may live on any device)."""
        if int(sd["num_units"][0]) != self.num_units:
            raise ValueError(f"state has {int(sd['num_units'][0])} units, sketch has {self.num_units}")
        mode = MODES[int(sd["mode"][0])]
        if mode != self.mode:
            raise ValueError(f"state is mode={mode!r} but this sketch is mode={self.mode!r}")
        self.min_quantile = float(sd["min_quantile"][0])
        e = int(sd["expected_count"][0])
        self.expected_count = None if e < 0 else e
        if mode == "sketch":
            self._sketch.load_state_dict({k[7:]: v for k, v in sd.items() if k.startswith("sketch.")})
            return
        self._count = int(sd["count"][0])
        if "values" not in sd:
            self._state = None
            return
        dev = self.device or sd["values"].device
        cap = int(sd["capacity"][0])
        st = TailState.empty(self.num_units, cap, dev)
        vals = sd["values"].to(dev, torch.float32)
        st.buffer[:, :vals.shape[1]] = vals
        st.kept.copy_(sd["kept"].to(dev))
        st.cut.copy_(sd["cut"].to(dev))
        self._state, self.device = st, torch.device(dev)
