"""Random rotations of a layer's units (NetDissect's axis-alignment test): a seeded orthogonal
matrix, and a view transform that mixes the units of a [B, U, h, w] map by it."""
from __future__ import annotations

import torch


def random_rotation(num_units: int, seed: int) -> torch.Tensor:
    """A random orthogonal [U, U] matrix (QR of a seeded Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(num_units, num_units, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class Rotation:
    """A view transform: the units of a [B, U, h, w] map mixed by random_rotation(U, seed)."""

    def __init__(self, seed: int):
        self.seed, self.matrix = int(seed), None

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            self.matrix = random_rotation(a.shape[1], self.seed)
        return torch.einsum("bchw,dc->bdhw", a.float(), self.matrix.to(a.device))
