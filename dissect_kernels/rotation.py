"""Random rotations of a layer's units (NetDissect's axis-alignment test): a seeded orthogonal
matrix, its fractional powers (the geodesic from the identity to it, for partial rotations), and
a view transform that mixes the units of a [B, U, h, w] map by one."""
from __future__ import annotations

import numpy as np
import torch


def random_rotation(num_units: int, seed: int) -> torch.Tensor:
    """A random orthogonal [U, U] matrix (QR of a seeded Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(num_units, num_units, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def proper_rotation(num_units: int, seed: int) -> torch.Tensor:
    """random_rotation(U, seed) with its first column negated when its determinant is -1: a
    rotation (det +1), which the identity reaches along a path of rotations."""
    r = random_rotation(num_units, seed).double()
    if torch.linalg.det(r) < 0:
        r[:, 0] = -r[:, 0]
    return r.float()


def rotation_power(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """R^alpha for a rotation R (det +1): the point at alpha in [0, 1] of the geodesic from the
    identity (alpha = 0, exactly) to R (alpha = 1, exactly), i.e. expm(alpha logm(R)), computed
    from R's complex Schur form (R normal: Z diag(e^{i theta}) Z^H, theta on the principal branch)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if alpha == 0.0:
        return torch.eye(r.shape[0], dtype=r.dtype)
    if alpha == 1.0:
        return r.clone()
    from scipy.linalg import schur
    t, z = schur(r.double().numpy(), output="complex")
    theta = np.angle(np.diag(t))
    p = (z * np.exp(1j * alpha * theta)) @ z.conj().T
    return torch.from_numpy(np.ascontiguousarray(p.real)).to(r.dtype)


class Rotation:
    """A view transform: the units of a [B, U, h, w] map mixed by random_rotation(U, seed), or
    with alpha= by proper_rotation(U, seed)^alpha (alpha = 0: the identity)."""

    def __init__(self, seed: int, alpha: float | None = None):
        self.seed, self.alpha, self.matrix = int(seed), alpha, None

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            U = a.shape[1]
            self.matrix = random_rotation(U, self.seed) if self.alpha is None else \
                rotation_power(proper_rotation(U, self.seed), float(self.alpha))
        return torch.einsum("bchw,dc->bdhw", a.float(), self.matrix.to(a.device))
