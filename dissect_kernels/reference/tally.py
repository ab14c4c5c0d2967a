"""Oracle for tally: materialise the upsampled maps and the one-hot label planes, then count."""
from __future__ import annotations

import torch

from dissect_kernels.reference.upsample import upsample  # noqa: F401  (re-exported: tests import it here)


def concept_planes(labels: torch.Tensor, image_labels: torch.Tensor | None, num_concepts: int,
                   per_layer: bool) -> torch.Tensor:
    """float64 [B, C, H*W]: how often concept c is at each pixel (0/1 when not per_layer).
    Image-level labels cover every pixel; concept 0 is "none" and is zeroed."""
    B, L, H, W = labels.shape
    layers = labels.reshape(B, L, H * W).long()
    if image_labels is not None and image_labels.shape[1] > 0:
        whole = image_labels.long()[:, :, None].expand(B, image_labels.shape[1], H * W)
        layers = torch.cat([layers, whole], dim=1)
    planes = torch.zeros(B, num_concepts, H * W, dtype=torch.float64, device=labels.device)
    planes.scatter_add_(1, layers, torch.ones_like(layers, dtype=torch.float64))
    planes[:, 0] = 0
    return planes if per_layer else (planes > 0).double()


def tally_into(acts, thresholds, labels, image_labels, ytab, xtab, num_concepts, per_layer,
               category_of, num_categories, out) -> None:
    """Fill `out` (a TallyResult): intersection +=, active/max/touched written."""
    B, U = acts.shape[:2]
    up = upsample(acts, ytab, xtab)
    mask = (up > thresholds.float()[None, :, None, None]).reshape(B, U, -1).double()
    planes = concept_planes(labels, image_labels, num_concepts, per_layer)
    out.intersection += torch.einsum("bup,bcp->uc", mask, planes).round().long()
    out.active.copy_(mask.sum(2).long())
    out.max.copy_(acts.float().amax(dim=(2, 3)))
    if out.touched is not None:
        onehot_cat = torch.zeros(num_concepts, num_categories, dtype=torch.float64, device=acts.device)
        onehot_cat[torch.arange(num_concepts), category_of.long()] = 1
        category_planes = torch.einsum("bcp,ck->bkp", (planes > 0).double(), onehot_cat)
        out.touched.copy_((torch.einsum("bup,bkp->buk", mask, category_planes) > 0).to(torch.uint8))
