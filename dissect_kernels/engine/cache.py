"""The activation cache: what the first model-running pass captured, kept per batch, so that a
later pass over the same source reads it instead of decoding images and running the model again
(dissection's pass 2 then costs its statistics and the labels' decoding only).

Bounded by `max_bytes`: a pass whose captures would not fit drops the cache, and later passes
run the model as if there were none. The cached tensors are the captured ones, dtype included,
so results are bit-identical with and without the cache. A resumed run starts with an empty
cache (it lives in memory)."""
from __future__ import annotations

import os

import torch

DEFAULT_FRACTION = 0.25          # of the machine's memory, at most DEFAULT_MAX


def default_max_bytes() -> int:
    """A quarter of physical memory, capped at 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(total * DEFAULT_FRACTION, 8 << 30))


class ActivationCache:
    """Per batch index: (sample indices, {view: map}, {field: tensor}) from one pass."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.batches: dict[int, tuple | None] = {}
        self.bytes = 0
        self.views: set[str] = set()              # what every batch holds, once complete
        self.fields: set[str] = set()
        self.complete = False
        self.dropped = self.max_bytes <= 0

    def covers(self, views, fields) -> bool:
        """Whether a pass that reads `views` and the annotated `fields` can run from the cache."""
        return self.complete and not self.dropped and set(views) <= self.views and \
            set(fields) <= self.fields

    def start(self, views) -> bool:
        """Begin filling from batch 0 of a model-running pass; False when the cache is off."""
        if self.dropped or self.complete:
            return False
        self.batches, self.bytes = {}, 0
        self.views, self.fields = set(views), None
        return True

    def put(self, b: int, indices: torch.Tensor, acts: dict, fields: dict) -> None:
        """Keep batch b (None-free batches only); drop everything once over budget."""
        if self.dropped:
            return
        size = sum(t.numel() * t.element_size() for t in list(acts.values()) + list(fields.values()))
        if self.bytes + size > self.max_bytes:
            self.drop()
            return
        self.bytes += size
        self.fields = set(fields) if self.fields is None else self.fields & set(fields)
        self.batches[b] = (indices.clone(), {k: _own(v) for k, v in acts.items()},
                           {k: _own(v) for k, v in fields.items()})

    def skip(self, b: int) -> None:
        """Batch b had no usable sample."""
        if not self.dropped:
            self.batches[b] = None

    def finish(self, num_batches: int) -> None:
        """The filling pass saw every batch: later passes may read the cache."""
        self.complete = not self.dropped and len(self.batches) == num_batches
        self.fields = self.fields or set()

    def drop(self) -> None:
        self.batches, self.bytes, self.dropped, self.complete = {}, 0, True, False

    def get(self, b: int, indices: torch.Tensor):
        """(acts, fields) of batch b, or None when the cache does not hold these samples."""
        entry = self.batches.get(b)
        if entry is None or not torch.equal(entry[0], indices):
            return None
        return entry[1], entry[2]


def _own(t):
    """A cached tensor that owns its memory (a strided view into a bigger output would keep the
    whole output alive; its layout is kept)."""
    if not isinstance(t, torch.Tensor):
        return t
    return t.clone(memory_format=torch.preserve_format) if t.untyped_storage().nbytes() > \
        t.numel() * t.element_size() else t
