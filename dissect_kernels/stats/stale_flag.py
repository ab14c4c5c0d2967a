"""NetDissect-Lite's stale category flag, reproduced on request (Convention.stale_category_flag).

NDL walks images in dataset order and, inside each image, units in order. For a unit whose
map maximum exceeds its threshold it builds a fresh vector of category flags from the labels
under the unit's active pixels (plus the image's image-level categories) and adds the unit's
active-pixel count to the union of every flagged category. On an image that has no pixel
labels at all, it does not build a fresh vector: it adds the image-level categories into the
vector left over from the last unit that had one, and uses that. The leftover vector keeps
growing until an image with pixel labels replaces it (before any, NDL stops with an error;
here it starts empty).

`stale_touched` turns a batch's per-image flags (TallyResult.touched) into the flags NDL uses,
carrying the leftover vector from batch to batch. An image "has pixel labels" when any of its
label layers holds a non-zero id (an image whose label PNGs are entirely 0 counts as without)."""
from __future__ import annotations

import torch


def stale_touched(result, thresholds: torch.Tensor, labels: torch.Tensor,
                  image_labels: torch.Tensor | None, category_of: torch.Tensor, num_categories: int,
                  state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flags [B, U, K] uint8, new state [K] bool) for one batch, in NDL's loop order.
    result: the batch's TallyResult (touched, max); thresholds: the fp32 strict thresholds the
    tally compared with; state: the leftover flags before this batch."""
    B, U, K = result.touched.shape
    dev = result.touched.device
    fired = (result.max > thresholds[None, :]).cpu()                 # NDL builds a mask at all
    has_pixels = (labels.reshape(B, -1) > 0).any(1).cpu()
    image_cats = torch.zeros(B, K, dtype=torch.bool)
    if image_labels is not None and image_labels.numel():
        ids = image_labels.long().cpu()
        cats = category_of.long().cpu()[ids.clamp(min=0)]
        image_cats = (torch.nn.functional.one_hot(cats, K).bool() & (ids > 0)[..., None]).any(1)
    flags = result.touched.bool().cpu() | image_cats[:, None, :]     # fresh vectors
    state = state.cpu().clone()
    for b in range(B):
        units = torch.nonzero(fired[b]).flatten()
        if units.numel() == 0:
            continue
        if has_pixels[b]:
            state = flags[b, int(units[-1])].clone()
        else:
            state |= image_cats[b]
            flags[b] = state
    return flags.to(dev, torch.uint8), state.to(dev)
