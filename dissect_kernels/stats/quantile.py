"""Per-unit streaming quantiles: one protocol, two algorithms, a factory.

QuantileEstimator is what every accumulator of quantiles offers (update / quantile / cdf / merge /
state_dict / load_state_dict / count / rank_error_bound). ExactQuantile (stats/exact_quantile.py)
reproduces numpy.quantile exactly when the sample count is known and its tail fits a byte budget;
TailSketch (stats/tail_sketch.py) handles any count with bounded memory and a reported rank error.
make_quantile(mode, ...) picks one ("auto": exact when it fits). QuantileSketch is the original
single-class front end, kept for existing callers and checkpoints: a thin wrapper over the two."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from dissect_kernels.ops.quantile import canonical_device, check_input
from dissect_kernels.stats.exact_quantile import (DEFAULT_MAX_BYTES, MIN_SLACK, ExactQuantile,  # noqa: F401
                                                  core, q_list)

MODES = ("auto", "exact", "sketch")   # index = the "mode" code in state dicts (and the C ABI)


@runtime_checkable
class QuantileEstimator(Protocol):
    """Per-unit streaming quantiles of x [N, U] or [B, U, H, W]; mergeable, serialisable."""

    @property
    def count(self) -> int: ...                                   # samples per unit seen

    def update(self, x: torch.Tensor) -> None: ...

    def quantile(self, q) -> torch.Tensor: ...                    # [U] (float q) or [U, Q]

    def cdf(self, values) -> torch.Tensor: ...                    # [U] or [U, K], float64

    def rank_error_bound(self, q=None) -> torch.Tensor: ...       # [U], 0 when exact

    def merge(self, other): ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None: ...


def exact_fits(num_units: int, expected_count: int | None, min_quantile: float, max_bytes: int,
               slack: int | None = None) -> bool:
    """Whether an ExactQuantile for expected_count samples fits max_bytes (the C++ core's sizing)."""
    if expected_count is None:
        return False
    cfg = dict(num_units=num_units, min_quantile=float(min_quantile), expected_count=int(expected_count),
               slack=-1 if slack is None else int(slack), max_bytes=int(max_bytes))
    mod = core()
    return mod.exact_state_bytes(num_units, mod.exact_capacity(cfg, int(expected_count))) <= max_bytes


def make_quantile(mode: str, num_units: int, *, expected_count: int | None = None, min_quantile: float = 0.99,
                  device=None, max_bytes: int = DEFAULT_MAX_BYTES, slack: int | None = None,
                  backend: str = "auto", seed: int = 0) -> QuantileEstimator:
    """An ExactQuantile ("exact"), a TailSketch ("sketch"), or ("auto") exact when expected_count
    is known and its state fits max_bytes, else the sketch. TailSketch's min_quantile >= ~0.978
    makes it tail-only (several times faster; see tail_sketch.py)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "exact" if exact_fits(num_units, expected_count, min_quantile, max_bytes, slack) else "sketch"
    if mode == "exact":
        return ExactQuantile(num_units, expected_count=expected_count, min_quantile=min_quantile, device=device,
                             max_bytes=max_bytes, slack=slack, backend=backend)
    from dissect_kernels.stats.tail_sketch import TailSketch   # looked up at call time (tests stand in)
    return TailSketch(num_units, device=canonical_device(device), seed=seed, min_quantile=float(min_quantile))


class QuantileSketch:
    """Per-unit streaming quantiles with a mode switch (the original front end; new code can use
    make_quantile / ExactQuantile / TailSketch directly). mode="exact" is ExactQuantile,
    mode="sketch" a TailSketch, "auto" exact when expected_count is given and fits max_bytes.
    In both modes quantile(q) refuses q below min_quantile and update() takes [N, U] or
    [B, U, H, W]. `impl` is the underlying estimator. state_dict() keeps the original format
    (a header plus the exact tail, or "sketch."-prefixed TailSketch tensors), so old checkpoints load.
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
        if slack is not None and (int(slack) != slack or slack < 1):
            raise ValueError(f"slack must be a positive int or None, got {slack!r}")
        self.num_units = num_units
        self.min_quantile = float(min_quantile)
        self.impl = make_quantile(mode, num_units, expected_count=expected_count, min_quantile=min_quantile,
                                  device=device, max_bytes=max_bytes, slack=slack, backend=backend, seed=seed)
        self.mode = "exact" if isinstance(self.impl, ExactQuantile) else "sketch"

    @property
    def expected_count(self) -> int | None:
        return self.impl.expected_count if self.mode == "exact" else None

    @property
    def count(self) -> int:
        """Samples per unit seen so far."""
        return int(self.impl.count)

    def update(self, x: torch.Tensor) -> None:
        """Add x [N, U] or [B, U, H, W] (every position of every image is a sample)."""
        if self.mode == "exact":
            self.impl.update(x)
            return
        x = check_input(x, self.num_units)
        if x.numel() == 0:
            return
        flat = x if x.dim() == 2 else x.permute(0, 2, 3, 1).reshape(-1, self.num_units)
        self.impl.update(flat.float().contiguous())  # raises on NaN (one amax pass)

    def quantile(self, q) -> torch.Tensor:
        """Per-unit quantile(s): [U] for a float q, [U, len(q)] for a list (q >= min_quantile).
        Exact mode: float64, equal to numpy.quantile(values.astype(float64), q, method="linear")."""
        if self.mode == "exact":
            return self.impl.quantile(q)
        qs, scalar = q_list(q)
        if self.count == 0:
            raise ValueError("the sketch is empty: call update() before quantile()/cdf()")
        for v in qs:
            if v < self.min_quantile:
                raise ValueError(f'q={v} is below min_quantile={self.min_quantile}: mode="sketch" only '
                                 'keeps the upper tail (build the sketch with a lower min_quantile)')
        out = self.impl.quantile(torch.tensor(qs, dtype=torch.float64, device=self.impl.device))
        return out[:, 0] if scalar else out

    def cdf(self, values) -> torch.Tensor:
        """Estimated fraction of values <= `values` per unit ([U] or [U, K]), float64."""
        if self.mode == "exact":
            return self.impl.cdf(values)
        if self.count == 0:
            raise ValueError("the sketch is empty: call update() before quantile()/cdf()")
        vals = torch.as_tensor(values, device=self.impl.device)
        if vals.dim() not in (1, 2) or vals.shape[0] != self.num_units:
            raise ValueError(f"values must have shape [U] or [U, K] with U={self.num_units}, "
                             f"got {tuple(vals.shape)}")
        out = self.impl.cdf((vals[:, None] if vals.dim() == 1 else vals).float())
        return out[:, 0] if vals.dim() == 1 else out

    def rank_error_bound(self, q=None) -> torch.Tensor:
        """[U] bound on |rank error| of quantile(q) (default q = min_quantile): 0 in exact mode."""
        return self.impl.rank_error_bound(self.min_quantile if q is None else float(q))

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """Fold another sketch of the same units and mode into this one (in place; returns self)."""
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge a QuantileSketch, got {type(other).__name__}")
        if other.num_units != self.num_units or other.mode != self.mode:
            raise ValueError(f"cannot merge a {other.mode} sketch of {other.num_units} units into "
                             f"a {self.mode} sketch of {self.num_units} units")
        self.impl.merge(other.impl)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible): header, then the exact tail or the sketch."""
        if self.mode == "exact":
            return self.impl.state_dict()
        i64 = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
        sd = {"num_units": i64(self.num_units), "mode": i64(MODES.index("sketch")),
              "min_quantile": torch.tensor([self.min_quantile], dtype=torch.float64), "expected_count": i64(-1)}
        sd.update({f"sketch.{k}": v for k, v in self.impl.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore from state_dict() output (tensors may live on any device)."""
        if int(sd["num_units"][0]) != self.num_units:
            raise ValueError(f"state has {int(sd['num_units'][0])} units, sketch has {self.num_units}")
        mode = MODES[int(sd["mode"][0])]
        if mode != self.mode:
            raise ValueError(f"state is mode={mode!r} but this sketch is mode={self.mode!r}")
        self.min_quantile = float(sd["min_quantile"][0])
        if mode == "exact":
            self.impl.load_state_dict(sd)
        else:
            self.impl.load_state_dict({k[7:]: v for k, v in sd.items() if k.startswith("sketch.")})
