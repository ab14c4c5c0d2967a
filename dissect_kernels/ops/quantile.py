"""The exact-tail filter behind QuantileSketch(mode="exact"): read each value once, keep the
few above the unit's running cut, re-compact now and then (csrc/include/.../quantile.h).
Backends: "cpu" (C++/OpenMP), "triton" (GPU, or interpreted), "reference"/"torch" (torch)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks

BACKENDS = ("cpu", "triton", "reference")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@dataclass
class TailState:
    """Per-unit exact tail. buffer [U, capacity] float32 (first kept[u] entries valid);
    kept [U] int64; cut [U] float32 (-inf until the first compaction); nan_count [U] int64.
    Invariant: the valid entries are the top-kept[u] multiset of all values seen, all >= cut,
    and every dropped value is <= cut."""

    buffer: torch.Tensor
    kept: torch.Tensor
    cut: torch.Tensor
    nan_count: torch.Tensor

    @staticmethod
    def empty(num_units: int, capacity: int, device) -> "TailState":
        """A state that has seen nothing: kept 0, cut -inf."""
        return TailState(
            buffer=torch.full((num_units, capacity), float("-inf"), dtype=torch.float32, device=device),
            kept=torch.zeros(num_units, dtype=torch.int64, device=device),
            cut=torch.full((num_units,), float("-inf"), dtype=torch.float32, device=device),
            nan_count=torch.zeros(num_units, dtype=torch.int64, device=device),
        )

    @property
    def capacity(self) -> int:
        """Buffer slots per unit."""
        return self.buffer.shape[1]

    def valid_mask(self) -> torch.Tensor:
        """[U, capacity] bool: which buffer entries hold kept values."""
        idx = torch.arange(self.capacity, device=self.buffer.device)
        return idx[None, :] < self.kept[:, None]


def canonical_device(device) -> torch.device | None:
    """torch.device with an explicit CUDA index ("cuda" -> "cuda:<current>"), so it compares
    equal to the device of tensors living there."""
    if device is None:
        return None
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def as_gus(x: torch.Tensor) -> torch.Tensor:
    """View x [N, U] or [B, U, H, W] as [G, U, S] (samples are the (g, s) pairs); copies
    only when H, W cannot be flattened."""
    if x.dim() == 2:
        return x[:, :, None]
    B, U, H, W = x.shape
    return x.reshape(B, U, H * W)


def check_input(x, num_units: int | None = None) -> torch.Tensor:
    """x must be a float32/16/bf16 tensor [N, U] or [B, U, H, W] with U == num_units."""
    x = _checks.tensor("x", x, ndim=(2, 4), dtypes=_checks.FLOAT_DTYPES)
    if num_units is not None and x.shape[1] != num_units:
        raise ValueError(f"x has {x.shape[1]} units (dim 1 of shape {tuple(x.shape)}) but the "
                         f"sketch was built for num_units={num_units}")
    return x


def quantile_filter(x: torch.Tensor, state: TailState, target: int, *, backend: str = "auto") -> None:
    """Fold x [N, U] or [B, U, H, W] into `state` in place; compactions keep `target` values
    (0 < target < capacity). No host synchronisation on the GPU backends."""
    x = check_input(x, state.buffer.shape[0])
    device = _checks.same_device(x=x, buffer=state.buffer)
    if not 0 < target < state.capacity:
        raise ValueError(f"target must lie in (0, capacity={state.capacity}), got {target}")
    if x.numel() == 0:
        return
    name = "reference" if backend == "torch" else _native.resolve(backend, device, BACKENDS)
    x3 = as_gus(x)
    if name == "reference":
        filter_torch(x3, state, target)
    elif name == "triton":
        from dissect_kernels.triton.quantile import quantile_filter as run
        run(x3, state, target)
    else:
        _native.native("_C").quantile_filter(_native_spec(x3, state, target), 0)


def _native_spec(x3: torch.Tensor, st: TailState, target: int) -> dict:
    """Pointers, shapes and element strides for the C++ entry point (python/bind_common.h)."""
    G, U, S = x3.shape
    return dict(x=x3.data_ptr(), x_dtype=_DTYPE_CODE[x3.dtype], G=G, U=U, S=S,
                x_stride=list(x3.stride()), buffer=st.buffer.data_ptr(), capacity=st.capacity,
                kept=st.kept.data_ptr(), cut=st.cut.data_ptr(), target=int(target),
                nan_count=st.nan_count.data_ptr())


def filter_torch(x3: torch.Tensor, st: TailState, target: int) -> None:
    """Torch fallback: merge the values above the cut into the buffer with one topk per call
    (any device, no host sync). Same invariant as the native filter; compacts to `target`
    only when the merged tail would not fit."""
    U = x3.shape[1]
    vals = x3.permute(1, 0, 2).reshape(U, -1).float()
    st.nan_count += torch.isnan(vals).sum(dim=1)
    passing = vals > st.cut[:, None]                       # NaN compares false: dropped
    vals = torch.where(vals == 0, torch.zeros((), device=vals.device), vals)   # -0.0 -> +0.0
    cand = torch.cat([torch.where(st.valid_mask(), st.buffer, float("-inf")),
                      torch.where(passing, vals, float("-inf"))], dim=1)
    nvalid = st.kept + passing.sum(dim=1)
    k = min(st.capacity, cand.shape[1])
    top = cand.topk(k, dim=1, sorted=True).values        # valid values are > -inf: first
    over = nvalid > st.capacity
    st.cut.copy_(torch.where(over, top[:, target - 1], st.cut))
    st.kept.copy_(torch.where(over, torch.full_like(nvalid, target), nvalid))
    st.buffer[:, :k] = top


def merge_states(a: TailState, b: TailState, capacity: int, target: int) -> TailState:
    """Union of two tails. With c = max(cut_a, cut_b) every dropped value of either side is
    <= c and every value > c is kept by one side, so {kept values >= c} is the exact top-m
    multiset of the union (m = its size); compacted to `target` if it exceeds `capacity`."""
    c = torch.maximum(a.cut, b.cut)
    parts = [torch.where(s.valid_mask() & (s.buffer >= c[:, None]), s.buffer, float("-inf"))
             for s in (a, b)]
    nvalid = sum(((s.valid_mask() & (s.buffer >= c[:, None])).sum(dim=1) for s in (a, b)))
    cand = torch.cat(parts, dim=1)
    out = TailState.empty(a.buffer.shape[0], capacity, a.buffer.device)
    k = min(capacity, cand.shape[1])
    top = cand.topk(k, dim=1, sorted=True).values
    over = nvalid > capacity
    out.buffer[:, :k] = top
    out.cut.copy_(torch.where(over, top[:, target - 1], c))
    out.kept.copy_(torch.where(over, torch.full_like(nvalid, target), nvalid))
    out.nan_count.copy_(a.nan_count + b.nan_count)
    return out
