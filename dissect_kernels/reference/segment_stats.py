"""Oracle for segment_stats: loop over samples and classes, compare, count."""
from __future__ import annotations


def segment_stats_into(segmentation, num_classes, out) -> None:
    """Fill `out` [B, num_classes]: pixels where any layer holds class k (class 0 included)."""
    B = segmentation.shape[0]
    for b in range(B):
        for k in range(num_classes):
            out[b, k] = int((segmentation[b] == k).any(dim=0).sum())
