"""ExactQuantile: per-unit streaming quantiles that equal numpy.quantile(method="linear").

It keeps every value that can still be in the top (1 - min_quantile) tail. The state machine
(how large the buffer is, how much a compaction keeps, how two states merge, which order
statistics a quantile reads and whether a unit still holds them) lives in the C++ core
(csrc/include/dissect_kernels/exact_quantile.h), the same code the C ABI runs. On CPU the C++ core
also moves the data. On a GPU, torch/Triton move it, taking every size, target, readout plan and
exactness verdict from the same C++ functions, so both devices reach the same state."""
from __future__ import annotations

import math

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks
from dissect_kernels.ops.quantile import (TailState, as_gus, canonical_device, check_input,
                                          merge_states, quantile_filter)

DEFAULT_MAX_BYTES = 2 << 30        # exact-mode state budget: 2 GiB
MIN_SLACK = 1024                   # free buffer slots beyond the target tail (per unit), C++ kMinSlack
BACKENDS = ("cpu", "triton", "reference")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def core():
    """The compiled module holding the exact state machine (dissect_kernels._C)."""
    mod = _native.native("_C")
    if mod is None or not hasattr(mod, "exact_capacity"):
        raise RuntimeError("ExactQuantile needs the compiled dissect_kernels._C module (its state machine "
                           "is C++); rebuild with `pip install -e .` or `python setup.py build_ext --inplace`")
    return mod


def q_list(q) -> tuple[list[float], bool]:
    """q as a list of floats in [0, 1] and whether it was a scalar."""
    scalar = not isinstance(q, (list, tuple, torch.Tensor)) or (isinstance(q, torch.Tensor) and q.dim() == 0)
    qs = [float(q)] if scalar else [float(v) for v in (q.tolist() if isinstance(q, torch.Tensor) else q)]
    if not qs:
        raise ValueError("q must be a float or a non-empty list of floats")
    for v in qs:
        if not 0.0 <= v <= 1.0 or math.isnan(v):
            raise ValueError(f"q must lie in [0, 1], got {v}")
    return qs, scalar


def state_spec(st: TailState) -> dict:
    """Pointers and sizes of a host state for the C++ entry points."""
    return dict(num_units=st.buffer.shape[0], capacity=st.capacity, buffer=st.buffer.data_ptr(),
                kept=st.kept.data_ptr(), cut=st.cut.data_ptr(), nan_count=st.nan_count.data_ptr())


def input_spec(x3: torch.Tensor) -> dict:
    """Pointers, shapes and element strides of x viewed as [G, U, S]."""
    G, U, S = x3.shape
    return dict(x=x3.data_ptr(), x_dtype=_DTYPE_CODE[x3.dtype], G=G, U=U, S=S, x_stride=list(x3.stride()),
                buffer=0, capacity=0, kept=0, cut=0, target=0, nan_count=0)


class ExactQuantile:
    """Per-unit exact quantiles of x [N, U] (rows are samples) or [B, U, H, W] (every position is
    a sample), float32/16/bf16, on x's device (or `device`).

    Needs expected_count, the total number of samples per unit; keeps about
    (1 - min_quantile) * expected_count + slack floats per unit. quantile(q) for q in
    [min_quantile, 1] equals numpy.quantile(all_values.astype(float64), q, method="linear")
    exactly. More values than expected_count are fine while the kept tail still covers the ranks a
    query needs; otherwise quantile() raises "exactness lost" (never a silent wrong value). Values
    equal to the cut are dropped, so a unit whose upper tail is one repeated value loses exactness
    as soon as more than expected_count values arrive. A state over `max_bytes` is refused.
    NaN input is an error: on CPU update() raises at once; on a GPU (no host sync per batch) the
    next quantile()/cdf()/merge()/state_dict() raises. Either way the state is unusable after.
    """

    mode = "exact"

    def __init__(self, num_units: int, *, expected_count: int, min_quantile: float = 0.99, device=None,
                 max_bytes: int = DEFAULT_MAX_BYTES, slack: int | None = None, backend: str = "auto"):
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive int, got {num_units!r}")
        if not 0.0 <= float(min_quantile) <= 1.0:
            raise ValueError(f"min_quantile must lie in [0, 1], got {min_quantile!r}")
        if expected_count is None:
            raise ValueError('mode="exact" needs expected_count (samples per unit); '
                             'use mode="sketch" when the count is unknown')
        if int(expected_count) != expected_count or expected_count < 1:
            raise ValueError(f"expected_count must be a positive int, got {expected_count!r}")
        if slack is not None and (int(slack) != slack or slack < 1):
            raise ValueError(f"slack must be a positive int or None, got {slack!r}")
        self.num_units = num_units
        self.min_quantile = float(min_quantile)
        self.expected_count = int(expected_count)
        self.slack = None if slack is None else int(slack)
        self.max_bytes = int(max_bytes)
        self.backend = backend
        self.device = canonical_device(device)
        self._count = 0
        self._state: TailState | None = None
        core().exact_check_budget(self._cfg(), self._capacity_for(self.expected_count), 'mode="exact"')

    # --- the C++ state machine ------------------------------------------------------------------
    def _cfg(self) -> dict:
        return dict(num_units=self.num_units, min_quantile=self.min_quantile, expected_count=self.expected_count,
                    slack=-1 if self.slack is None else self.slack, max_bytes=self.max_bytes)

    def _capacity_for(self, n: int) -> int:
        """Buffer slots per unit for n samples (the tail plus the slack)."""
        return core().exact_capacity(self._cfg(), int(n))

    def state_bytes(self, capacity: int | None = None) -> int:
        """Bytes of the state (of the current capacity, or of `capacity`)."""
        cap = capacity if capacity is not None else (
            self._state.capacity if self._state is not None else self._capacity_for(self.expected_count))
        return core().exact_state_bytes(self.num_units, cap)

    def _ensure_state(self, device) -> None:
        if self._state is None:
            self.device = torch.device(device)
            self._state = TailState.empty(self.num_units, self._capacity_for(self.expected_count), self.device)

    def _backend(self, device: torch.device) -> str:
        return "reference" if self.backend == "torch" else _native.resolve(self.backend, device, BACKENDS)

    # --- the protocol -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples per unit seen so far."""
        return self._count

    def update(self, x: torch.Tensor) -> None:
        """Add x [N, U] or [B, U, H, W] (every position of every image is a sample)."""
        x = check_input(x, self.num_units)
        if self.device is not None and x.device != self.device:
            raise ValueError(f"x is on {x.device} but the sketch lives on {self.device}")
        n = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[2] * x.shape[3]
        if n == 0:
            return
        self._ensure_state(x.device)
        name = self._backend(x.device)
        if name == "cpu":
            x3 = as_gus(x)
            self._count, _ = core().exact_update(self._cfg(), state_spec(self._state), self._count, input_spec(x3))
        else:
            self._count += n
            target = core().exact_target(self._cfg(), self._count, self._state.capacity)
            quantile_filter(x, self._state, target, backend="torch" if name == "reference" else name)
        if x.device.type == "cpu":
            self._check_nan()

    def _check_nan(self) -> None:
        if self._state is not None and bool((self._state.nan_count > 0).any()):
            bad = int((self._state.nan_count > 0).sum())
            raise ValueError(f"x contained NaN values ({bad} of {self.num_units} units); "
                             "quantiles of data with NaN are undefined and this sketch is now invalid")

    def _check_ready(self) -> None:
        if self._count == 0:
            raise ValueError("the sketch is empty: call update() before quantile()/cdf()")
        self._check_nan()

    def quantile(self, q) -> torch.Tensor:
        """Per-unit quantile(s), float64: [U] for a float q, [U, len(q)] for a list; q >= min_quantile."""
        qs, scalar = q_list(q)
        self._check_ready()
        for v in qs:
            if v < self.min_quantile:
                raise ValueError(f'q={v} is below min_quantile={self.min_quantile}: mode="exact" only '
                                 'keeps the upper tail (build the sketch with a lower min_quantile)')
        if self._state.buffer.device.type == "cpu":
            out = torch.empty(self.num_units, len(qs), dtype=torch.float64)
            core().exact_quantile(self._cfg(), state_spec(self._state), self._count, qs, out.data_ptr())
        else:
            out = self._quantile_torch(qs)
        return out[:, 0] if scalar else out

    def _quantile_torch(self, qs: list[float]) -> torch.Tensor:
        """The device path of quantile(): the C++ core's exactness verdict and readout plan, the
        order statistics by a sort on the device, numpy's interpolation in torch float64."""
        st, n, mod = self._state, self._count, core()
        kept, cut = st.kept.cpu().contiguous(), st.cut.cpu().contiguous()
        plan = []
        for v in qs:
            mod.exact_check(self._cfg(), kept.data_ptr(), cut.data_ptr(), n, v)
            plan.append(mod.exact_readout(n, v))
        stats = order_stats(st, {r for a, b, _ in plan for r in (a, b)})
        cols = []
        for ra, rb, gamma in plan:
            a, b = stats[ra], stats[rb]
            diff = b - a
            cols.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)   # numpy _lerp
        return torch.stack(cols, dim=1)

    def cdf(self, values) -> torch.Tensor:
        """Fraction of values <= `values` per unit ([U] or [U, K]), float64: exact at and above the
        unit's cut (in particular >= quantile(min_quantile)); below it an upper bound."""
        self._check_ready()
        vals = torch.as_tensor(values, device=self.device)
        if vals.dim() not in (1, 2) or vals.shape[0] != self.num_units:
            raise ValueError(f"values must have shape [U] or [U, K] with U={self.num_units}, "
                             f"got {tuple(vals.shape)}")
        squeeze = vals.dim() == 1
        vals2 = (vals[:, None] if squeeze else vals).double().contiguous()
        if self._state.buffer.device.type == "cpu":
            out = torch.empty(vals2.shape, dtype=torch.float64)
            core().exact_cdf(state_spec(self._state), self._count, vals2.data_ptr(), vals2.shape[1], out.data_ptr())
        else:
            out = self._cdf_torch(vals2)
        return out[:, 0] if squeeze else out

    def _cdf_torch(self, vals2: torch.Tensor) -> torch.Tensor:
        """The device path of cdf() (values [U, K] float64): the core's rule, by a sort."""
        st = self._state
        asc = torch.where(st.valid_mask(), st.buffer, float("inf")).double().sort(dim=1).values
        le = torch.searchsorted(asc, vals2, right=True)
        gt = st.kept[:, None] - torch.minimum(le, st.kept[:, None])
        return (self._count - gt).double() / self._count

    def rank_error_bound(self, q=None) -> torch.Tensor:
        """[U] bound on |rank error| of quantile(q): 0 (exact)."""
        return torch.zeros(self.num_units, dtype=torch.float64, device=self.device or torch.device("cpu"))

    def merge(self, other: "ExactQuantile") -> "ExactQuantile":
        """Fold another ExactQuantile of the same units and min_quantile into this one (in place)."""
        if not isinstance(other, ExactQuantile):
            raise TypeError(f"can only merge an ExactQuantile, got {type(other).__name__}")
        if other.num_units != self.num_units:
            raise ValueError(f"cannot merge an exact sketch of {other.num_units} units into one of {self.num_units}")
        if other.min_quantile != self.min_quantile:
            raise ValueError(f"min_quantile differs: {self.min_quantile} vs {other.min_quantile}")
        other._check_nan()
        self._check_nan()
        if other._state is None:
            return self
        self._ensure_state(other._state.buffer.device)
        _checks.same_device(self=self._state.buffer, other=other._state.buffer)
        plan = core().exact_merge_plan(self._cfg(), self._count, self._state.capacity,
                                       other._cfg(), other._count, other._state.capacity)
        if self._state.buffer.device.type == "cpu":
            out = TailState.empty(self.num_units, plan["capacity"], self._state.buffer.device)
            core().exact_merge(state_spec(self._state), state_spec(other._state), plan["target"], state_spec(out))
        else:
            out = merge_states(self._state, other._state, plan["capacity"], plan["target"])
        self._state, self._count, self.expected_count = out, plan["count"], plan["expected_count"]
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible): config, count and the kept tail. The same keys as
        QuantileSketch(mode="exact") always wrote, so either loads the other's."""
        i64 = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
        sd = {"num_units": i64(self.num_units), "mode": i64(1),
              "min_quantile": torch.tensor([self.min_quantile], dtype=torch.float64),
              "expected_count": i64(self.expected_count), "count": i64(self._count)}
        if self._state is not None:
            self._check_nan()
            st = self._state
            width = max(1, int(st.kept.max()))
            sd.update(values=torch.where(st.valid_mask(), st.buffer, float("-inf"))[:, :width].contiguous(),
                      kept=st.kept.clone(), cut=st.cut.clone(), capacity=i64(st.capacity))
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore from state_dict() output (tensors may live on any device)."""
        if int(sd["num_units"][0]) != self.num_units:
            raise ValueError(f"state has {int(sd['num_units'][0])} units, sketch has {self.num_units}")
        if "mode" in sd and int(sd["mode"][0]) != 1:
            raise ValueError(f"state is not an exact-mode state (mode code {int(sd['mode'][0])})")
        self.min_quantile = float(sd["min_quantile"][0])
        self.expected_count = int(sd["expected_count"][0])
        self._count = int(sd["count"][0])
        if "values" not in sd:
            self._state = None
            return
        dev = self.device or sd["values"].device
        st = TailState.empty(self.num_units, int(sd["capacity"][0]), dev)
        vals = sd["values"].to(dev, torch.float32)
        st.buffer[:, :vals.shape[1]] = vals
        st.kept.copy_(sd["kept"].to(dev))
        st.cut.copy_(sd["cut"].to(dev))
        self._state, self.device = st, torch.device(dev)

    def tail(self, size: int | None = None) -> torch.Tensor:
        """[U, size] the `size` largest values each unit holds, descending (-inf past what it
        holds); default: the tail the current count needs. For comparing states across devices."""
        if self._state is None:
            raise ValueError("the sketch is empty")
        size = size or core().exact_tail_needed(self._count, self.min_quantile)
        st = self._state
        masked = torch.where(st.valid_mask(), st.buffer, float("-inf"))
        return masked.sort(dim=1, descending=True).values[:, :size].cpu()


def order_stats(st: TailState, ranks: set[int]) -> dict[int, torch.Tensor]:
    """Descending-rank order statistics per unit as float64, by a sort; past the kept values
    -inf (reachable only when the cut is -inf, i.e. only -inf values were ever dropped)."""
    masked = torch.where(st.valid_mask(), st.buffer, float("-inf"))
    desc = masked.sort(dim=1, descending=True).values
    out = {}
    for r in ranks:
        col = desc[:, min(r, st.capacity - 1)].double()
        out[r] = torch.where(st.kept > r, col, torch.full_like(col, float("-inf")))
    return out
