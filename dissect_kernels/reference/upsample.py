"""Oracle for upsample: the tally's bilinear resampling written as plain tensor indexing."""
from __future__ import annotations

import torch

from dissect_kernels.geometry import AxisTable


def upsample(acts: torch.Tensor, ytab: AxisTable, xtab: AxisTable) -> torch.Tensor:
    """[B, U, h, w] -> float32 [B, U, H, W], in the kernels' exact fp32 order:
    horizontal taps on the two source rows, then the vertical blend (tally.h's formula)."""
    a = acts.float()

    def horizontal(rows: torch.Tensor) -> torch.Tensor:
        return rows[..., xtab.i0.long()] * xtab.w0 + rows[..., xtab.i1.long()] * xtab.w1

    r0 = horizontal(a[:, :, ytab.i0.long(), :])
    r1 = horizontal(a[:, :, ytab.i1.long(), :])
    return r0 * ytab.w0[:, None] + r1 * ytab.w1[:, None]


def upsample_into(acts: torch.Tensor, ytab: AxisTable, xtab: AxisTable, out: torch.Tensor) -> None:
    """Write upsample(acts) into `out` (float32 [B, U, H, W])."""
    out.copy_(upsample(acts, ytab, xtab))
