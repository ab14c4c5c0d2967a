"""Oracles for the quantile op: the exact numpy quantile, and a netdissect-style KLL sketch
written from REFERENCE-CONVENTIONS §1 (used as the benchmark baseline and to emulate the
references' sketched thresholds). Slow and obvious on purpose."""
from __future__ import annotations

import math

import numpy as np


def exact_quantile(values: np.ndarray, q) -> np.ndarray:
    """numpy.quantile(method="linear") per unit of `values` [N, U], computed on the float64
    cast. Returns [U] for a scalar q, else [U, len(q)]."""
    v = np.asarray(values, dtype=np.float64)
    out = np.quantile(v, np.asarray(q, dtype=np.float64), axis=0, method="linear")
    return out if np.ndim(q) == 0 else np.ascontiguousarray(out.T)


def exact_cdf(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Fraction of values <= point, per unit: values [N, U], points [U, K] -> [U, K] float64."""
    v = np.sort(np.asarray(values, dtype=np.float64), axis=0)
    pts = np.asarray(points, dtype=np.float64)
    out = np.empty(pts.shape, dtype=np.float64)
    for u in range(v.shape[1]):
        out[u] = np.searchsorted(v[:, u], pts[u], side="right") / v.shape[0]
    return out


def as_samples(x: np.ndarray) -> np.ndarray:
    """[N, U] stays; [B, U, H, W] -> [B*H*W, U] (every position a sample)."""
    x = np.asarray(x)
    if x.ndim == 4:
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return x


class KLLSketch:
    """The references' streaming quantile sketch (ND/NDL `QuantileVector`, DB/GD
    `RunningQuantile`), re-implemented from the written description in
    REFERENCE-CONVENTIONS §1: levels of per-channel buffers, a sample at level i weighs 2^i;
    level 0 fills with rows and is compacted lazily (sort, fair coin, keep every second
    element, push up); `_expand` inserts a new bottom level of capacity
    max(buffersize, ceil(R*0.67^L)) rounded up to a multiple of 8; readout = weighted
    midpoints with the min/max as weight-0 extremes, numpy.interp. Seedable numpy RNG (the
    references' own RNG streams are not reproduced, so agreement is statistical).

    resolution R: 6144 for DB's `RunningQuantile()` (r=3072), 24576 for ND/NDL.
    """

    def __init__(self, depth: int, resolution: int = 6144, buffersize: int = 128, seed: int = 0):
        if buffersize < 2:
            raise ValueError("buffersize must be >= 2 (sub-sampling is not modelled)")
        self.depth, self.resolution, self.buffersize = depth, resolution, buffersize
        self.rng = np.random.RandomState(seed)
        self.levels = [np.empty((depth, resolution), dtype=np.float64)]
        self.fill = [0]
        self.lo = np.full(depth, np.inf)
        self.hi = np.full(depth, -np.inf)
        self.count = 0

    # --- adding -------------------------------------------------------------------------
    def add(self, x: np.ndarray) -> None:
        """Add rows x [N, depth] (or [B, depth, H, W], every position a sample)."""
        x = as_samples(x).astype(np.float64, copy=False)
        if x.shape[1] != self.depth:
            raise ValueError(f"x has {x.shape[1]} channels, sketch has {self.depth}")
        self.count += x.shape[0]
        pos = 0
        while pos < x.shape[0]:
            room = self.levels[0].shape[1] - self.fill[0]
            if room == 0:
                self._shift()
                continue
            take = min(room, x.shape[0] - pos)
            self.levels[0][:, self.fill[0]:self.fill[0] + take] = x[pos:pos + take].T
            self.fill[0] += take
            pos += take
            if pos < x.shape[0] and self.fill[0] == self.levels[0].shape[1]:
                self._shift()

    def _coin(self) -> int:
        return int(self.rng.randint(2))

    def _needed_room(self, i: int) -> int:
        """Free slots level i must keep: room for one compaction of the level below."""
        return 1 if i == 0 else -(-self.levels[i - 1].shape[1] // 2)

    def _shift(self) -> None:
        i = 0
        while self.levels[i].shape[1] - self.fill[i] < self._needed_room(i):
            if i + 1 >= len(self.levels):
                self._expand()
                return
            data = np.sort(self.levels[i][:, :self.fill[i]], axis=1)
            if i == 0:
                self._extremes(data)
            half = data[:, self._coin()::2]
            j = self.fill[i + 1]
            self.levels[i + 1][:, j:j + half.shape[1]] = half
            self.fill[i + 1] += half.shape[1]
            self.fill[i] = 0
            i += 1

    def _extremes(self, sorted_data: np.ndarray) -> None:
        if sorted_data.shape[1]:
            self.lo = np.minimum(self.lo, sorted_data[:, 0])
            self.hi = np.maximum(self.hi, sorted_data[:, -1])

    def _expand(self) -> None:
        cap = max(self.buffersize, math.ceil(self.resolution * 0.67 ** len(self.levels)))
        cap = -(-cap // 8) * 8
        # The old level 0 is about to double its weight: record its extremes first.
        self._extremes(np.sort(self.levels[0][:, :self.fill[0]], axis=1))
        self.levels.insert(0, np.empty((self.depth, cap), dtype=np.float64))
        self.fill.insert(0, 0)
        for i in range(1, len(self.levels)):
            n = self.fill[i]
            if n == 0:
                continue
            below = i - 1
            free_after = self.levels[below].shape[1] - self.fill[below] - n
            if free_after >= self._needed_room(below):   # move down: weight unchanged
                j = self.fill[below]
                self.levels[below][:, j:j + n] = self.levels[i][:, :n]
                self.fill[below] += n
                self.fill[i] = 0
            else:                                       # scrunch in place: weight doubles
                data = np.sort(self.levels[i][:, :n], axis=1)[:, self._coin()::2]
                self.levels[i][:, :data.shape[1]] = data
                self.fill[i] = data.shape[1]

    # --- readout ------------------------------------------------------------------------
    def _weighted(self):
        """Sorted values [depth, M] and midpoint positions c [depth, M] (extremes weight 0)."""
        self._extremes(np.sort(self.levels[0][:, :self.fill[0]], axis=1))
        vals = [self.lo[:, None]]
        wts = [np.zeros((self.depth, 1))]
        for i, (lev, n) in enumerate(zip(self.levels, self.fill)):
            vals.append(lev[:, :n])
            wts.append(np.full((self.depth, n), float(2 ** i)))
        vals.append(self.hi[:, None])
        wts.append(np.zeros((self.depth, 1)))
        v = np.concatenate(vals, axis=1)
        w = np.concatenate(wts, axis=1)
        order = np.argsort(v, axis=1, kind="stable")
        v = np.take_along_axis(v, order, axis=1)
        w = np.take_along_axis(w, order, axis=1)
        cum = np.cumsum(w, axis=1)
        c = (cum - w / 2) / cum[:, -1:]
        return v, c

    def quantiles(self, q) -> np.ndarray:
        """[depth] for scalar q, else [depth, len(q)]."""
        if self.count == 0:
            raise ValueError("quantiles() before any add()")
        v, c = self._weighted()
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        out = np.stack([np.interp(qs, c[u], v[u]) for u in range(self.depth)])
        return out[:, 0] if np.ndim(q) == 0 else out

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Estimated CDF at x [depth, K]: interp(x, values, c) clipped to [0, 1]."""
        v, c = self._weighted()
        x = np.asarray(x, dtype=np.float64)
        return np.clip(np.stack([np.interp(x[u], v[u], c[u]) for u in range(self.depth)]), 0, 1)

    def stored(self) -> int:
        """Samples held per channel (the sketch's memory, in values)."""
        return int(sum(self.fill))
