"""dk.segment_stats: per-sample class pixel counts of segmentation maps (for ACE and for
generated-vs-real class statistics)."""
from __future__ import annotations

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks
from dissect_kernels.ops.label_stats import count_ids

BACKENDS = ("torch", "reference")


def segment_stats(segmentation: torch.Tensor, num_classes: int, *,
                  backend: str = "auto") -> torch.Tensor:
    """segmentation [B, H, W] or [B, L, H, W] int class ids in [0, num_classes) -> int64
    [B, num_classes]: pixels of each class per sample. With several layers a pixel counts once
    per class it holds in any layer. Unlike label_stats, class 0 is counted: it is a real
    segmenter class (e.g. background / unlabelled area), and ACE measures changes in it too.
    (With zero-padded extra layers, class 0 therefore counts every pixel some layer leaves empty.)
    """
    segmentation = _checks.tensor("segmentation", segmentation, ndim=(3, 4), dtypes=_checks.INT_DTYPES)
    if segmentation.dim() == 3:
        segmentation = segmentation[:, None]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if segmentation.shape[0] == 0 or min(segmentation.shape[1:]) == 0:
        raise ValueError(f"empty input: segmentation {tuple(segmentation.shape)}")
    _checks.ids_in_range("segmentation", segmentation, num_classes, "num_classes")
    name = _native.resolve(backend, segmentation.device, BACKENDS)
    out = torch.empty(segmentation.shape[0], num_classes, dtype=torch.int64,
                      device=segmentation.device)
    segment_stats_into(name, segmentation, num_classes, out)
    return out


def segment_stats_into(backend: str, segmentation, num_classes: int, out: torch.Tensor) -> None:
    """Run one backend on a validated [B, L, H, W] map, writing `out` (tests poison it first)."""
    if backend == "reference":
        from dissect_kernels.reference.segment_stats import segment_stats_into as run
        run(segmentation, num_classes, out)
        return
    B, L = segmentation.shape[:2]
    out.copy_(count_ids(segmentation.reshape(B, L, -1), num_classes, dedup=True))
