"""Average causal effect (ACE) of generator units on a segmented concept, on the pass engine:
ablate units (set to 0) or insert them (set to a value k), regenerate, segment, count the
concept's pixels; rank every unit by its single-unit ACE in one batched run.

s_c(image) is the fraction of the image's pixels the segmenter gives class c (dk.segment_stats).
ace = E[s_c(inserted)] - E[s_c(ablated)] ("insert_minus_ablate", GD's delta), or
E[s_c(original)] - E[s_c(ablated)] ("ablate": what removing the units takes away), or
E[s_c(inserted)] - E[s_c(original)] ("insert": what inserting them adds).

Under torch.distributed every rank calls with the same arguments; the engine gives each rank a
contiguous shard of the sample indices (z depends only on the index) and sums the integer pixel
counts across ranks, so every rank returns the single-process result bit for bit (with
value="quantile" while the QuantileSketch stays exact; value="mean" sums float64 per rank in
rank order: deterministic, equal to one process up to float64 rounding)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from dissect_kernels.engine.layers import LayerSpec
from dissect_kernels.engine import CheckpointSpec, IndexSource, IntegerCounts, Pass, run_passes
from dissect_kernels.gan_setup import GanSetup, edit_positions, value_pass
from dissect_kernels.intervene import intervene

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


class EffectCounts(IntegerCounts):
    """Concept pixels summed over samples: unedited, and with each of S unit sets ablated and/or
    inserted (one batched dk.intervene per batch and edit). int64, exact to merge."""

    needs_output = True

    def __init__(self, setup: GanSetup, sets, *, ablate: bool, insert: bool, value=None,
                 positions=None, chunk_size: int | None = None):
        self.setup, self.sets, self.value, self.positions = setup, sets, value, positions
        self.ablate, self.insert, self.chunk_size = ablate, insert, chunk_size
        S = len(sets)
        self.counts = {"original": torch.zeros(1, dtype=torch.int64),
                       "ablated": torch.zeros(S, dtype=torch.int64),
                       "inserted": torch.zeros(S, dtype=torch.int64)}

    def _edited(self, step, mode: str) -> torch.Tensor:
        st = self.setup
        pos = edit_positions(self.positions, step.indices, st.device)
        return intervene(step.model, st.spec, self.sets, step.inputs, mode=mode, positions=pos,
                         values=self.value if mode == "insert" else None, measure=st.count,
                         chunk_size=self.chunk_size).sum(1).cpu()

    def update(self, step) -> None:
        self.counts["original"] += self.setup.count(step.output).sum().cpu()
        if self.ablate:
            self.counts["ablated"] += self._edited(step, "ablate")
        if self.insert:
            self.counts["inserted"] += self._edited(step, "insert")



def _effects(st: GanSetup, sets, mode: str, value, positions, num_samples: int, batch_size: int,
             chunk_size, progress: bool, checkpoint_dir, name: str, key: dict, interval: float,
             resume: bool = True):
    """Run the value pass (when the mode inserts and k needs statistics) and the effect pass;
    returns (mean class fractions {original [1], ablated [S], inserted [S]}, k [U] or None)."""
    passes = []
    inserts = mode != "ablate"
    vpass = value_pass(st, value, num_samples) if inserts else None
    if vpass is not None:
        passes.append(vpass)

    def effect(results) -> dict:
        k = st.value_from(value, results) if inserts else None
        return {"effect": EffectCounts(st, sets, ablate=mode != "insert", insert=inserts, value=k,
                                       positions=positions, chunk_size=chunk_size)}

    passes.append(Pass("effect", effect))
    ckpt = None if checkpoint_dir is None else CheckpointSpec(checkpoint_dir, name, dict(
        key, mode=mode, value=str(value) if not isinstance(value, torch.Tensor) else value.tolist(),
        positions=None if positions is None else positions.tolist(), num_samples=num_samples,
        batch_size=batch_size, **st.key()), interval, resume)
    out = run_passes(st.generator, IndexSource(num_samples, st.z_of, batch_size=batch_size), passes,
                     layers=[st.spec], device=st.device, progress=progress, checkpoint=ckpt,
                     check_finite=False, desc=name)
    counts = out.results["effect"]["effect"]
    frac = {k: v.double() / (num_samples * st.pixels) for k, v in counts.items()}
    return frac, (st.value_from(value, out.results) if inserts else None)


def ace(generator: nn.Module, layer: "str | LayerSpec", units: "int | Sequence[int]", segmenter, concept, *,
        num_samples: int, seed: int = 0, mode: str = "insert_minus_ablate", value=None,
        positions: torch.Tensor | None = None, batch_size: int = 32, z_sampler: Callable | None = None,
        z_dim: int | None = None, device=None, progress: bool = False,
        checkpoint_dir=None, checkpoint_interval: float = 120.0, resume: bool = True) -> ACEResult:
    """ACE of ablating/inserting `units` of `layer` on class `concept` (id or name), averaged
    over num_samples z (same z per index as dissect_generator). value: a number, a [U] tensor,
    "quantile" (each unit's 0.99 quantile, the default) or "mean" (the concept-conditioned
    mean); positions: where to edit ([h, w] or per sample [num_samples, h, w]; default
    everywhere). checkpoint_dir: checkpoint there (a rerun resumes)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    st = GanSetup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim,
                  device=device)
    ids = st.check_units(units)
    frac, k = _effects(st, [ids], mode, value, positions, num_samples, batch_size, None, progress,
                       checkpoint_dir, "ace", {"units": ids}, checkpoint_interval, resume)
    m = {"original": float(frac["original"][0]), "ablated": float(frac["ablated"][0]),
         "inserted": float(frac["inserted"][0])}
    effect = {"insert_minus_ablate": m["inserted"] - m["ablated"], "ablate": m["original"] - m["ablated"],
              "insert": m["inserted"] - m["original"]}[mode]
    return ACEResult(st.concept, ids, mode, num_samples, effect, m["original"],
                     None if mode == "insert" else m["ablated"], None if mode == "ablate" else m["inserted"],
                     None if k is None else k.cpu())


def rank_units_by_ace(generator: nn.Module, layer: "str | LayerSpec", segmenter, concept, *, num_samples: int,
                      seed: int = 0, mode: str = "insert_minus_ablate", value=None,
                      positions: torch.Tensor | None = None, batch_size: int = 16,
                      chunk_size: int | None = None, z_sampler: Callable | None = None,
                      z_dim: int | None = None, device=None, progress: bool = False,
                      checkpoint_dir=None, checkpoint_interval: float = 120.0,
                      resume: bool = True) -> UnitRanking:
    """Single-unit ACE of every unit of `layer` in one streaming run: per batch the network
    runs to the layer once, and all U single-unit ablations (and insertions) run as one batched
    dk.intervene (chunk_size bounds the sets per forward pass). checkpoint_dir: checkpoint there."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    st = GanSetup(generator, layer, segmenter, concept, seed=seed, z_sampler=z_sampler, z_dim=z_dim,
                  device=device)
    sets = torch.arange(st.U, device=st.device)[:, None]
    value = "quantile" if value is None else value
    frac, k = _effects(st, sets, "insert_minus_ablate", value, positions, num_samples, batch_size,
                       chunk_size, progress, checkpoint_dir, "ace-ranking", {"rank_mode": mode},
                       checkpoint_interval, resume)
    orig, abl, ins = float(frac["original"][0]), frac["ablated"], frac["inserted"]
    effect = {"insert_minus_ablate": ins - abl, "ablate": orig - abl, "insert": ins - orig}[mode]
    order = torch.sort(-effect, stable=True).indices
    return UnitRanking(st.concept, mode, num_samples, order, effect, orig, abl, ins, k.cpu())
