"""Painting edits (GANPaint): add a concept's units inside a region (insert each unit's value
k there) or remove them (ablate them there), several edits in order, in one regeneration.
The Python face of `dissect-kernels paint`, usable without the server."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dissect_kernels.engine import IndexSource, LayerView, Pass, capture, run_passes
from dissect_kernels.engine.layer_stats import LayerQuantiles
from dissect_kernels.engine.layers import LayerSpec, as_specs
from dissect_kernels.generated import make_z_sampler
from dissect_kernels.intervene import intervene, unit_masks
from dissect_kernels.ops.edit import edit

MODES = ("add", "remove")
VALUE_QUANTILE = 0.99          # k per unit: its 0.99 quantile over generated samples (GANPaint)


@dataclass
class PaintEdit:
    """One stroke: `units` (layer indices), `mask` [h, w] in [0, 1] at the layer's grid (or
    any finer grid, area-averaged down), `mode` "add" (insert k) or "remove" (ablate)."""
    units: list
    mask: torch.Tensor
    mode: str = "add"


def layer_activation(generator: nn.Module, layer: "str | LayerSpec", z: torch.Tensor) -> torch.Tensor:
    """The layer's [B, U, h, w] map for z (the run stops after the layer)."""
    spec = as_specs(generator, layer)[0]
    with torch.no_grad():
        acts, _ = capture(generator, z, [LayerView.of(spec)], run_to_end=False, check_finite=False)
    return acts[spec.key]


def grid_mask(mask, grid: tuple[int, int], device) -> torch.Tensor:
    """mask [h, w] (bool or in [0, 1]) at the layer's grid, or a finer one area-averaged to it."""
    m = torch.as_tensor(mask)
    if m.dim() != 2 or m.shape[0] < grid[0] or m.shape[1] < grid[1]:
        raise ValueError(f"mask must be a 2-D [h, w] array at the layer's grid {list(grid)} or finer, "
                         f"got shape {list(m.shape)}")
    m = m.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError("mask values must lie in [0, 1]")
    if tuple(m.shape) != tuple(grid):
        m = F.adaptive_avg_pool2d(m[None, None], grid)[0, 0]
    return m


def edited_activation(x: torch.Tensor, edits, values: torch.Tensor | None) -> torch.Tensor:
    """x [B, U, h, w] with every edit applied in order: x <- x*(1-a) + v*a, a = units x mask,
    v = k (add) or 0 (remove), through dk.edit."""
    U, grid = x.shape[1], tuple(x.shape[2:])
    for e in edits:
        if e.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {e.mode!r}")
        if e.mode == "add" and values is None:
            raise ValueError("mode 'add' needs the insertion values k (one per unit)")
        units = unit_masks([list(e.units)], U, x.device)[0]                       # [U]
        alpha = units[:, None, None] * grid_mask(e.mask, grid, x.device)[None]    # [U, h, w]
        value = values.to(x.device).float() if e.mode == "add" else 0.0
        x = edit(x, alpha[None], value)
    return x


def paint_edits(generator: nn.Module, layer: "str | LayerSpec", z: torch.Tensor, edits,
                values: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's images [B, 3, H, W] for z with `edits` (PaintEdits, in order) applied at
    `layer`; `values` [U] is k for "add" (see insertion_values). One forward to the layer, one
    through the rest with the edited map written in (dk.intervene, alpha = 1)."""
    edits = list(edits)
    if not edits:
        with torch.no_grad():
            return generator(z)
    x = layer_activation(generator, layer, z)
    new = edited_activation(x, edits, values)
    with torch.no_grad():
        out = intervene(generator, as_specs(generator, layer)[0], torch.ones(1, x.shape[1], device=x.device), z,
                        mode="insert", values=new)
    return out[0]


def paint_edit(generator: nn.Module, layer: "str | LayerSpec", z: torch.Tensor, units, mask,
               mode: str = "add", values: torch.Tensor | None = None) -> torch.Tensor:
    """One painting edit: images [B, 3, H, W] for z with `units` added (insert `values` k) or
    removed (ablate) where `mask` [h, w] is set."""
    return paint_edits(generator, layer, z, [PaintEdit(list(units), mask, mode)], values)


def insertion_values(generator: nn.Module, layer: "str | LayerSpec", *, num_samples: int = 64,
                     seed: int = 0, z_sampler=None, z_dim: int | None = None, device=None,
                     batch_size: int = 32) -> torch.Tensor:
    """k [U]: each unit's 0.99 quantile over every position of num_samples generated samples
    (z of sample i from (seed, i), as dissect_generator draws them), one engine pass."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    spec = as_specs(generator, layer)[0]
    device = torch.device(device) if device is not None else \
        next((p.device for p in generator.parameters()), torch.device("cpu"))
    z_of = make_z_sampler(generator, seed, z_dim, z_sampler, device)
    quantile = Pass("insertion value", lambda results: {"k": LayerQuantiles(
        spec.key, VALUE_QUANTILE, samples=num_samples, min_quantile=VALUE_QUANTILE, device=device)})
    out = run_passes(generator, IndexSource(num_samples, z_of, batch_size=batch_size), [quantile],
                     layers=[spec], device=device, progress=False, distributed=False, check_finite=False)
    return out.results["insertion value"]["k"].reshape(-1).float()
