"""dk.label_stats: the label side of the IoU tally (truth pixels per image and concept, category
presence per image) as a vectorised bincount that runs on any device."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks, _library

BACKENDS = ("torch", "reference")


@dataclass
class LabelStats:
    """Label-side counts for one batch. pixels [B, C] int64: pixels of concept c in image b
    (concept 0 is 0); present [B, K] bool or None: image b has a label of category k;
    image_pixels: H*W of the label maps."""

    pixels: torch.Tensor
    present: torch.Tensor | None
    image_pixels: int

    @staticmethod
    def empty(B: int, C: int, K: int | None, image_pixels: int, device) -> "LabelStats":
        return LabelStats(torch.empty(B, C, dtype=torch.int64, device=device),
                          None if K is None else torch.empty(B, K, dtype=torch.bool, device=device),
                          image_pixels)


def label_stats(labels: torch.Tensor, image_labels: torch.Tensor | None = None, *,
                num_concepts: int, category_of: torch.Tensor | None = None,
                num_categories: int | None = None, per_layer: bool = False,
                backend: str = "auto") -> LabelStats:
    """Per image: pixel count of every concept and presence of every category.

    labels [B, L, H, W] or [B, H, W] int ids in [0, num_concepts), 0 = unlabelled; image_labels
    [B, M] int (each nonzero id covers the whole image; 0 = padding) or None. A pixel holding c in
    several layers counts once (any layer) unless per_layer, which counts every layer (and
    every image-level entry) separately, as NetDissect does. category_of [C] maps concepts to
    categories in [0, num_categories) and asks for `present`.
    """
    labels, image_labels, category_of = _checks.label_inputs(labels, image_labels, category_of)
    _checks.same_device(labels=labels, image_labels=image_labels, category_of=category_of)
    B, L, H, W = labels.shape
    if not isinstance(num_concepts, int) or num_concepts < 1:
        raise ValueError(f"num_concepts must be a positive int, got {num_concepts!r}")
    if image_labels is not None and image_labels.shape[0] != B:
        raise ValueError(f"image_labels has batch size {image_labels.shape[0]} but labels has {B}")
    if min(B, L, H, W) == 0:
        raise ValueError(f"empty input: labels {tuple(labels.shape)}")
    K = None
    if category_of is not None:
        if category_of.shape[0] != num_concepts:
            raise ValueError(f"category_of has {category_of.shape[0]} entries, expected num_concepts={num_concepts}")
        if num_categories is not None:
            K = int(num_categories)
        elif torch.compiler.is_compiling():
            raise ValueError("under torch.compile / torch.export pass num_categories with category_of")
        else:
            K = int(category_of.max()) + 1
    elif num_categories is not None:
        raise ValueError("num_categories was given without category_of")
    _native.check_name(backend, BACKENDS)
    pixels, present = torch.ops.dissect_kernels.label_stats(
        labels, image_labels, category_of, num_concepts, K or 0, per_layer, backend)
    return LabelStats(pixels, None if K is None else present, H * W)


def _label_stats_impl(labels, image_labels, category_of, num_concepts, num_categories,
                      per_layer, backend):
    """torch.ops.dissect_kernels.label_stats: value checks, backend choice, fresh outputs."""
    _checks.ids_in_range("labels", labels, num_concepts)
    _checks.ids_in_range("image_labels", image_labels, num_concepts)
    K = num_categories if category_of is not None else None
    if K is not None:
        _checks.ids_in_range("category_of", category_of, K, "num_categories")
    name = _native.resolve(backend, labels.device, BACKENDS)
    B, _, H, W = labels.shape
    out = LabelStats.empty(B, num_concepts, K, H * W, labels.device)
    label_stats_into(name, labels, image_labels, num_concepts, per_layer, category_of, out)
    present = out.present if K is not None else labels.new_empty((B, 0), dtype=torch.bool)
    return out.pixels, present


def _label_stats_fake(labels, image_labels, category_of, num_concepts, num_categories,
                      per_layer, backend):
    B = labels.shape[0]
    K = num_categories if category_of is not None else 0
    return (labels.new_empty((B, num_concepts), dtype=torch.int64),
            labels.new_empty((B, K), dtype=torch.bool))


_library.define("label_stats(Tensor labels, Tensor? image_labels, Tensor? category_of, "
                "int num_concepts, int num_categories, bool per_layer, str backend) -> (Tensor, Tensor)",
                _label_stats_impl, _label_stats_fake)


def label_stats_into(backend: str, labels, image_labels, num_concepts: int, per_layer: bool,
                     category_of, out: LabelStats) -> None:
    """Run one backend on validated inputs (labels [B, L, H, W]), writing `out`'s buffers.
    Tests call this to poison the outputs first."""
    if backend == "reference":
        from dissect_kernels.reference.label_stats import label_stats_into as run
    else:
        run = _torch_label_stats_into
    run(labels, image_labels, num_concepts, per_layer, category_of, out)


def count_ids(ids: torch.Tensor, num: int, dedup: bool) -> torch.Tensor:
    """ids [B, L, P] int -> int64 [B, num]: how many of the L*P entries of each row hold each
    id; with dedup, an id repeated across the L layers of one position counts once."""
    B, L, P = ids.shape
    ids = ids.long()
    if dedup and L > 1:
        # an entry repeating an earlier layer's id at the same position goes to an overflow bin
        # (L(L-1)/2 compares: far cheaper than sorting along a short middle axis)
        repeat = torch.zeros_like(ids, dtype=torch.bool)
        for i in range(1, L):
            for j in range(i):
                repeat[:, i] |= ids[:, i] == ids[:, j]
        ids = torch.where(repeat, num, ids)
    offset = torch.arange(B, device=ids.device)[:, None, None] * (num + 1)
    flat = (ids + offset).reshape(-1)
    return torch.bincount(flat, minlength=B * (num + 1)).reshape(B, num + 1)[:, :num]


def _torch_label_stats_into(labels, image_labels, num_concepts, per_layer, category_of,
                            out: LabelStats) -> None:
    B, L, H, W = labels.shape
    HW = H * W
    pixels = count_ids(labels.reshape(B, L, HW), num_concepts, dedup=not per_layer)
    if image_labels is not None and image_labels.shape[1] > 0:
        listed = count_ids(image_labels[:, :, None], num_concepts, dedup=False)  # [B, C] entries
        if per_layer:
            pixels += listed * HW
        else:
            pixels = torch.where(listed > 0, HW, pixels)  # an image-level label covers every pixel
    pixels[:, 0] = 0
    out.pixels.copy_(pixels)
    if out.present is not None:
        K = out.present.shape[1]
        hits = torch.zeros(B, K, dtype=torch.int64, device=labels.device)
        hits.index_add_(1, category_of.long(), (pixels > 0).long())
        out.present.copy_(hits > 0)
