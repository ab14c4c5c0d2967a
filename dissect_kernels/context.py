"""Insertion context (GAN Dissection's context figure): insert a unit set at every location of
a grid over the layer's feature map, in many samples, and count where the segmenter then sees
the concept, per grid location and per *context class* (the class that held most of the
location's pixels before the insertion). A concept inserted where its context does not allow
it (a door in the sky) does not appear.

Per batch of B samples, the G_h x G_w insertions are S = G_h * G_w position masks of one unit
set, evaluated by one batched dk.intervene (chunk_size sets per forward pass). An insertion
"succeeds" when the concept covers at least min_coverage of its location's pixels afterwards.
Every count is an integer: shards and resumes merge exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from dissect_kernels.engine import CheckpointSpec, IndexSource, IntegerCounts, Pass, run_passes
from dissect_kernels.gan_setup import GanSetup, value_pass
from dissect_kernels.generated import segment
from dissect_kernels.intervene import intervene


@dataclass
class ContextResult:
    """Counts of a context map: per grid location [G_h, G_w] the insertions (`trials`), those
    after which the concept covers >= min_coverage of the location (`appeared`), those where it
    already did before (`present_before`) and the concept's pixels there before / after; per
    context class [C] the insertions and successes. value: the inserted k of each unit [U]."""

    layer: str
    concept: int
    concept_names: list[str]
    units: list[int]
    grid: tuple[int, int]
    min_coverage: float
    num_samples: int
    value: torch.Tensor
    counts: dict[str, torch.Tensor] = field(default_factory=dict)

    def rate(self) -> torch.Tensor:
        """[G_h, G_w] float64: P(the concept appears | inserted at this location)."""
        return self.counts["appeared"].double() / self.counts["trials"].clamp(min=1).double()

    def context_rate(self) -> torch.Tensor:
        """[C] float64: P(the concept appears | inserted where class c was the context); NaN
        for classes never a context."""
        t = self.counts["context_trials"].double()
        return torch.where(t > 0, self.counts["context_appeared"].double() / t.clamp(min=1),
                           torch.full_like(t, float("nan")))

    def to_json(self) -> dict:
        """The documented context.json (docs/gan.md)."""
        rate, ctx = self.rate(), self.context_rate()
        return {"kind": "insertion_context", "layer": self.layer, "concept": self.concept_names[self.concept],
                "units": self.units, "value": [round(float(self.value[u]), 6) for u in self.units],
                "grid": list(self.grid), "min_coverage": self.min_coverage, "num_samples": self.num_samples,
                "appear_rate": [[round(float(v), 6) for v in row] for row in rate],
                "trials": self.counts["trials"].tolist(), "appeared": self.counts["appeared"].tolist(),
                "present_before": self.counts["present_before"].tolist(),
                "by_context": [{"class": n, "trials": int(self.counts["context_trials"][c]),
                                "appeared": int(self.counts["context_appeared"][c]),
                                "appear_rate": None if ctx[c].isnan() else round(float(ctx[c]), 6)}
                               for c, n in enumerate(self.concept_names)]}


def location_masks(size: tuple[int, int], grid: tuple[int, int], device=None) -> torch.Tensor:
    """[G_h * G_w, 1, h, w] float: location s = (i, j) covers feature cells rows i*h/G_h .. and
    columns j*w/G_w .. (the grid must divide the feature map)."""
    (h, w), (gh, gw) = size, grid
    if h % gh or w % gw:
        raise ValueError(f"grid {gh}x{gw} must divide the layer's {h}x{w} feature map")
    eye = torch.eye(gh * gw, device=device).reshape(gh * gw, gh, gw)
    return eye.repeat_interleave(h // gh, 1).repeat_interleave(w // gw, 2)[:, None]


def region_counts(seg: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Pixels of each class per grid location: seg [B, L, H, W] -> int64 [B, C, G_h, G_w] (a
    pixel counts once per class it holds in any layer)."""
    B, _, H, W = seg.shape
    gh, gw = grid
    if H % gh or W % gw:
        raise ValueError(f"grid {gh}x{gw} must divide the segmentation's {H}x{W} pixels")
    hot = torch.zeros(B, num_classes, H, W, dtype=torch.bool, device=seg.device)
    hot.scatter_(1, seg, True)
    return hot.long().reshape(B, num_classes, gh, H // gh, gw, W // gw).sum((3, 5))


class ContextCounts(IntegerCounts):
    """The context map's integer counts (see ContextResult), one batched intervention per batch."""

    needs_output = True
    KEYS = ("trials", "appeared", "present_before", "pixels_before", "pixels_after")

    def __init__(self, st: GanSetup, units: list[int], grid, value: torch.Tensor, min_coverage: float,
                 chunk_size: int | None):
        self.st, self.units, self.grid, self.value = st, units, grid, value
        self.min_coverage, self.chunk_size, self.layers = min_coverage, chunk_size, (st.layer,)
        self.counts = {k: torch.zeros(grid, dtype=torch.int64) for k in self.KEYS}
        self.counts.update(context_trials=torch.zeros(st.C, dtype=torch.int64),
                           context_appeared=torch.zeros(st.C, dtype=torch.int64))

    def _concept(self, images: torch.Tensor) -> torch.Tensor:
        """[B, G_h, G_w] int64: the concept's pixels per location."""
        hit = (segment(self.st.segmenter, images, self.st.C) == self.st.concept).any(1)
        B, H, W = hit.shape
        gh, gw = self.grid
        return hit.long().reshape(B, gh, H // gh, gw, W // gw).sum((2, 4))

    def update(self, step) -> None:
        st, (gh, gw) = self.st, self.grid
        before = region_counts(segment(st.segmenter, step.output, st.C), self.grid, st.C)   # [B, C, gh, gw]
        area = step.output.shape[-2] * step.output.shape[-1] // (gh * gw)
        S = gh * gw
        pos = location_masks(tuple(step.acts[st.layer].shape[2:]), self.grid, st.device)
        sets = torch.tensor([self.units] * S, device=st.device)
        after = intervene(step.model, st.spec, sets, step.inputs, mode="insert", values=self.value,
                          positions=pos, measure=self._concept, chunk_size=self.chunk_size)   # [S, B, gh, gw]
        s = torch.arange(S, device=after.device)
        own = after[s, :, s // gw, s % gw].T.reshape(-1, gh, gw).cpu()                          # [B, gh, gw]
        was = before[:, st.concept].cpu()
        hit = own >= self.min_coverage * area
        c = self.counts
        c["trials"] += own.shape[0]
        c["appeared"] += hit.sum(0)
        c["present_before"] += (was >= self.min_coverage * area).sum(0)
        c["pixels_before"] += was.sum(0)
        c["pixels_after"] += own.sum(0)
        ctx = before.argmax(1).cpu().reshape(-1)                                             # ties: lower id
        c["context_trials"] += torch.bincount(ctx, minlength=st.C)
        c["context_appeared"] += torch.bincount(ctx, weights=hit.reshape(-1).double(), minlength=st.C).long()



def _grid(grid, size: tuple[int, int]) -> tuple[int, int]:
    g = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if len(g) != 2 or not all(isinstance(v, int) and v >= 1 for v in g):
        raise ValueError(f"grid must be a positive int or (rows, cols), got {grid!r}")
    g = (min(g[0], size[0]), min(g[1], size[1]))
    location_masks(size, g)                                      # checks that it divides the map
    return g


def insertion_context(generator, layer, units: "int | Sequence[int]", segmenter, concept, *,
                      num_samples: int = 64, grid: "int | tuple[int, int]" = 8, value="quantile",
                      min_coverage: float = 0.5, seed: int = 0, batch_size: int = 8,
                      chunk_size: int | None = 16, z_sampler: Callable | None = None,
                      z_dim: int | None = None, device=None, progress: bool = False,
                      checkpoint_dir=None, checkpoint_interval: float = 120.0,
                      resume: bool = True) -> ContextResult:
    """Insert `units` of `layer` (at `value`: a number, a [U] tensor, "quantile" = each unit's
    0.99 quantile, or "mean" = the concept-conditioned mean, as in ace) at each of grid x grid
    locations of the feature map, in num_samples samples (z as in dissect_generator), and count
    where the segmenter sees `concept` (see ContextResult). checkpoint_dir: checkpoint there."""
    st = GanSetup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim,
                  device=device)
    ids, g = st.check_units(units), _grid(grid, st.grid)
    if not 0 < float(min_coverage) <= 1:
        raise ValueError(f"min_coverage must lie in (0, 1], got {min_coverage!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    passes = [p for p in [value_pass(st, value, num_samples)] if p is not None]
    passes.append(Pass("context", lambda results: {"context": ContextCounts(
        st, ids, g, st.value_from(value, results), float(min_coverage), chunk_size)}))
    ckpt = None if checkpoint_dir is None else CheckpointSpec(checkpoint_dir, "context", dict(
        st.key(), units=ids, grid=list(g), min_coverage=float(min_coverage), num_samples=num_samples,
        batch_size=batch_size, value=value.tolist() if isinstance(value, torch.Tensor) else str(value)),
        checkpoint_interval, resume)
    out = run_passes(st.generator, IndexSource(num_samples, st.z_of, batch_size=batch_size), passes,
                     layers=[st.spec], device=st.device, progress=progress, checkpoint=ckpt,
                     check_finite=False, desc="context")
    return ContextResult(st.layer, st.concept, st.names, ids, g, float(min_coverage), num_samples,
                         st.value_from(value, out.results).cpu(), out.results["context"]["context"])


def context_examples(generator, layer, units: Sequence[int], value: torch.Tensor, z: torch.Tensor,
                     grid: tuple[int, int], locations: Sequence[int]) -> torch.Tensor:
    """Images [len(locations), B, 3, H, W] of z with `units` inserted at each grid location."""
    from dissect_kernels.engine.layers import as_specs
    spec = as_specs(generator, layer)[0]
    with torch.no_grad():
        from dissect_kernels.engine import LayerView, capture
        acts, _ = capture(generator, z[:1], [LayerView.of(spec)], run_to_end=True, check_finite=False)
        pos = location_masks(tuple(acts[spec.key].shape[2:]), grid, z.device)[list(locations)]
        sets = torch.tensor([list(units)] * len(locations), device=z.device)
        return intervene(generator, spec, sets, z, mode="insert", values=value.to(z.device), positions=pos)
