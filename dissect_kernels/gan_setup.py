"""What the causal GAN drivers (ACE, unit ranking, alpha optimisation) share: a validated
generator / layer / segmenter / concept with its z sampler and per-image measurements, the
insertion value k (a number, a [U] tensor, or a statistic computed by a pass of the engine),
and where to edit."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dissect_kernels.engine import LayerView, Pass, capture
from dissect_kernels.engine.layers import as_specs
from dissect_kernels.engine.layer_stats import LayerQuantiles
from dissect_kernels.generated import make_z_sampler, segment, segmenter_info
from dissect_kernels.ops.segment_stats import segment_stats

VALUE_QUANTILE = 0.99    # value="quantile": each unit's 0.99 quantile (GANPaint)


class GanSetup:
    """Validated generator/layer/segmenter/concept, z sampler and per-sample measurement.
    Construction runs sample 0 once (a probe) for the layer's units U, its grid and the
    segmentation's pixel count."""

    def __init__(self, generator, layer, segmenter, concept, *, seed, z_sampler, z_dim, device):
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be an nn.Module, got {type(generator).__name__}")
        self.spec = as_specs(generator, layer)[0]          # a module name or a dk.LayerSpec
        self.C, self.names, _, _ = segmenter_info(segmenter)
        if isinstance(concept, str):
            if concept not in self.names:
                raise ValueError(f"concept {concept!r} is not a segmenter class; classes: {self.names}")
            concept = self.names.index(concept)
        if not isinstance(concept, int) or not 0 <= concept < self.C:
            raise ValueError(f"concept must be a class name or an id in [0, {self.C}), got {concept!r}")
        self.generator, self.layer, self.segmenter, self.concept = generator, self.spec.key, segmenter, concept
        if device is None:
            device = next((p.device for p in generator.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.seed = seed
        self.z_of = make_z_sampler(generator, seed, z_dim, z_sampler, self.device)
        images, acts = self.run(self.z_of(torch.arange(1)))
        self.U, self.grid = acts.shape[1], tuple(acts.shape[2:])
        self.cells = self.grid[0] * self.grid[1]
        seg = segment(segmenter, images, self.C)
        self.pixels = seg.shape[-1] * seg.shape[-2]

    def key(self) -> dict:
        """What identifies this set-up in a checkpoint key."""
        return {"layer": repr(self.spec), "concept": self.concept, "seed": self.seed,
                "segmenter": [type(self.segmenter).__qualname__, self.C, self.names]}

    def run(self, z):
        """(images, layer output) of an unedited forward pass."""
        with torch.no_grad():
            acts, images = capture(self.generator, z, [LayerView.of(self.spec)],
                                   run_to_end=True, check_finite=False)
        return images, acts[self.layer]

    def count(self, images: torch.Tensor) -> torch.Tensor:
        """[B] int64 number of pixels the segmenter assigns to the concept (exact to sum)."""
        seg = segment(self.segmenter, images, self.C)
        return segment_stats(seg, self.C)[:, self.concept].long()

    def fraction(self, images: torch.Tensor) -> torch.Tensor:
        """[B] float64 fraction of pixels the segmenter assigns to the concept."""
        seg = segment(self.segmenter, images, self.C)
        counts = segment_stats(seg, self.C)[:, self.concept]
        return counts.double() / (seg.shape[-1] * seg.shape[-2])

    def presence(self, images, size) -> torch.Tensor:
        """[B, h, w] fraction of each feature cell's pixels that hold the concept."""
        seg = segment(self.segmenter, images, self.C)
        hit = (seg == self.concept).any(1, keepdim=True).float()
        return F.adaptive_avg_pool2d(hit, size)[:, 0]

    def check_units(self, units) -> list[int]:
        ids = [units] if isinstance(units, int) else [int(u) for u in units]
        if not ids:
            raise ValueError("units is empty")
        bad = [u for u in ids if not 0 <= u < self.U]
        if bad:
            raise ValueError(f"units {bad} are out of range: layer {self.layer!r} has {self.U} units "
                             f"(ids must lie in [0, {self.U}))")
        return ids

    def value_from(self, value, results) -> torch.Tensor:
        """The insertion value per unit [U] on the device: a number, a [U] tensor, or the
        statistic value_pass computed ("quantile" or "mean")."""
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
        return results["insertion value"]["value"].reshape(self.U).float().to(self.device)


def value_pass(st: GanSetup, value, num_samples: int) -> Pass | None:
    """The pass computing value="quantile" (each unit's 0.99 quantile over the samples' feature
    maps) or value="mean" (the concept-conditioned mean sum(feat * p) / sum(p), p = the
    concept's pixel fraction in each feature cell); None for a number or a tensor."""
    if value is None:
        value = "quantile"
    if isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool):
        return None
    if value == "quantile":
        return Pass("insertion value", lambda results: {"value": LayerQuantiles(
            st.layer, [VALUE_QUANTILE], samples=num_samples, min_quantile=VALUE_QUANTILE,
            device=st.device)})
    if value == "mean":
        return Pass("insertion value", lambda results: {"value": ConceptMean(st)})
    raise ValueError(f"value must be a number, a [U] tensor, 'quantile' or 'mean', got {value!r}")


class ConceptMean:
    """sum(feat * p) / sum(p) per unit, p = the concept's pixel fraction in each feature cell
    (float64 sums; merged in rank order)."""

    needs_output = True

    def __init__(self, st: GanSetup):
        self.st, self.layers = st, (st.layer,)
        self.num = torch.zeros(st.U, dtype=torch.float64)
        self.den = torch.zeros((), dtype=torch.float64)

    def update(self, step) -> None:
        acts = step.acts[self.st.layer]
        p = self.st.presence(step.output, tuple(acts.shape[2:]))              # [B, h, w]
        self.num = self.num + (acts.double() * p[:, None].double()).sum((0, 2, 3)).cpu()
        self.den = self.den + p.double().sum().cpu()

    def merge(self, other: "ConceptMean") -> None:
        self.num, self.den = self.num + other.num, self.den + other.den

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"num": self.num.clone(), "den": self.den.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.num, self.den = state["num"].double().cpu(), state["den"].double().cpu()

    def finalize(self) -> torch.Tensor:
        if float(self.den) == 0:
            raise ValueError(f"concept {self.st.names[self.st.concept]!r} never appears in the "
                             "samples; the concept-conditioned mean is undefined (pass value=...)")
        return (self.num / self.den).float()


def edit_positions(positions, idx: torch.Tensor, device):
    """positions [h, w] (all samples) or [num_samples, h, w] (per sample index) -> [B, h, w]."""
    if positions is None:
        return None
    if not isinstance(positions, torch.Tensor) or positions.dim() not in (2, 3):
        raise ValueError("positions must be a [h, w] or [num_samples, h, w] tensor (bool or float)")
    p = positions.to(device).float()
    return p[None].expand(len(idx), *p.shape) if p.dim() == 2 else p[idx.to(device)]
