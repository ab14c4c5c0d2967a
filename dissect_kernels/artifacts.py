"""Artifact units (GAN Dissection §4.3): given a per-image artifact score, rank a layer's units
by how they relate to it, ablate the top ones and measure the score before and after.

The score is a callable images -> [B] (higher = worse), or per-sample annotations (a CSV of
`sample,score` rows, e.g. a person's ratings of generated samples 0..N-1). Pass 1 accumulates
the Pearson correlation of each unit's mean activation with the score and, with a callable,
each unit's causal effect: E[score] - E[score with the unit ablated] (all U single-unit
ablations in one batched dk.intervene per batch); units are ranked by that effect (by the
correlation when only annotations are given, since an edited image has no annotation). Pass 2
ablates the top `ablate` units together and measures the score again (callable only)."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dissect_kernels.engine import CheckpointSpec, IndexSource, LayerView, Pass, capture, run_passes
from dissect_kernels.engine.layers import as_specs
from dissect_kernels.generated import make_z_sampler
from dissect_kernels.intervene import intervene


@dataclass
class ArtifactResult:
    """scores [N] float64 per sample (unedited); correlation [U]; effect [U] (None without a
    callable score); order [U] (by effect, else by correlation; ties: lower unit); the top
    `ablated` units and the mean score before / after ablating them (after: None without a
    callable score)."""

    layer: str
    num_samples: int
    ranking: str
    scores: torch.Tensor
    correlation: torch.Tensor
    effect: torch.Tensor | None
    order: torch.Tensor
    ablated: list[int]
    score_before: float
    score_after: float | None
    score_name: str = ""

    def to_json(self) -> dict:
        """The documented artifacts.json (docs/gan.md)."""
        r = lambda x: None if x is None or x != x else round(float(x), 6)  # noqa: E731  (NaN -> None)
        top = self.scores.argsort(descending=True, stable=True)[:8].tolist()
        return {"kind": "artifact_units", "layer": self.layer, "num_samples": self.num_samples,
                "score": self.score_name, "ranking": self.ranking, "ablated_units": self.ablated,
                "score_before": r(self.score_before), "score_after": r(self.score_after),
                "units": [{"unit": int(u), "rank": i + 1, "correlation": r(self.correlation[u]),
                           "effect": None if self.effect is None else r(self.effect[u])}
                          for i, u in enumerate(self.order.tolist())],
                "worst_samples": [{"sample": i, "score": r(self.scores[i])} for i in top]}


def read_annotations(path) -> dict[int, float]:
    """A per-sample annotation CSV: header `sample,score`, one row per generated sample index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    out: dict[int, float] = {}
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or not {"sample", "score"} <= set(rows.fieldnames):
            raise ValueError(f"{path}: the header must name the columns 'sample' and 'score', got {rows.fieldnames}")
        for line, row in enumerate(rows, 2):
            try:
                i, s = int(row["sample"]), float(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: sample must be an int and score a number, got "
                                 f"{row['sample']!r}, {row['score']!r}") from None
            if i < 0 or i in out or s != s:
                raise ValueError(f"{path}:{line}: sample {i} is negative, repeated, or its score is NaN")
            out[i] = s
    if not out:
        raise ValueError(f"{path}: no annotated samples")
    return out


class ScoreStats:
    """Pass 1: per-sample scores, Pearson sums of (unit mean activation, score) and, with a
    callable score, the summed score of every single-unit ablation (float64 sums)."""

    needs_output = True

    def __init__(self, spec, score, num_samples: int, chunk_size: int | None):
        self.spec, self.score, self.chunk_size, self.layers = spec, score, chunk_size, (spec.key,)
        self.state = {"scores": torch.zeros(num_samples, dtype=torch.float64)}

    def update(self, step) -> None:
        x = step.acts[self.spec.key].double().mean((2, 3)).cpu()                    # [B, U]
        y = score_of(self.score, step.output, step.indices)
        s = self.state
        if "sx" not in s:
            U = x.shape[1]
            s.update(n=torch.zeros((), dtype=torch.float64), sy=torch.zeros((), dtype=torch.float64),
                     syy=torch.zeros((), dtype=torch.float64), **{k: torch.zeros(U, dtype=torch.float64)
                                                                for k in ("sx", "sxx", "sxy", "ablated")})
        s["scores"][step.indices.cpu()] = y
        s["n"] += len(y)
        s["sy"] += y.sum()
        s["syy"] += (y * y).sum()
        s["sx"] += x.sum(0)
        s["sxx"] += (x * x).sum(0)
        s["sxy"] += (x * y[:, None]).sum(0)
        if callable(self.score):
            sets = torch.arange(x.shape[1], device=step.output.device)[:, None]
            m = intervene(step.model, self.spec, sets, step.inputs, mode="ablate", chunk_size=self.chunk_size,
                          measure=lambda im: score_of(self.score, im, None))
            s["ablated"] += m.sum(1).cpu()

    def merge(self, other: "ScoreStats") -> None:
        for k, v in other.state.items():
            self.state[k] = self.state[k] + v if k in self.state else v.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.double().cpu().clone() for k, v in state.items()}

    def finalize(self) -> dict[str, torch.Tensor]:
        return self.state_dict()


class AblatedScore:
    """Pass 2: the summed score with one unit set ablated."""

    needs_output = True

    def __init__(self, spec, score, units: list[int]):
        self.spec, self.score, self.units, self.layers = spec, score, units, (spec.key,)
        self.total = torch.zeros((), dtype=torch.float64)

    def update(self, step) -> None:
        m = intervene(step.model, self.spec, [self.units], step.inputs, mode="ablate",
                      measure=lambda im: score_of(self.score, im, None))
        self.total = self.total + m.sum().cpu()

    def merge(self, other: "AblatedScore") -> None:
        self.total = self.total + other.total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.total = state["total"].double().cpu().clone()

    def finalize(self) -> torch.Tensor:
        return self.total.clone()


def score_of(score, images: torch.Tensor, indices) -> torch.Tensor:
    """[B] float64 CPU scores: score(images) for a callable, else the annotations of `indices`."""
    if callable(score):
        with torch.no_grad():
            y = score(images)
        if not isinstance(y, torch.Tensor) or y.shape != (images.shape[0],):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"the artifact score must return one number per image, shape "
                             f"[{images.shape[0]}], got {got}")
        return y.detach().double().cpu()
    missing = [i for i in indices.tolist() if i not in score]
    if missing:
        raise ValueError(f"the annotations have no score for samples {missing[:5]} (they must cover "
                         "samples 0 .. num_samples-1)")
    return torch.tensor([score[i] for i in indices.tolist()], dtype=torch.float64)


def pearson(s: dict) -> torch.Tensor:
    """[U] correlation of each unit's mean activation with the score (0 where either is constant)."""
    n = s["n"]
    cov = s["sxy"] - s["sx"] * s["sy"] / n
    vx, vy = s["sxx"] - s["sx"] ** 2 / n, s["syy"] - s["sy"] ** 2 / n
    den = (vx.clamp(min=0) * vy.clamp(min=0)).sqrt()
    return torch.where(den > 1e-12, cov / den.clamp(min=1e-300), torch.zeros_like(cov))


def _ranked(stats: dict, causal: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(correlation, effect or None, order: largest first, ties -> lower unit)."""
    corr = pearson(stats)
    effect = (stats["sy"] - stats["ablated"]) / stats["n"] if causal else None
    key = effect if causal else corr
    return corr, effect, torch.sort(-key, stable=True).indices


def artifact_units(generator, layer, score: "Callable | str | Path | dict", *, num_samples: int = 64,
                   ablate: int = 3, seed: int = 0, batch_size: int = 16, chunk_size: int | None = None,
                   z_sampler: Callable | None = None, z_dim: int | None = None, device=None,
                   progress: bool = False, checkpoint_dir=None, checkpoint_interval: float = 120.0,
                   resume: bool = True) -> ArtifactResult:
    """Rank `layer`'s units by their relation to an artifact score and ablate the top `ablate`
    (see the module docstring). score: a callable images -> [B] (higher = more artifact), an
    annotation CSV path (read_annotations) or a {sample: score} dict covering samples
    0..num_samples-1. z as in dissect_generator. checkpoint_dir: checkpoint there."""
    spec = as_specs(generator, layer)[0]
    name = f"annotations {Path(score).name}" if isinstance(score, (str, Path)) else \
        getattr(score, "__qualname__", type(score).__name__) if callable(score) else "annotations"
    if isinstance(score, (str, Path)):
        score = read_annotations(score)
    if not callable(score) and not isinstance(score, dict):
        raise TypeError(f"score must be a callable, an annotation CSV path or a dict, got {type(score).__name__}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    dev = torch.device(device) if device is not None else next(
        (p.device for p in generator.parameters()), torch.device("cpu"))
    z_of = make_z_sampler(generator, seed, z_dim, z_sampler, dev)
    with torch.no_grad():
        U = capture(generator, z_of(torch.arange(1)), [LayerView.of(spec)], run_to_end=False,
                    check_finite=False)[0][spec.key].shape[1]
    if not isinstance(ablate, int) or not 0 < ablate <= U:
        raise ValueError(f"ablate must be an int in [1, {U}] (the layer's units), got {ablate!r}")
    causal = callable(score)
    passes = [Pass("scores", lambda results: {"stats": ScoreStats(spec, score, num_samples, chunk_size)})]
    if causal:
        passes.append(Pass("ablated", lambda results: {"total": AblatedScore(
            spec, score, _ranked(results["scores"]["stats"], True)[2][:ablate].tolist())}))
    ckpt = None if checkpoint_dir is None else CheckpointSpec(checkpoint_dir, "artifacts", dict(
        layer=repr(spec), seed=seed, num_samples=num_samples, ablate=ablate, batch_size=batch_size,
        score=getattr(score, "__qualname__", repr(type(score))) if causal else
        hashlib.sha256(repr(sorted(score.items())).encode()).hexdigest()),
        checkpoint_interval, resume)
    out = run_passes(generator, IndexSource(num_samples, z_of, batch_size=batch_size), passes,
                     layers=[spec], device=dev, progress=progress, checkpoint=ckpt, check_finite=False,
                     desc="artifacts")
    stats = out.results["scores"]["stats"]
    corr, effect, order = _ranked(stats, causal)
    after = float(out.results["ablated"]["total"]) / num_samples if causal else None
    return ArtifactResult(spec.key, num_samples, "ablation" if causal else "correlation", stats["scores"],
                          corr, effect, order, order[:ablate].tolist(), float(stats["sy"]) / num_samples, after,
                          name)


def ablation_examples(generator, layer, units: list[int], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images of z unedited, images of z with `units` of `layer` ablated), for the report."""
    spec = as_specs(generator, layer)[0]
    with torch.no_grad():
        return generator(z), intervene(generator, spec, [units], z, mode="ablate")[0]
