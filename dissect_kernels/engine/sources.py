"""Where a pass's batches come from. A source knows its length, hands out batches from a given
batch on (so a resumed pass lines up with what it already counted), takes its shard of the data
for a rank, and counts the samples it skipped (by reason).

- DatasetSource: a labelled (Broden-style) dataset through the skip-counting SampleLoader;
- IndexSource: sample indices 0..N-1 turned into inputs by a function (a generator's z);
- LoaderSource: any iterable of batches (a user's DataLoader), converted by a function."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import Subset

from dissect_kernels import distributed as ddp
from dissect_kernels.data.loading import can_select


@dataclass
class Batch:
    """Model inputs, dataset indices [B] (int64) and named extra fields (labels, targets...)."""

    inputs: Any
    indices: torch.Tensor
    data: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Any], Any] | None = None     # on the device: e.g. uint8 -> normalised float

    def __len__(self) -> int:
        return int(self.indices.shape[0])


FILTERED = "no labels in the convention's categories"


class DatasetSource:
    """Batches of a map-style labelled dataset: images, labels, image_labels, indices. Corrupt
    samples are skipped and counted; a convention's dropped categories are filtered."""

    def __init__(self, dataset, *, batch_size: int = 32, num_workers: int | None = None,
                 drop_categories: tuple[str, ...] = (), meta=None, pin_memory: bool = False,
                 strict: bool = False):
        """num_workers None: decoding worker processes for datasets read from files (one less
        than the cores this process may use, at most 4), none for in-memory datasets."""
        from dissect_kernels.data.loading import SampleLoader
        self.dataset, self.meta = dataset, meta if meta is not None else dataset
        if num_workers is None:
            num_workers = default_workers() if can_select(dataset) else 0
        self.options = dict(batch_size=batch_size, num_workers=num_workers,
                            drop_categories=drop_categories, pin_memory=pin_memory, strict=strict)
        self.loader = SampleLoader(dataset, meta=self.meta, **self.options)
        self.normalization = getattr(self.meta, "normalization", None)

    def shard(self, rank: int, world: int) -> "DatasetSource":
        if world == 1:
            return self
        part = Subset(self.dataset, ddp.shard_indices(len(self.dataset), rank, world))
        return DatasetSource(part, meta=self.meta, **self.options)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def batches(self, start: int, fields=("image", "labels")) -> Iterator[Batch | None]:
        """Batches from `start` on, decoding only `fields` ("image", "labels"); images come as
        uint8 and are normalised on the model's device when the dataset allows it."""
        uint8 = "image" in fields and self.normalization is not None and can_select(self.dataset)
        for b in self.loader.iterate(start_batch=start, fields=fields, uint8=uint8):
            if b is None:
                yield None
                continue
            data = {} if b.labels is None else {"labels": b.labels, "image_labels": b.image_labels}
            yield Batch(b.images, b.indices, data, self._normalize if uint8 else None)

    def probe(self) -> Batch:
        """The first readable sample (decoded in this process) to learn the layers' shapes from;
        a source with none fails here, before any pass, with what was skipped and why."""
        first = DatasetSource(self.dataset, meta=self.meta, batch_size=1, num_workers=0)
        batch = next((b for b in first.batches(0, fields=("image",)) if b is not None), None)
        if batch is None:
            skips = first.skips()
            counts = "; ".join(f"{len(items)} {reason}" for reason, items in skips.items() if items)
            message = next((m for items in skips.values() for m in items.values()), "none")
            raise ValueError(f"no readable samples: every sample was skipped "
                             f"({counts or 'the source is empty'}; the first: {message})")
        return batch

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> (x / 255 - mean) / std, the dataset's own transform, batched
        (elementwise, so the same bits as per image)."""
        mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
                     for v in self.normalization)
        return (x.float().div_(255.0) - mean) / std

    def skips(self) -> dict[str, dict[int, str]]:
        """{reason: {index: message}}: unreadable samples by reason, and the filtered ones."""
        out: dict[str, dict[int, str]] = {}
        for i, message in self.loader.skipped.items():
            out.setdefault(self.loader.reasons.get(i, "unreadable"), {})[i] = message
        out[FILTERED] = {i: "filtered" for i in sorted(self.loader.filtered)}
        return out

    def restore_skips(self, skips: dict[str, dict[int, str]]) -> None:
        for reason, items in skips.items():
            if reason == FILTERED:
                self.loader.filtered.update(items)
                continue
            self.loader.skipped.update(items)
            self.loader.reasons.update({i: reason for i in items})


def default_workers() -> int:
    """One less than the cores this process may run on, at most 4 (0 on one core)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


class IndexSource:
    """Sample indices (a range or a list) in batches; `make_inputs(indices)` builds the model's
    inputs (e.g. z vectors that depend only on the index). Batches are built lazily: O(batch)
    memory for any number of samples."""

    def __init__(self, samples: "int | range | Iterable[int]", make_inputs: Callable, *,
                 batch_size: int = 32):
        samples = range(samples) if isinstance(samples, int) else samples
        if not (isinstance(samples, range) and samples.step == 1):
            samples = torch.as_tensor(list(samples), dtype=torch.int64)
        self.samples, self.make_inputs, self.batch_size = samples, make_inputs, int(batch_size)

    def shard(self, rank: int, world: int) -> "IndexSource":
        if world == 1:
            return self
        n = len(self.samples)
        part = self.samples[n * rank // world: n * (rank + 1) // world]
        return IndexSource(part, self.make_inputs, batch_size=self.batch_size)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def batches(self, start: int, fields=None) -> Iterator[Batch]:
        for s in range(start * self.batch_size, len(self.samples), self.batch_size):
            part = self.samples[s:s + self.batch_size]
            idx = torch.arange(part.start, part.stop) if isinstance(part, range) else part
            yield Batch(self.make_inputs(idx), idx)

    def skips(self) -> dict[str, dict[int, str]]:
        return {}

    def restore_skips(self, skips) -> None:
        pass


class LoaderSource:
    """Batches of any re-iterable loader (e.g. a DataLoader); `convert(item)` returns
    (inputs, data fields). Indices count samples in loader order. The caller shards the loader
    itself (shard() keeps it whole); a resume skips the batches already counted by iterating
    past them, so the loader must yield the same batches in the same order every time."""

    def __init__(self, loader, convert: Callable[[Any], tuple[Any, dict]]):
        self.loader, self.convert = loader, convert

    def shard(self, rank: int, world: int) -> "LoaderSource":
        return self

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            return 0

    @property
    def num_samples(self) -> int:
        ds = getattr(self.loader, "dataset", None)
        try:
            return len(ds) if ds is not None else 0
        except TypeError:
            return 0

    def batches(self, start: int, fields=None) -> Iterator[Batch]:
        seen = 0
        for i, item in enumerate(self.loader):
            inputs, data = self.convert(item)
            B = _rows(inputs)
            if i >= start:
                yield Batch(inputs, torch.arange(seen, seen + B), data)
            seen += B

    def skips(self) -> dict[str, dict[int, str]]:
        return {}

    def restore_skips(self, skips) -> None:
        pass


def _rows(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    first = next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
    return int(first.shape[0])
