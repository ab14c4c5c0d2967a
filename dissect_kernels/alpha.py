"""Optimising a soft unit mask alpha (GAN Dissection's `<c>-ace` ranking): the units whose joint
ablation and insertion move a concept most. The statistics it needs (the insertion value, GD's
training pairs) are passes of the engine; the optimisation itself is an Adam loop on fresh z."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dissect_kernels.engine.layers import LayerSpec
from dissect_kernels.engine import IndexSource, Pass, run_passes
from dissect_kernels.gan_setup import GanSetup, value_pass
from dissect_kernels.intervene import intervene

STATS_SAMPLES = 200      # samples for the insertion value's statistics
PAIR_CANDIDATES = 5      # GD: the best of 5 random class-absent cells is the insertion cell


@dataclass
class AlphaResult:
    """Optimised soft unit mask alpha [U] in [0, 1], units ranked by -alpha (GD's `<c>-ace`),
    and the loss after each update."""

    alpha: torch.Tensor
    order: torch.Tensor
    history: list[float] = field(default_factory=list)
    preset: str = "exact"


class GDPairs:
    """GD's training pairs: for each sample where the class appears, the feature cell with the
    most class presence (ablation) and the best of PAIR_CANDIDATES random class-absent cells by
    the class pixels that inserting every unit there adds (insertion)."""

    needs_output = True

    def __init__(self, st: GanSetup, k: torch.Tensor):
        self.st, self.k, self.layers = st, k, (st.layer,)
        self.gen = torch.Generator().manual_seed(11)
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, step) -> None:
        st = self.st
        p = st.presence(step.output, st.grid).flatten(1).cpu()          # [B, cells]
        absent = p == 0
        keep = (p.max(1).values > 0) & absent.any(1)
        if not bool(keep.any()):
            return
        r = torch.rand(p.shape, generator=self.gen) + absent.float() * 2   # absent cells rank first
        cand = torch.topk(r, PAIR_CANDIDATES, dim=1).indices
        cand = torch.where(absent.gather(1, cand), cand, cand[:, :1])
        pos = F.one_hot(cand.t(), st.cells).float().view(PAIR_CANDIDATES, len(step.indices), *st.grid)
        gain = intervene(step.model, st.spec, torch.ones(1, st.U).expand(PAIR_CANDIDATES, -1),
                         step.inputs, mode="insert", values=self.k, positions=pos,
                         measure=st.fraction).cpu()                          # [cand, B]
        iloc = cand.gather(1, gain.t().argmax(1, keepdim=True))[:, 0]
        self.parts.append((step.indices[keep].cpu(), p.argmax(1)[keep], iloc[keep]))

    def merge(self, other: "GDPairs") -> None:
        self.parts += other.parts

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(("indices", "aloc", "iloc"), self.finalize().values())) if self.parts else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.parts = [(state["indices"], state["aloc"], state["iloc"])]

    def finalize(self) -> dict[str, torch.Tensor]:
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return {"indices": empty, "aloc": empty, "iloc": empty}
        return {k: torch.cat([p[j] for p in self.parts]) for j, k in enumerate(("indices", "aloc", "iloc"))}


def optimize_alpha(generator: nn.Module, layer: "str | LayerSpec", segmenter, concept, *, lam: float = 0.005,
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
    preset "gandissect" (REFERENCE-CONVENTIONS §5): pairs of (ablation cell, insertion cell)
    from the num_samples z where the class appears (GDPairs); batch 2, gradients accumulated
    over 10 batches per update (an epoch's leftover batches make one more update), loss = s~_c
    at the ablation cell (ablated) - s~_c at the insertion cell (inserted), s~ average-pooled to
    the layer's grid, + lam * 20 * |alpha|^2 per update; `epochs` (default 10) over the pairs;
    alpha_0 = init (GD: IoU / max IoU); value default: the concept-conditioned mean.
    reproduce_ploc_bug reads the insertion term at the ablation cell, as GD does.
    Single-process: it makes no collective calls, so under torch.distributed each calling rank
    runs the whole optimisation on its own (identical on every rank)."""
    if preset not in ("exact", "gandissect"):
        raise ValueError(f"preset must be 'exact' or 'gandissect', got {preset!r}")
    st = GanSetup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim,
                  device=device)
    soft = getattr(segmenter, "soft_scores", None)
    if not callable(soft):
        raise TypeError("optimize_alpha needs segmenter.soft_scores(images) -> [B, C, H, W] class scores")
    soft_kw = {} if temperature is None else {"temperature": temperature}
    value = value if value is not None else ("quantile" if preset == "exact" else "mean")
    k = _stats(st, value, min(num_samples, STATS_SAMPLES), 32, progress)
    alpha0 = torch.full((st.U,), 0.5) if init is None else torch.as_tensor(init, dtype=torch.float32).reshape(-1)
    if alpha0.numel() != st.U:
        raise ValueError(f"init must hold {st.U} entries (the layer's units), got {alpha0.numel()}")
    alpha = alpha0.clamp(0, 1).to(st.device).clone().requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    score = lambda images: soft(images, **soft_kw)[:, st.concept]     # noqa: E731  [B, H, W]
    if preset == "exact":
        history = _fit_everywhere(st, alpha, opt, k, score, lam, steps or 100, batch_size or 8, num_samples)
    else:
        pairs = _run(st, [Pass("pairs", lambda results: {"pairs": GDPairs(st, k)})], num_samples, 16,
                     progress)["pairs"]["pairs"]
        if pairs["indices"].numel() == 0:
            raise ValueError(f"concept {st.names[st.concept]!r} appears in none of the {num_samples} samples")
        history = _fit_pairs(st, alpha, opt, k, score, lam, epochs or 10, batch_size or 2, pairs,
                             reproduce_ploc_bug)
    out = alpha.detach().cpu()
    return AlphaResult(out, torch.sort(-out, stable=True).indices, history, preset)


def _run(st: GanSetup, passes, num_samples: int, batch_size: int, progress: bool):
    return run_passes(st.generator, IndexSource(num_samples, st.z_of, batch_size=batch_size), passes,
                      layers=[st.spec], device=st.device, progress=progress, distributed=False,
                      check_finite=False, desc="alpha").results


def _stats(st: GanSetup, value, num_samples: int, batch_size: int, progress: bool) -> torch.Tensor:
    vpass = value_pass(st, value, num_samples)
    results = _run(st, [vpass], num_samples, batch_size, progress) if vpass is not None else {}
    return st.value_from(value, results)


def _fit_everywhere(st, alpha, opt, k, score, lam, steps, bs, num_samples) -> list[float]:
    """preset "exact": fresh z each update, units edited at every position."""
    history = []
    mean = lambda img: score(img).mean((1, 2))                     # noqa: E731
    for step in range(steps):
        z = st.z_of(torch.arange(step * bs, (step + 1) * bs) + num_samples)  # fresh z, not the stats'
        abl = intervene(st.generator, st.spec, alpha[None], z, mode="ablate", measure=mean)
        ins = intervene(st.generator, st.spec, alpha[None], z, mode="insert", values=k, measure=mean)
        loss = abl.mean() - ins.mean() + lam * (alpha ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            alpha.clamp_(0, 1)
        history.append(float(loss.detach()))
    return history


def _fit_pairs(st, alpha, opt, k, score, lam, epochs, bs, pairs, ploc_bug, accum: int = 10) -> list[float]:
    """preset "gandissect": GD's pair loss with gradient accumulation over `accum` batches."""
    history, micro, n = [], 0, pairs["indices"].numel()
    pooled = lambda img: F.adaptive_avg_pool2d(score(img)[:, None], st.grid)[:, 0].flatten(1)  # noqa: E731
    opt.zero_grad()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(st.seed * 1000 + epoch))
        for s in range(0, n, bs):
            sel = perm[s:s + bs]
            idx, aloc, iloc = (pairs[key][sel] for key in ("indices", "aloc", "iloc"))
            z = st.z_of(idx)
            acells = F.one_hot(aloc, st.cells).float().view(-1, *st.grid)
            icells = F.one_hot(iloc, st.cells).float().view(-1, *st.grid)
            abl = intervene(st.generator, st.spec, alpha[None], z, mode="ablate", positions=acells,
                            measure=pooled)[0]
            ins = intervene(st.generator, st.spec, alpha[None], z, mode="insert", values=k,
                            positions=icells, measure=pooled)[0]
            read = aloc if ploc_bug else iloc
            loss = abl.gather(1, aloc[:, None].to(abl.device)).sum() - \
                ins.gather(1, read[:, None].to(ins.device)).sum()
            loss.backward()
            micro += 1
            if micro % accum == 0 or s + bs >= n:      # an epoch's leftover batches update too
                (lam * 20 * (alpha ** 2).sum()).backward()
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    alpha.clamp_(0, 1)
                history.append(float(loss.detach()))
                micro = 0
    return history
