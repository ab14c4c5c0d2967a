"""One batch as the accumulators see it (`Step`), and how the engine captures layers: views of
modules' outputs through Trace-style hooks, validated as finite [B, U, h, w] feature maps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from dissect_kernels import hooks
from dissect_kernels.engine.layers import LayerSpec, as_spec


@dataclass
class LayerView:
    """A captured feature map named `name`: module `module`'s output (or first input, with
    capture="input"), passed through `transform` (e.g. a rotation of the units) if given."""

    name: str
    module: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    capture: str = "output"

    def __post_init__(self):
        if self.capture not in ("output", "input"):
            raise ValueError(f"layer {self.name!r}: capture must be 'output' or 'input', "
                             f"got {self.capture!r}")

    @staticmethod
    def of(spec: "LayerSpec", name: str | None = None, then: Callable | None = None) -> "LayerView":
        """The view of a LayerSpec (its [B, U, h, w] map), optionally passed on through `then`.
        A plain module output (layout nchw, nothing selected) is passed on as it is."""
        plain = spec.layout == "nchw" and spec.select is None
        extract = None if plain else spec.extract
        if then is not None:
            extract = then if plain else (lambda raw: then(spec.extract(raw)))
        return LayerView(name or spec.key, spec.module, extract, spec.capture)


def as_views(layers) -> list[LayerView]:
    """Module names, LayerSpecs or LayerViews -> LayerViews, names unique."""
    views = [v if isinstance(v, LayerView) else LayerView.of(as_spec(v)) for v in layers]
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a name twice: {names}")
    return views


@dataclass
class Step:
    """A batch on the model's device: inputs, dataset indices [B], the source's extra fields
    (labels, image_labels, targets...), the captured views and (when some accumulator needs
    it) the model's output. `shared(key, fn)` computes something once per batch for every
    accumulator (e.g. label statistics that several layers' tallies use)."""

    model: nn.Module
    inputs: Any
    indices: torch.Tensor
    data: dict[str, Any]
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name):
        data = self.__dict__.get("data", {})
        if name in data:
            return data[name]
        raise AttributeError(f"this batch has no field {name!r} (it has {sorted(data)})")

    def shared(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


def check_features(layer: str, a, indices: torch.Tensor) -> None:
    """A captured map must be a finite floating-point [B, U, h, w] tensor; errors name the
    layer and the first sample with NaN/Inf."""
    check_map(layer, a)
    if a.numel() == 0 or bool(torch.isfinite(torch.stack([a.amax(), a.amin()])).all()):
        return                                       # NaN propagates through amax; no big temporaries
    bad = ~torch.isfinite(a).flatten(1).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        kind = "NaN" if bool(torch.isnan(a[row]).any()) else "Inf"
        units = (~torch.isfinite(a[row])).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"layer {layer!r} output contains {kind} values for image "
                         f"{int(indices[row])} (units {units[:8]}); dissection needs finite "
                         "activations")


def check_map(layer: str, a) -> None:
    """A captured map must be a floating-point [B, U, h, w] tensor (errors name the layer)."""
    if not isinstance(a, torch.Tensor) or not a.dtype.is_floating_point:
        what = a.dtype if isinstance(a, torch.Tensor) else type(a).__name__
        raise TypeError(f"layer {layer!r} outputs {what}; dissection needs a floating-point "
                        "[batch, units, height, width] feature map")
    if a.dim() != 4:
        raise ValueError(f"layer {layer!r} output has shape {tuple(a.shape)}; "
                         "dissection needs a [batch, units, height, width] feature map")


def capture(model: nn.Module, inputs, views: list[LayerView], *, run_to_end: bool,
            indices: torch.Tensor | None = None, check_finite: bool = True):
    """Run `model` on inputs with the views' modules hooked: (acts {view name: map}, output).
    Without run_to_end the pass stops right after the last hooked module (output None)."""
    modules = list(dict.fromkeys(v.module for v in views))
    retain_input = any(v.capture == "input" for v in views)
    if not modules:
        return {}, hooks.call_model(model, inputs) if run_to_end else None
    with hooks.TraceDict(model, modules, stop=not run_to_end, retain_input=retain_input) as traces:
        output = hooks.call_model(model, inputs)
    missing = [m for m in modules if traces[m].calls == 0]
    if missing:
        raise RuntimeError(f"layers {missing} did not run during the forward pass of "
                           f"{type(model).__name__}")
    idx = indices if indices is not None else torch.arange(_batch_size(inputs))
    acts = {}
    for v in views:
        raw = traces[v.module].input if v.capture == "input" else traces[v.module].output
        a = v.transform(raw) if v.transform is not None else raw
        check_features(v.name, a, idx) if check_finite else None
        acts[v.name] = a
    return acts, output if run_to_end else None


def _batch_size(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    first = next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
    return first.shape[0]
