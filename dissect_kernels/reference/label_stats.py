"""Oracle for label_stats: loop over images and concepts, compare, count."""
from __future__ import annotations

import torch


def label_stats_into(labels, image_labels, num_concepts, per_layer, category_of, out) -> None:
    """Fill `out` (a LabelStats) with obvious per-image, per-concept loops."""
    B, L, H, W = labels.shape
    for b in range(B):
        listed = [] if image_labels is None else [int(v) for v in image_labels[b]]
        for c in range(num_concepts):
            if c == 0:
                out.pixels[b, c] = 0
                continue
            hits = labels[b] == c                             # [L, H, W]
            if per_layer:
                n = int(hits.sum()) + listed.count(c) * H * W
            else:
                n = H * W if c in listed else int(hits.any(dim=0).sum())
            out.pixels[b, c] = n
        if out.present is not None:
            for k in range(out.present.shape[1]):
                out.present[b, k] = any(int(category_of[c]) == k and int(out.pixels[b, c]) > 0
                                        for c in range(1, num_concepts))

