"""A minimal KLL-style running quantile in the manner of the references' RunningQuantile /
QuantileVector (REFERENCE-CONVENTIONS.md §1), written from that description: the baseline the
tail sketch is benchmarked against (throughput and rank error at R = 6144)."""
from __future__ import annotations

import math

import numpy as np
import torch


class KLLReference:
    """Per-channel KLL levels of capacity ~R*0.67^L (multiple of 8, >= buffersize); level i
    samples weigh 2^i; compaction = sort, fair coin, keep every second element."""

    def __init__(self, depth: int, resolution: int = 6144, buffersize: int = 128, seed: int = 1,
                 device=None):
        self.depth, self.resolution, self.buffersize = depth, resolution, buffersize
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.data = [torch.zeros(depth, resolution, device=self.device)]
        self.firstfree = [0]
        self.samplerate = 1.0
        self.extremes = None
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)

    def _coin(self) -> int:
        return int(torch.randint(0, 2, (1,), generator=self.gen))

    def add(self, incoming: torch.Tensor) -> None:
        """Add rows incoming [N, depth]."""
        self.count += incoming.shape[0]
        x = incoming.to(self.device, torch.float32)
        if self.samplerate < 1.0:
            keep = torch.rand(x.shape[0], generator=self.gen) < self.samplerate
            x = x[keep.to(self.device)]
        x = x.t()
        index, n = 0, x.shape[1]
        while index < n:
            free = self.data[0].shape[1] - self.firstfree[0]
            if free == 0:
                if not self._shift():
                    rest = x[:, index:]
                    keep = torch.rand(rest.shape[1], generator=self.gen) < 0.5
                    x, index, n = rest[:, keep.to(self.device)], 0, int(keep.sum())
                continue
            take = min(free, n - index)
            ff = self.firstfree[0]
            self.data[0][:, ff:ff + take] = x[:, index:index + take]
            self.firstfree[0] += take
            index += take

    def _room_needed(self, level: int) -> int:
        return 1 if level == 0 else -(-self.data[level - 1].shape[1] // 2)

    def _shift(self) -> bool:
        index = 0
        while self.data[index].shape[1] - self.firstfree[index] < self._room_needed(index):
            if index + 1 >= len(self.data):
                return self._expand()
            index += 1
        for level in reversed(range(index)):
            data = self.data[level][:, :self.firstfree[level]].sort(1).values
            if level == 0:
                lo, hi = data[:, 0], data[:, -1]
                if self.extremes is None:
                    self.extremes = torch.stack([lo, hi], 1)
                else:
                    self.extremes = torch.stack([torch.minimum(lo, self.extremes[:, 0]),
                                                 torch.maximum(hi, self.extremes[:, 1])], 1)
            subset = data[:, self._coin()::2]
            pos = self.firstfree[level + 1]
            self.data[level + 1][:, pos:pos + subset.shape[1]] = subset
            self.firstfree[level + 1] += subset.shape[1]
            self.firstfree[level] = 0
        return True

    def _next_capacity(self) -> int:
        cap = math.ceil(self.resolution * 0.67 ** len(self.data))
        if cap < 2:
            return 0
        return max(self.buffersize, -(-cap // 8) * 8)

    def _expand(self) -> bool:
        cap = self._next_capacity()
        if cap == 0:
            self.samplerate /= 2
            for j in range(len(self.data)):
                self._scrunch(j)
            return False
        self.data.insert(0, torch.zeros(self.depth, cap, device=self.device))
        self.firstfree.insert(0, 0)
        for j in range(1, len(self.data)):
            n = self.firstfree[j]
            if n == 0:
                continue
            room = self.data[j - 1].shape[1] - n
            need = -(-self.data[j - 2].shape[1] // 2) if j >= 2 else 1
            if self.firstfree[j - 1] == 0 and room >= need:
                self.data[j - 1][:, :n] = self.data[j][:, :n]
                self.firstfree[j - 1], self.firstfree[j] = n, 0
            else:
                self._scrunch(j)
        return True

    def _scrunch(self, j: int) -> None:
        data = self.data[j][:, :self.firstfree[j]].sort(1).values
        subset = data[:, self._coin()::2]
        self.data[j][:, :subset.shape[1]] = subset
        self.firstfree[j] = subset.shape[1]

    def _summary(self):
        vals, wts = [], []
        for i, (d, ff) in enumerate(zip(self.data, self.firstfree)):
            if ff:
                vals.append(d[:, :ff])
                wts.append(torch.full((ff,), 2.0 ** i, device=self.device))
        if self.extremes is not None:
            vals.append(self.extremes)
            wts.append(torch.zeros(2, device=self.device))
        v, w = torch.cat(vals, 1), torch.cat(wts)
        order = v.sort(1).indices
        return v.gather(1, order).cpu().numpy(), w[order].cpu().numpy()

    def quantiles(self, q) -> torch.Tensor:
        """[depth, len(q)] by linear interpolation of the weighted positions, channel by channel."""
        v, w = self._summary()
        q = np.asarray(q, dtype=np.float64)
        out = np.empty((self.depth, q.size))
        for c in range(self.depth):
            cw = np.cumsum(w[c])
            pos = (cw - w[c] / 2) / cw[-1]
            out[c] = np.interp(q, pos, v[c])
        return torch.from_numpy(out)
