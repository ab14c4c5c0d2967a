"""TopK: per unit, the k highest scores seen (e.g. per-image max activation) with their
indices, descending, ties broken by lower index first; mergeable and serialisable."""
from __future__ import annotations

import torch

from dissect_kernels.ops import _checks
from dissect_kernels.ops.quantile import canonical_device

_PAD_INDEX = torch.iinfo(torch.int64).max


class TopK:
    """Running top-k per unit of scores [N, U] tagged with indices [N] (int64, e.g. dataset
    image ids). result() -> (values [U, k] float32, indices [U, k] int64), descending by value,
    equal values ordered by lower index first. Before k scores have been seen, the missing
    slots hold value -inf and index -1 (they sort last). NaN scores are rejected."""

    def __init__(self, num_units: int, k: int, *, device=None):
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive int, got {num_units!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.num_units, self.k = num_units, k
        self.device = canonical_device(device)
        self.count = 0
        self._values = self._indices = None
        if self.device is not None:
            self._allocate(self.device)

    def _allocate(self, device) -> None:
        self.device = torch.device(device)
        self._values = torch.full((self.num_units, self.k), float("-inf"), device=self.device)
        self._indices = torch.full((self.num_units, self.k), _PAD_INDEX, dtype=torch.int64,
                                   device=self.device)

    def _fold(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Keep the k best of the current state and candidates values/indices [U, M]."""
        v = torch.cat([self._values, values], dim=1)
        i = torch.cat([self._indices, indices], dim=1)
        order = i.argsort(dim=1, stable=True)                       # secondary key: index asc
        v, i = v.gather(1, order), i.gather(1, order)
        order = v.argsort(dim=1, descending=True, stable=True)[:, :self.k]   # primary: value desc
        self._values, self._indices = v.gather(1, order), i.gather(1, order)

    def update(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Add scores [N, U] (float) for the items `indices` [N] (int64)."""
        scores = _checks.tensor("scores", scores, ndim=2, dtypes=_checks.FLOAT_DTYPES)
        indices = _checks.tensor("indices", indices, ndim=1, dtypes=_checks.INT_DTYPES)
        if scores.shape[1] != self.num_units:
            raise ValueError(f"scores has {scores.shape[1]} units but TopK was built for "
                             f"num_units={self.num_units}")
        if indices.shape[0] != scores.shape[0]:
            raise ValueError(f"indices has {indices.shape[0]} entries but scores has {scores.shape[0]} rows")
        dev = _checks.same_device(scores=scores, indices=indices)
        if self.device is None:
            self._allocate(dev)
        elif dev != self.device:
            raise ValueError(f"scores are on {dev} but TopK lives on {self.device}")
        _checks.not_nan("scores", scores)
        if scores.shape[0] == 0:
            return
        self._fold(scores.t().float(), indices.long()[None, :].expand(self.num_units, -1))
        self.count += scores.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [U, k], indices [U, k]); unfilled slots are (-inf, -1)."""
        if self._values is None:
            self._allocate(torch.device("cpu"))
        idx = torch.where(self._indices == _PAD_INDEX, torch.full_like(self._indices, -1), self._indices)
        return self._values.clone(), idx

    def merge(self, other: "TopK") -> "TopK":
        """Fold another TopK of the same shape into this one (in place; returns self)."""
        if not isinstance(other, TopK) or (other.num_units, other.k) != (self.num_units, self.k):
            raise ValueError("can only merge a TopK with the same num_units and k")
        if other._values is None:
            return self
        if self._values is None:
            self._allocate(other.device)
        self._fold(other._values.to(self.device), other._indices.to(self.device))
        self.count += other.count
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible)."""
        if self._values is None:
            self._allocate(torch.device("cpu"))
        return {"values": self._values.clone(), "indices": self._indices.clone(),
                "count": torch.tensor([self.count], dtype=torch.int64)}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore from state_dict() output."""
        if tuple(sd["values"].shape) != (self.num_units, self.k):
            raise ValueError(f"state holds values {tuple(sd['values'].shape)}, expected "
                             f"({self.num_units}, {self.k})")
        dev = self.device or sd["values"].device
        self._values = sd["values"].to(dev, torch.float32).clone()
        self._indices = sd["indices"].to(dev, torch.int64).clone()
        self.device = torch.device(dev)
        self.count = int(sd["count"][0])
