"""What the painting page works on: a finished GAN dissection run (its summary.json), the
generator it dissected, each concept's units (the run's ACE ranking for its ACE concept, the
dissection's detectors labelled with the concept for the others), the insertion values k,
and the images of a sample with or without edits, as PNG."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dissect_kernels.engine.layers import as_specs, parse_layer
from dissect_kernels.generated import make_z_sampler
from dissect_kernels.io.atomic import read_json
from dissect_kernels.paint.edit import insertion_values, layer_activation, paint_edits

SUMMARY = "summary.json"
MAX_SAMPLE = 2 ** 31 - 1        # sample indices ("seeds") the page may ask for: [0, MAX_SAMPLE]


@dataclass
class Concept:
    """A concept the page offers: its units (layer indices) and where they come from."""
    name: str
    units: list[int]
    source: str                  # "ace" (the run's ranking) or "dissection" (its detectors)
    scores: list[float] = field(default_factory=list)


def read_run(run_dir) -> dict:
    """summary.json of a GAN dissection run folder (clear errors for anything else)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"--run {run_dir}: no {SUMMARY} there (run `dissect-kernels gan --out DIR` first)")
    summary = read_json(path, "run summary")
    if not isinstance(summary, dict) or summary.get("format") != "dissect_kernels.results":
        raise ValueError(f"{path} is not a dissect_kernels results summary")
    if (summary.get("dataset") or {}).get("kind") != "generated":
        raise ValueError(f"{path} is not a GAN dissection run (dataset kind "
                         f"{(summary.get('dataset') or {}).get('kind')!r}, expected 'generated')")
    return summary


def run_concepts(layer_summary: dict, unit_base: int = 0) -> dict[str, Concept]:
    """{concept: Concept} from one layer of summary.json: the ACE concept's top units with a
    positive effect, every other labelled concept's detector units by IoU (best first)."""
    rows = [r for r in layer_summary.get("unit_rows", []) if r.get("detector")]
    out: dict[str, Concept] = {}
    for r in sorted(rows, key=lambda r: -float(r["iou"])):
        c = out.setdefault(r["label"], Concept(r["label"], [], "dissection"))
        c.units.append(int(r["unit"]) - unit_base)
        c.scores.append(round(float(r["iou"]), 4))
    ace = (layer_summary.get("extra") or {}).get("ace")
    if ace:
        kept = [(int(u), float(a)) for u, a in zip(ace["top_units"], ace["top_ace"]) if a > 0]
        if kept:
            out[ace["concept"]] = Concept(ace["concept"], [u for u, _ in kept], "ace", [a for _, a in kept])
    names = layer_summary.get("concept_names") or []
    order = {n: i for i, n in enumerate(names)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def to_png(images: torch.Tensor) -> bytes:
    """PNG bytes of the first image of a [B, 3, H, W] batch in [-1, 1]."""
    x = ((images[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).cpu().numpy())).save(buf, format="PNG")
    return buf.getvalue()


class Painter:
    """A generator, its dissected layer, the run's concepts and k; sample images with edits."""

    def __init__(self, generator: nn.Module, layer, concepts: dict[str, Concept], values: torch.Tensor, *,
                 seed: int = 0, unit_base: int = 0, z_sampler=None, z_dim: int | None = None, device=None):
        self.generator, self.spec = generator.eval(), as_specs(generator, layer)[0]
        self.device = torch.device(device) if device is not None else \
            next((p.device for p in generator.parameters()), torch.device("cpu"))
        self.z_of = make_z_sampler(generator, seed, z_dim, z_sampler, self.device)
        self.concepts, self.values, self.seed, self.unit_base = concepts, values.to(self.device), seed, unit_base
        x = layer_activation(generator, self.spec, self.z(0))
        self.num_units, self.grid = int(x.shape[1]), (int(x.shape[2]), int(x.shape[3]))
        if self.values.shape != (self.num_units,):
            raise ValueError(f"values must hold one k per unit ({self.num_units}), got {tuple(self.values.shape)}")
        bad = {c.name: c.units for c in concepts.values() if any(not 0 <= u < self.num_units for u in c.units)}
        if bad:
            raise ValueError(f"the run names units outside the layer's {self.num_units} units: {bad} "
                             "(was it made with another generator or layer?)")
        with torch.no_grad():
            self.image_size = tuple(int(s) for s in generator(self.z(0)).shape[2:])

    def z(self, sample: int) -> torch.Tensor:
        return self.z_of(torch.tensor([int(sample)]))

    def render(self, sample: int, edits=()) -> bytes:
        """PNG of sample `sample` with the PaintEdits applied in order."""
        return to_png(paint_edits(self.generator, self.spec, self.z(sample), list(edits), self.values))

    def describe(self) -> dict:
        """What the page needs: layer, units, grid, image size, concepts, the sample range."""
        return {"layer": self.spec.key, "units": self.num_units, "unit_base": self.unit_base,
                "grid": list(self.grid), "image": list(self.image_size), "max_sample": MAX_SAMPLE,
                "concepts": [{"name": c.name, "units": [u + self.unit_base for u in c.units],
                              "source": c.source, "scores": c.scores} for c in self.concepts.values()]}


def load_painter(run_dir, generator: nn.Module | None = None, layer=None, *, value_samples: int = 64,
                 device=None, z_sampler=None, z_dim: int | None = None) -> Painter:
    """A Painter for a `dissect-kernels gan` run folder: the shipped tiny generator unless one
    is given; the run's first layer unless `layer` is; k from value_samples samples."""
    summary = read_run(run_dir)
    if generator is None:
        from dissect_kernels.models.tiny_gan import load_default_generator
        generator = load_default_generator()
    model = (summary.get("model") or {}).get("name")
    if model and model != type(generator).__name__:
        raise ValueError(f"run {run_dir} dissected {model!r}, not {type(generator).__name__!r}; "
                         "pass the same generator (--generator/--weights)")
    layers = summary.get("layers") or {}
    layer = layer if layer is not None else parse_layer(summary["parameters"]["layers"][0])
    spec = as_specs(generator, layer)[0]
    if spec.key not in layers:
        raise ValueError(f"run {run_dir} has no layer {spec.key!r}; it has {sorted(layers)}")
    seed = int((summary.get("dataset") or {}).get("seed", 0))
    unit_base = int(summary.get("unit_base", 0))
    values = insertion_values(generator, spec, num_samples=value_samples, seed=seed, z_sampler=z_sampler,
                              z_dim=z_dim, device=device)
    return Painter(generator, spec, run_concepts(layers[spec.key], unit_base), values, seed=seed,
                   unit_base=unit_base, z_sampler=z_sampler, z_dim=z_dim, device=device)
