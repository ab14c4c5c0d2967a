"""What every analysis shares: derived views (accumulators fed a step computed from the captured
one: a rotated layer, one perturbation's rows of a stacked batch), dissection plans over such
views, one checkpointed run of the pass engine, and the files every analysis writes
(`<out>/<name>.json` and a page on the run's report site)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from dissect_kernels.dissect_plan import Plan, make_plan
from dissect_kernels.engine import CheckpointSpec, LayerView, Pass, Step, dataset_identity, run_passes
from dissect_kernels.engine.protocol import layers_of, needs_labels, needs_output


class Derived:
    """An accumulator fed a derived step: derive(step) -> Step, computed once per batch for every
    accumulator sharing `key` (a rotation of a layer, a perturbation's rows), so the inner
    accumulator (LayerQuantiles, LayerTally, ...) runs unchanged on views the engine never
    captured. `reads`: the captured views derive() reads."""

    def __init__(self, inner, key: str, reads: tuple[str, ...], derive: Callable[[Step], Step]):
        self.inner, self.key, self.layers, self.derive = inner, key, tuple(reads), derive
        self.needs_output, self.needs_labels = needs_output(inner), needs_labels(inner)

    def update(self, step: Step) -> None:
        self.inner.update(step.shared(f"derived/{self.key}", lambda: self.derive(step)))

    def merge(self, other: "Derived") -> None:
        self.inner.merge(other.inner)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    def finalize(self):
        return self.inner.finalize()


def derived_step(step: Step, acts: dict, *, rows=None, data: dict | None = None, share_cache: bool = False) -> Step:
    """A Step holding `acts`, optionally only the batch rows `rows` (a slice) of the step's
    indices, data fields and output; share_cache keeps the parent's per-batch shared values
    (valid when the labels are the parent's)."""
    pick = (lambda v: v) if rows is None else \
        (lambda v: v[rows] if isinstance(v, torch.Tensor) and v.dim() else v)
    fields = {k: pick(v) for k, v in step.data.items()} if data is None else data
    out = Step(step.model, step.inputs if rows is None else None, pick(step.indices), fields, acts,
               None if step.output is None else pick(step.output))
    if share_cache:
        out._cache = step._cache
    return out


def wrap_pass(p: Pass, derivations: dict[str, tuple[str, tuple[str, ...], Callable]]) -> Pass:
    """The pass with every accumulator that reads a derived view (view name -> (key, reads,
    derive)) wrapped in Derived."""
    def build(results):
        out = {}
        for name, acc in p.build(results).items():
            view = next(iter(layers_of(acc)), None)
            out[name] = Derived(acc, *derivations[view]) if view in derivations else acc
        return out
    return Pass(p.name, build, p.source)


def dissection_plan(model, layers, dataset, *, convention="exact", quantile=None, backend="auto",
                    device=None, batch_size: int = 32, thresholds=None) -> Plan:
    """A dissection Plan (dissect_plan.make_plan) without exemplars or rotation views."""
    return make_plan(model, layers, dataset, convention=convention, quantile=quantile, geometry=None,
                     receptive_fields=None, top_k=1, quantile_mode="auto", backend=backend, device=device,
                     exemplars=False, rotation=None, batch_size=batch_size, thresholds=thresholds)


def with_views(plan: Plan, views: list[LayerView]) -> Plan:
    """The plan's accumulators built for `views` instead of its captured ones."""
    return replace(plan, views=list(views), rotated={}, max_bytes={}, estimate={})


def run_analysis(model, source, passes, *, views, name: str, out_dir=None, key: dict | None = None,
                 device=None, progress: bool = True, interval: float = 120.0, resume: bool = True,
                 annotate=None, finish=None, cache_bytes: int | None = None, desc: str = ""):
    """run_passes with the analysis' checkpoint (out_dir/.checkpoint/analyze-<name>, keyed by the
    model's weights plus `key`); returns finish(output) or the RunOutput."""
    ckpt = None
    if out_dir is not None:
        from dissect_kernels.io import ensure_dir
        ensure_dir(out_dir)
        ckpt = CheckpointSpec(out_dir, f"analyze-{name}", dict(key or {}, analysis=name), interval, resume)
    return run_passes(model, source, passes, layers=views, device=device, progress=progress,
                      checkpoint=ckpt, annotate=annotate, finish=finish, cache_bytes=cache_bytes,
                      desc=desc or name)


def data_key(dataset) -> dict:
    """What of the dataset decides an analysis' results (for checkpoint keys)."""
    try:
        return dataset_identity(dataset)
    except (AttributeError, TypeError, OSError):
        return {"type": type(dataset).__name__, "len": len(dataset)}


def concept_ids(dataset, names) -> list[int]:
    """Concept names -> ids of `dataset`; a clear error naming the missing ones."""
    known = list(dataset.concept_names)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"concepts {missing} are not in the dataset (it has {len(known) - 1} concepts, "
                         f"e.g. {', '.join(n for n in known[1:9])})")
    return [known.index(n) for n in names]


def presence(labels: torch.Tensor, image_labels, ids: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: concept ids[t] is in image b (any pixel of any label layer, or an image label)."""
    flat = labels.reshape(labels.shape[0], -1)
    if image_labels is not None:
        flat = torch.cat([flat, image_labels.reshape(labels.shape[0], -1).to(flat.dtype)], 1)
    ids = ids.to(flat.device, flat.dtype)
    return torch.stack([(flat == c).any(1) for c in ids.tolist()], 1) if ids.numel() else \
        torch.zeros(labels.shape[0], 0, dtype=torch.bool, device=flat.device)


def unit_record(layer: str, unit: int, **fields) -> dict:
    """A per-unit JSON record: the layer name and 0-based unit index first, floats made JSON-safe."""
    return {"layer": layer, "unit": int(unit), **{k: jsonable(v) for k, v in fields.items()}}


def jsonable(v):
    """Tensors/numpy scalars -> Python; NaN and inf -> None (JSON has neither)."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if hasattr(v, "item") and not isinstance(v, (list, dict)):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def header(name: str, model, dataset, parameters: dict) -> dict:
    """The common head of every <name>.json."""
    from dissect_kernels._version import __version__
    return {"analysis": name, "version": __version__, "model": type(model).__name__ if model is not None else None,
            "dataset": {"type": type(dataset).__name__, "images": len(dataset),
                        "root": str(getattr(dataset, "root", ""))} if dataset is not None else None,
            "parameters": jsonable(parameters)}


def write_analysis(out_dir, name: str, record: dict, title: str, body: str, summary: str = "") -> Path:
    """Write <out>/<name>.json (atomically) and register <name>.html on the run's report site."""
    from dissect_kernels.io import atomic_write, ensure_dir, write_json
    from dissect_kernels.report.site import add_page
    out = ensure_dir(out_dir)
    atomic_write(out, {f"{name}.json": lambda p: write_json(p, jsonable(record))})
    add_page(out, f"{name}.html", title, body, section="Analyses", summary=summary)
    return out / f"{name}.json"
