"""Average causal effect (ACE) of generator units on a segmented concept: ablate units (set to
0) or insert them (set to a value k), regenerate, segment, count the concept's pixels; rank every
unit by its single-unit ACE in one batched run; optimise a soft unit mask alpha (GAN Dissection).

s_c(image) is the fraction of the image's pixels the segmenter gives class c (dk.segment_stats).
ace = E[s_c(inserted)] - E[s_c(ablated)] ("insert_minus_ablate", GD's delta), or
E[s_c(original)] - E[s_c(ablated)] ("ablate": what removing the units takes away), or
E[s_c(inserted)] - E[s_c(original)] ("insert": what inserting them adds).

Under torch.distributed (torchrun; gloo or NCCL) `ace` and `rank_units_by_ace` take a contiguous
shard of the sample indices per rank (z depends only on the index) and sum their integer pixel
counts across ranks, so every rank returns the single-process result bit for bit (with
value="quantile" while the QuantileSketch stays exact; value="mean" sums float64 per rank, added
in rank order: deterministic, equal to one process up to float64 rounding).
`optimize_alpha` is single-process: no collectives; each rank that calls it runs the full
optimisation on its own (run it on one rank, or on all for identical results).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dissect_kernels import distributed as ddp
from dissect_kernels import hooks
from dissect_kernels.generator import _batches, _quantile_sketch, make_z_sampler, segment, segmenter_info
from dissect_kernels.intervene import intervene
from dissect_kernels.ops.segment_stats import segment_stats

MODES = ("insert_minus_ablate", "ablate", "insert")


@dataclass
class ACEResult:
    """Mean class-c pixel fractions over num_samples: original, ablated, inserted (None when
    the mode does not insert) and the ACE of the mode; value = the inserted k per unit [U]."""

    concept: int
    units: list[int]
    mode: str
    num_samples: int
    ace: float
    original: float
    ablated: float | None
    inserted: float | None
    value: torch.Tensor | None = None


@dataclass
class UnitRanking:
    """Single-unit ACE of every unit of a layer: order [U] (largest ACE first, ties: lower
    unit), ace/ablated/inserted [U] float64 mean class fractions, original scalar."""

    concept: int
    mode: str
    num_samples: int
    order: torch.Tensor
    ace: torch.Tensor
    original: float
    ablated: torch.Tensor
    inserted: torch.Tensor
    value: torch.Tensor


@dataclass
class AlphaResult:
    """Optimised soft unit mask alpha [U] in [0, 1], units ranked by -alpha (GD's `<c>-ace`),
    and the loss after each update."""

    alpha: torch.Tensor
    order: torch.Tensor
    history: list[float] = field(default_factory=list)
    preset: str = "exact"


# ---------------------------------------------------------------- set-up shared by all three


class _Setup:
    """Validated generator/layer/segmenter/concept, z sampler and per-sample measurement."""

    def __init__(self, generator, layer, segmenter, concept, *, seed, z_sampler, z_dim, device):
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be an nn.Module, got {type(generator).__name__}")
        hooks.get_module(generator, layer)
        self.C, self.names, _, _ = segmenter_info(segmenter)
        if isinstance(concept, str):
            if concept not in self.names:
                raise ValueError(f"concept {concept!r} is not a segmenter class; classes: {self.names}")
            concept = self.names.index(concept)
        if not isinstance(concept, int) or not 0 <= concept < self.C:
            raise ValueError(f"concept must be a class name or an id in [0, {self.C}), got {concept!r}")
        self.generator, self.layer, self.segmenter, self.concept = generator, layer, segmenter, concept
        if device is None:
            device = next((p.device for p in generator.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.z_of = make_z_sampler(generator, seed, z_dim, z_sampler, self.device)
        self.U = None

    def probe(self) -> None:
        """Run sample 0 once: sets U, the layer's grid and the segmentation's pixel count."""
        images, _ = self.run(self.z_of(torch.arange(1)))
        seg = segment(self.segmenter, images, self.C)
        self.pixels = seg.shape[-1] * seg.shape[-2]

    def count(self, images: torch.Tensor) -> torch.Tensor:
        """[B] int64 number of pixels the segmenter assigns to the concept (exact to sum)."""
        seg = segment(self.segmenter, images, self.C)
        return segment_stats(seg, self.C)[:, self.concept].long()

    def fraction(self, images: torch.Tensor) -> torch.Tensor:
        """[B] float64 fraction of pixels the segmenter assigns to the concept."""
        seg = segment(self.segmenter, images, self.C)
        counts = segment_stats(seg, self.C)[:, self.concept]
        return counts.double() / (seg.shape[-1] * seg.shape[-2])

    def run(self, z):
        """(images, layer output) of an unedited forward pass."""
        with torch.no_grad(), hooks.Trace(self.generator, self.layer) as tr:
            images = self.generator(z)
        acts = tr.output
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            raise ValueError(f"layer {self.layer!r} must output [B, U, h, w] feature maps")
        self.U = acts.shape[1]
        self.grid = tuple(acts.shape[2:])
        return images, acts

    def check_units(self, units) -> list[int]:
        ids = [units] if isinstance(units, int) else [int(u) for u in units]
        if not ids:
            raise ValueError("units is empty")
        bad = [u for u in ids if not 0 <= u < self.U]
        if bad:
            raise ValueError(f"units {bad} are out of range: layer {self.layer!r} has {self.U} units "
                             f"(ids must lie in [0, {self.U}))")
        return ids

    def values(self, value, num_samples, batch_size, progress, q: float = 0.99,
               shard: bool = True) -> torch.Tensor:
        """The insertion value per unit [U]: a number, a [U] tensor, "quantile" (each unit's q
        quantile over the samples' feature maps, GANPaint) or "mean" (the concept-conditioned
        mean sum(feat * p) / sum(p), p = the concept's pixel fraction in each feature cell).
        shard: under torch.distributed each rank takes its shard of the samples and the
        statistics merge across ranks (the exact quantile is bit-identical to one process; the
        mean's float64 sums add in rank order: equal up to float64 rounding)."""
        if value is None:
            value = "quantile"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.full((self.U,), float(value), device=self.device)
        if isinstance(value, torch.Tensor):
            v = value.to(self.device).float().reshape(-1)
            if v.numel() == 1:
                return v.expand(self.U).clone()
            if v.numel() != self.U:
                raise ValueError(f"value must hold 1 or {self.U} entries (the layer's units), got {v.numel()}")
            return v
        if value not in ("quantile", "mean"):
            raise ValueError(f"value must be a number, a [U] tensor, 'quantile' or 'mean', got {value!r}")
        samples = ddp.shard_indices(num_samples) if shard else num_samples
        sketch = _quantile_sketch(self.U, num_samples * self.grid[0] * self.grid[1], "auto",
                                  self.device, min_quantile=q) if value == "quantile" else None
        num = torch.zeros(self.U, dtype=torch.float64, device=self.device)
        den = torch.zeros((), dtype=torch.float64, device=self.device)
        for idx in _batches(samples, batch_size, progress, f"ace: insertion value ({value})"):
            images, acts = self.run(self.z_of(idx))
            if value == "quantile":
                sketch.update(acts)
            else:
                p = self.presence(images, tuple(acts.shape[2:]))           # [B, h, w]
                num = num + (acts.double() * p[:, None].double()).sum((0, 2, 3))
                den = den + p.double().sum()
        if value == "quantile":
            if shard:
                ddp.merge_across_ranks(sketch)
            return sketch.quantile([q]).reshape(self.U).float().to(self.device)
        if shard:
            num, den = ddp.sum_across_ranks(num), ddp.sum_across_ranks(den)
        if float(den) == 0:
            raise ValueError(f"concept {self.names[self.concept]!r} never appears in the samples; "
                             "the concept-conditioned mean is undefined (pass value=...)")
        return (num / den).float()

    def presence(self, images, size) -> torch.Tensor:
        """[B, h, w] fraction of each feature cell's pixels that hold the concept."""
        seg = segment(self.segmenter, images, self.C)
        hit = (seg == self.concept).any(1, keepdim=True).float()
        return F.adaptive_avg_pool2d(hit, size)[:, 0]


def _positions(positions, idx: torch.Tensor, device):
    """positions [h, w] (all samples) or [num_samples, h, w] (per sample index) -> [B, h, w]."""
    if positions is None:
        return None
    if not isinstance(positions, torch.Tensor) or positions.dim() not in (2, 3):
        raise ValueError("positions must be a [h, w] or [num_samples, h, w] tensor (bool or float)")
    p = positions.to(device).float()
    return p[None].expand(len(idx), *p.shape) if p.dim() == 2 else p[idx.to(device)]


# ---------------------------------------------------------------- ACE of one unit set


def ace(generator: nn.Module, layer: str, units: "int | Sequence[int]", segmenter, concept, *,
        num_samples: int, seed: int = 0, mode: str = "insert_minus_ablate", value=None,
        positions: torch.Tensor | None = None, batch_size: int = 32, z_sampler: Callable | None = None,
        z_dim: int | None = None, device=None, progress: bool = False) -> ACEResult:
    """ACE of ablating/inserting `units` of `layer` on class `concept` (id or name), averaged
    over num_samples z (same z per index as dissect_generator). value: see _Setup.values
    (default: each unit's 0.99 quantile); positions: where to edit ([h, w] or per sample
    [num_samples, h, w]; default everywhere). Under torch.distributed every rank must call it
    with the same arguments: ranks share the samples and all return the same result."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    st = _Setup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim, device=device)
    progress = progress and ddp.rank() == 0
    st.probe()
    ids = st.check_units(units)
    k = st.values(value, num_samples, batch_size, progress) if mode != "ablate" else None
    sums = torch.zeros(3, dtype=torch.int64)          # concept pixels: original, ablated, inserted
    for idx in _batches(ddp.shard_indices(num_samples), batch_size, progress, "ace"):
        z = st.z_of(idx)
        pos = _positions(positions, idx, st.device)
        with torch.no_grad():
            sums[0] += int(st.count(st.run(z)[0]).sum())
            if mode != "insert":
                sums[1] += int(intervene(generator, layer, [ids], z, mode="ablate", positions=pos,
                                         measure=st.count).sum())
            if mode != "ablate":
                sums[2] += int(intervene(generator, layer, [ids], z, mode="insert", values=k,
                                         positions=pos, measure=st.count).sum())
    sums = ddp.sum_across_ranks(sums).double() / (num_samples * st.pixels)
    m = dict(zip(("original", "ablated", "inserted"), sums.tolist()))
    effect = {"insert_minus_ablate": m["inserted"] - m["ablated"], "ablate": m["original"] - m["ablated"],
              "insert": m["inserted"] - m["original"]}[mode]
    return ACEResult(st.concept, ids, mode, num_samples, effect, m["original"],
                     None if mode == "insert" else m["ablated"], None if mode == "ablate" else m["inserted"],
                     None if k is None else k.cpu())


def rank_units_by_ace(generator: nn.Module, layer: str, segmenter, concept, *, num_samples: int,
                      seed: int = 0, mode: str = "insert_minus_ablate", value=None,
                      positions: torch.Tensor | None = None, batch_size: int = 16,
                      chunk_size: int | None = None, z_sampler: Callable | None = None,
                      z_dim: int | None = None, device=None, progress: bool = False) -> UnitRanking:
    """Single-unit ACE of every unit of `layer` in one streaming run: per batch the network
    runs to the layer once, and all U single-unit ablations (and insertions) run as one batched
    dk.intervene (chunk_size bounds the sets per forward pass). Under torch.distributed every
    rank calls it with the same arguments, takes its shard of the samples, and returns the
    single-process result (integer pixel counts summed across ranks)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    st = _Setup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim, device=device)
    progress = progress and ddp.rank() == 0
    st.probe()
    U = st.U
    k = st.values(value, num_samples, batch_size, progress)
    sets = torch.arange(U, device=st.device)[:, None]
    sums = torch.zeros(1 + 2 * U, dtype=torch.int64)  # concept pixels: original, ablated [U], inserted [U]
    for idx in _batches(ddp.shard_indices(num_samples), batch_size, progress, "ace ranking"):
        z = st.z_of(idx)
        pos = _positions(positions, idx, st.device)
        with torch.no_grad():
            sums[0] += int(st.count(st.run(z)[0]).sum())
            sums[1:U + 1] += intervene(generator, layer, sets, z, mode="ablate", positions=pos,
                                       measure=st.count, chunk_size=chunk_size).sum(1).cpu()
            sums[U + 1:] += intervene(generator, layer, sets, z, mode="insert", values=k, positions=pos,
                                      measure=st.count, chunk_size=chunk_size).sum(1).cpu()
    frac = ddp.sum_across_ranks(sums).double() / (num_samples * st.pixels)
    orig, abl, ins = float(frac[0]), frac[1:U + 1], frac[U + 1:]
    effect = {"insert_minus_ablate": ins - abl, "ablate": orig - abl, "insert": ins - orig}[mode]
    order = torch.sort(-effect, stable=True).indices
    return UnitRanking(st.concept, mode, num_samples, order, effect, orig, abl, ins, k.cpu())


# ---------------------------------------------------------------- alpha optimisation


def optimize_alpha(generator: nn.Module, layer: str, segmenter, concept, *, lam: float = 0.005,
                   lr: float = 0.01, steps: int | None = None, epochs: int | None = None,
                   num_samples: int = 1000, batch_size: int | None = None, seed: int = 0,
                   value=None, preset: str = "exact", reproduce_ploc_bug: bool = False,
                   init: torch.Tensor | None = None, temperature: float | None = None,
                   z_sampler: Callable | None = None, z_dim: int | None = None, device=None,
                   progress: bool = False) -> AlphaResult:
    """Soft unit mask alpha in [0, 1]^U maximising ACE - lam * |alpha|^2 with Adam, alpha
    clamped to [0, 1] after every update; s_c is the segmenter's differentiable soft score
    (segmenter.soft_scores(images) -> [B, C, H, W]; the generator must pass gradients).

    preset "exact": each update draws a fresh batch (default 8) of z; units are edited at every
    position; loss = mean s_c(ablated) - mean s_c(inserted) + lam * |alpha|^2; `steps` updates
    (default 100); alpha starts at 0.5 (or `init`); value default: each unit's 0.99 quantile.
    preset "gandissect" (REFERENCE-CONVENTIONS §5): pairs of (ablation cell = the cell with the
    most class presence, insertion cell = the best of 5 random class-absent cells) from the
    num_samples z where the class appears; batch 2, gradients accumulated over 10 batches per
    update (an epoch's leftover batches make one more update), loss = s~_c at the ablation
    cell (ablated) - s~_c at the insertion cell (inserted),
    s~ average-pooled to the layer's grid, + lam * 20 * |alpha|^2 per update; `epochs` (default
    10) over the pairs; alpha_0 = init (GD: IoU / max IoU); value default: the concept-
    conditioned mean. reproduce_ploc_bug reads the insertion term at the ablation cell, as GD.
    Single-process, not data-parallel: it makes no collective calls, so under torch.distributed
    each calling rank runs the whole optimisation on its own (identical on every rank)."""
    if preset not in ("exact", "gandissect"):
        raise ValueError(f"preset must be 'exact' or 'gandissect', got {preset!r}")
    st = _Setup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim, device=device)
    soft = getattr(segmenter, "soft_scores", None)
    if not callable(soft):
        raise TypeError("optimize_alpha needs segmenter.soft_scores(images) -> [B, C, H, W] class scores")
    soft_kw = {} if temperature is None else {"temperature": temperature}
    st.probe()
    U = st.U
    if value is None:
        value = "quantile" if preset == "exact" else "mean"
    stats_n = min(num_samples, 200)
    k = st.values(value, stats_n, 32, progress, shard=False)
    if init is None:
        alpha0 = torch.full((U,), 0.5)
    else:
        alpha0 = torch.as_tensor(init, dtype=torch.float32).reshape(-1)
        if alpha0.numel() != U:
            raise ValueError(f"init must hold {U} entries (the layer's units), got {alpha0.numel()}")
    alpha = alpha0.clamp(0, 1).to(st.device).clone().requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    history: list[float] = []
    c = st.concept

    def score(images):                                     # [B, H, W] soft class-c score
        return soft(images, **soft_kw)[:, c]

    if preset == "exact":
        bs = batch_size or 8
        for step in range(steps or 100):
            idx = torch.arange(step * bs, (step + 1) * bs) + num_samples   # fresh z, not the stats' ones
            z = st.z_of(idx)
            mean = lambda img: score(img).mean((1, 2))      # noqa: E731
            abl = intervene(generator, layer, alpha[None], z, mode="ablate", measure=mean)
            ins = intervene(generator, layer, alpha[None], z, mode="insert", values=k, measure=mean)
            loss = abl.mean() - ins.mean() + lam * (alpha ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0, 1)
            history.append(float(loss.detach()))
    else:
        pairs = _gd_pairs(st, k, num_samples, progress)
        if pairs[0].numel() == 0:
            raise ValueError(f"concept {st.names[c]!r} appears in none of the {num_samples} samples")
        bs, accum = batch_size or 2, 10
        n = pairs[0].numel()
        micro = 0
        opt.zero_grad()
        for epoch in range(epochs or 10):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
            for s in range(0, n, bs):
                sel = perm[s:s + bs]
                idx, aloc, iloc = (p[sel] for p in pairs)
                z = st.z_of(idx)
                acells = F.one_hot(aloc, st.cells).float().view(-1, *st.grid)
                icells = F.one_hot(iloc, st.cells).float().view(-1, *st.grid)
                pooled = lambda img: F.adaptive_avg_pool2d(score(img)[:, None], st.grid)[:, 0].flatten(1)  # noqa: E731
                abl = intervene(generator, layer, alpha[None], z, mode="ablate", positions=acells, measure=pooled)[0]
                ins = intervene(generator, layer, alpha[None], z, mode="insert", values=k, positions=icells,
                                measure=pooled)[0]
                read = aloc if reproduce_ploc_bug else iloc
                loss = abl.gather(1, aloc[:, None].to(abl.device)).sum() - ins.gather(1, read[:, None].to(ins.device)).sum()
                loss.backward()
                micro += 1
                last = s + bs >= n
                if micro % accum == 0 or last:      # an epoch's leftover batches update too
                    (lam * 20 * (alpha ** 2).sum()).backward()
                    opt.step()
                    opt.zero_grad()
                    with torch.no_grad():
                        alpha.clamp_(0, 1)
                    history.append(float(loss.detach()))
                    micro = 0
    out = alpha.detach().cpu()
    return AlphaResult(out, torch.sort(-out, stable=True).indices, history, preset)


def _gd_pairs(st: _Setup, k: torch.Tensor, num_samples: int, progress: bool, candidates: int = 5):
    """GD's training pairs: for each sample where the class appears, the feature cell with the
    most class presence (ablation) and the best of `candidates` random class-absent cells by
    the class pixels that inserting every unit there adds. Returns (indices, aloc, iloc)."""
    idx_all, aloc_all, iloc_all = [], [], []
    gen = torch.Generator().manual_seed(11)
    all_units = torch.ones(1, st.U)
    for idx in _batches(num_samples, 16, progress, "ace pairs"):
        z = st.z_of(idx)
        images, acts = st.run(z)
        st.grid = tuple(acts.shape[2:])
        st.cells = st.grid[0] * st.grid[1]
        p = st.presence(images, st.grid).flatten(1).cpu()          # [B, cells]
        keep = p.max(1).values > 0
        absent = p == 0
        if not bool((keep & absent.any(1)).any()):
            continue
        keep = keep & absent.any(1)
        aloc = p.argmax(1)
        # Random absent candidates per sample (with repetition when fewer exist).
        r = torch.rand(p.shape, generator=gen) + absent.float() * 2   # absent cells rank first
        cand = torch.topk(r, candidates, dim=1).indices                 # [B, candidates]
        cand = torch.where(absent.gather(1, cand), cand, cand[:, :1])
        pos = F.one_hot(cand.t(), st.cells).float().view(candidates, len(idx), *st.grid)
        with torch.no_grad():
            gain = intervene(st.generator, st.layer, all_units.expand(candidates, -1), z, mode="insert",
                             values=k, positions=pos, measure=st.fraction).cpu()   # [cand, B]
        iloc = cand.gather(1, gain.t().argmax(1, keepdim=True))[:, 0]
        idx_all.append(idx[keep])
        aloc_all.append(aloc[keep])
        iloc_all.append(iloc[keep])
    if not idx_all:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(idx_all), torch.cat(aloc_all), torch.cat(iloc_all)
