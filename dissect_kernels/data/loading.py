"""Batches for the drivers: collates dataset items, counts and skips corrupt samples, and applies
a convention's category filter (NetDissect-Lite drops material and images left with no labels)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dissect_kernels.data.errors import CorruptSampleError


@dataclass
class Batch:
    images: torch.Tensor | None        # [B, 3, S, S] (None when not decoded)
    labels: torch.Tensor | None        # [B, L, H, W] int32 (None when not decoded)
    image_labels: torch.Tensor | None  # [B, M] int32 or None
    indices: torch.Tensor              # [B] int64 dataset indices


class _Guarded(Dataset):
    """Returns ("skip", index, reason) instead of raising for a corrupt sample; decodes only
    `fields` (and images as uint8) when the dataset can (an `item(i, fields, uint8)` method)."""

    def __init__(self, dataset, fields=("image", "labels"), uint8: bool = False):
        self.dataset, self.fields, self.uint8 = dataset, tuple(fields), uint8

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return _fetch(self.dataset, i, self.fields, self.uint8)
        except CorruptSampleError as err:
            return ("skip", i, str(err), err.reason)


def can_select(dataset) -> bool:
    """Whether the dataset (or the dataset under a Subset) decodes fields on request."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return callable(getattr(dataset, "item", None))


def _fetch(dataset, i: int, fields, uint8: bool):
    while isinstance(dataset, Subset):
        dataset, i = dataset.dataset, dataset.indices[i]
    if callable(getattr(dataset, "item", None)):
        return dataset.item(i, fields, uint8)
    return dataset[i]


def _split(items):
    """Collate: (good items, [(index, message, reason)] of skipped ones)."""
    good, bad = [], []
    for item in items:
        if isinstance(item, tuple) and item and item[0] == "skip":
            bad.append((int(item[1]), item[2], item[3]))
        else:
            good.append(item)
    return good, bad


class SampleLoader:
    """Iterable of Batch over a Broden-style dataset; `skipped` maps index -> message and
    `reasons` index -> reason (strict=True: the first unreadable sample stops the run)."""

    def __init__(self, dataset, *, batch_size: int = 32, num_workers: int = 0,
                 drop_categories: tuple[str, ...] = (), meta=None, pin_memory: bool = False,
                 strict: bool = False):
        """`meta` supplies concept/category attributes when `dataset` is a Subset of it."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        meta = dataset if meta is None else meta
        self.dataset = dataset
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.num_concepts = int(meta.num_concepts)
        self.num_categories = int(meta.num_categories)
        self.category_of = torch.as_tensor(meta.category_of, dtype=torch.int64)
        names = list(meta.category_names)
        self.keep = torch.ones(self.num_concepts, dtype=torch.bool)
        for k in [names.index(c) for c in drop_categories if c in names]:
            self.keep &= self.category_of != k
        self.filtering = not bool(self.keep[1:].all())
        self.keep[0] = False
        self.skipped: dict[int, str] = {}          # index -> message
        self.reasons: dict[int, str] = {}          # index -> reason ("missing", "too large", ...)
        self.filtered: set[int] = set()
        self.strict = strict
        self.shapes: dict[str, tuple] = {}   # first shape seen per field (labels: H, W fixed)

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)

    def iterate(self, start_batch: int = 0, fields=("image", "labels"), uint8: bool = False):
        """Batches from `start_batch` on (None for a batch with no usable sample), so a resumed
        pass lines up with the batches it already counted. `fields` and `uint8`: see _Guarded
        (the category filter always reads the labels)."""
        if self.filtering and "labels" not in fields:
            fields = tuple(fields) + ("labels",)
        rest = range(start_batch * self.batch_size, len(self.dataset))
        loader = DataLoader(Subset(_Guarded(self.dataset, fields, uint8), rest), batch_size=self.batch_size,
                            shuffle=False, num_workers=self.num_workers, collate_fn=_split,
                            pin_memory=self.pin_memory)
        for items, bad in loader:
            if bad and self.strict:
                index, message, _ = bad[0]
                raise CorruptSampleError("sample", f"{message} (strict: the run stops at the first bad "
                                                   "sample)", index)
            for index, message, reason in bad:
                self.skipped[index], self.reasons[index] = message, reason
            yield self._stack(items)

    def __iter__(self):
        return (b for b in self.iterate() if b is not None)

    def _stack(self, items) -> Batch | None:
        if not items:
            return None
        indices = torch.tensor([int(it["index"]) for it in items], dtype=torch.int64)
        images = self._gather(items, "image", None, indices) if "image" in items[0] else None
        if "labels" not in items[0]:
            return Batch(images, None, None, indices)
        labels = self._gather(items, "labels", 3, indices)
        image_labels = self._gather(items, "image_labels", 1, indices)
        for name, ids in (("labels", labels), ("image_labels", image_labels)):
            self._check_ids(name, ids, indices)
        labels = labels.to(torch.int32)
        image_labels = image_labels.to(torch.int32) if image_labels.shape[1] else None
        if self.filtering:
            labels, image_labels, rows = self._filter(labels, image_labels)
            self.filtered.update(indices[~rows].tolist())
            if not bool(rows.any()):
                return None
            images = None if images is None else images[rows]
            labels, indices = labels[rows], indices[rows]
            image_labels = None if image_labels is None else image_labels[rows]
        return Batch(images, labels, image_labels, indices)

    # across batches: label maps keep their H, W and images their whole shape (the activation
    # maps and the upsampling tables are sized once); label layers L and image-label slots M
    # only have to agree within a batch
    _FIXED = {"labels": slice(-2, None), "image": slice(None), "image_labels": slice(0, 0)}

    def _gather(self, items, key: str, ndim: int | None, indices) -> torch.Tensor:
        """Stack one field of the items; errors name the image index and what was expected."""
        parts = [torch.as_tensor(it[key]) for it in items]
        first = tuple(parts[0].shape)
        seen = self.shapes.setdefault(key, first)
        for i, t in enumerate(parts):
            where, shape = f"image {int(indices[i])}: {key}", tuple(t.shape)
            if ndim is not None and (t.dtype.is_floating_point or t.dtype.is_complex
                                     or t.dtype == torch.bool):
                raise TypeError(f"{where} must hold integer concept ids, got dtype "
                                f"{str(t.dtype).replace('torch.', '')}")
            if ndim is not None and t.dim() != ndim:
                raise ValueError(f"{where} must have {ndim} dimensions, got shape {shape}")
            fixed = self._FIXED[key]
            if shape[fixed] != seen[fixed]:
                raise ValueError(f"{where} has shape {shape} but earlier images' have shape "
                                 f"{seen}: every sample's {key} must have one shape")
            if shape != first:
                raise ValueError(f"{where} has shape {shape} but image {int(indices[0])}'s has "
                                 f"shape {first}: every sample's {key} must have one shape")
        return torch.stack(parts)

    def _check_ids(self, name: str, ids: torch.Tensor, indices) -> None:
        """Concept ids must lie in [0, num_concepts); the error names the first bad image."""
        if ids.numel() == 0:
            return
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo >= 0 and hi < self.num_concepts:
            return
        bad = ((ids < 0) | (ids >= self.num_concepts)).flatten(1).any(1)
        row = int(bad.nonzero()[0])
        lo, hi = (int(v) for v in torch.aminmax(ids[row]))
        raise ValueError(f"image {int(indices[row])}: {name} hold ids in [{lo}, {hi}] but concept "
                         f"ids must lie in [0, {self.num_concepts}) (num_concepts="
                         f"{self.num_concepts})")

    def _filter(self, labels, image_labels):
        """Zero labels of dropped categories; keep images that still have some label."""
        labels = labels * self.keep[labels.long()]
        has = labels.flatten(1).any(1)
        if image_labels is not None:
            image_labels = image_labels * self.keep[image_labels.long()]
            has |= image_labels.any(1)
        return labels, image_labels, has
