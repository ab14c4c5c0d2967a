"""Trace-style hooks: retain and edit any named submodule's input/output, stop a forward pass
early, run a model up to some layers. Hooks are always removed on exit, even after errors."""
from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["StopForward", "Edit", "Trace", "TraceDict", "get_module", "run_layers", "call_model"]


class StopForward(Exception):
    """Raised inside a hook to end the forward pass right after a traced layer; the Trace or
    TraceDict that asked for the stop swallows it on exit."""


def get_module(model: nn.Module, name: "str | nn.Module") -> nn.Module:
    """The submodule called `name` (as in model.named_modules()); a module passes through.
    A missing name raises LookupError listing the closest existing names."""
    if isinstance(name, nn.Module):
        return name
    if not isinstance(name, str):
        raise TypeError(f"layer must be a module name (str) or an nn.Module, got {type(name).__name__}")
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
    raise LookupError(f"layer {name!r} is not a submodule of {type(model).__name__}{hint} "
                      f"(its modules are: {shown})")


@dataclass
class Edit:
    """The intervention rule x <- x*(1-alpha) + value*alpha (GAN Dissection): tensors (moved
    to the output's device; a 1-D one of length U is per unit) or floats. Ablation: value=0;
    insertion: value=k. Runs through dk.edit (fused, fp32 arithmetic, x's dtype out)."""

    alpha: Any = 1.0
    value: Any = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from dissect_kernels.ops.edit import edit
        return edit(x, _on(self.alpha, x.device), _on(self.value, x.device))


def _on(t, device):
    return t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t


def _keep(value, detach: bool, clone: bool):
    """What a trace retains: tensors (inside tuples/lists/dicts too) detached and/or cloned."""
    if isinstance(value, torch.Tensor):
        if detach:
            value = value.detach()
        return value.clone() if clone else value
    if isinstance(value, (tuple, list)):
        return type(value)(_keep(v, detach, clone) for v in value)
    if isinstance(value, dict):
        return {k: _keep(v, detach, clone) for k, v in value.items()}
    return value


class Trace:
    """Context manager hooking one layer of `model` (a name or a submodule).

    .output is the layer's *pre-edit* output, .input its first argument (or first keyword
    argument when called with keywords only); detach/clone apply to both (clone=True guards
    against later in-place ops such as ReLU(inplace=True)). `edit` is an Edit or any callable
    output -> new output. stop=True ends the forward pass right after the layer (StopForward,
    swallowed on exit). .calls counts how often the layer ran. Hooks use with_kwargs, so
    modules called with keyword arguments work."""

    def __init__(self, model: nn.Module, layer: "str | nn.Module", *, retain_output: bool = True,
                 retain_input: bool = False, detach: bool = True, clone: bool = False,
                 stop: bool = False, edit: "Edit | Callable | None" = None):
        if edit is not None and not callable(edit):
            raise TypeError(f"edit must be an Edit or a callable output -> output, got {type(edit).__name__}")
        self.layer = layer if isinstance(layer, str) else type(layer).__name__
        self.module = get_module(model, layer)
        self.retain_output, self.retain_input = retain_output, retain_input
        self.detach, self.clone, self.stop, self.edit = detach, clone, stop, edit
        self.output = None
        self.input = None
        self.calls = 0
        self._after: Callable[["Trace"], None] | None = None
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.calls += 1
        if self.retain_input:
            first = args[0] if args else next(iter(kwargs.values()), None)
            self.input = _keep(first, self.detach, self.clone)
        if self.retain_output:
            self.output = _keep(output, self.detach, self.clone)
        if self.edit is not None:
            if isinstance(self.edit, Edit) and not isinstance(output, torch.Tensor):
                raise TypeError(f"Edit on layer {self.layer!r} needs a tensor output, got "
                                f"{type(output).__name__}; pass a callable that edits it instead")
            output = self.edit(output)
        if self.stop:
            raise StopForward(self.layer)
        if self._after is not None:
            self._after(self)
        return output if self.edit is not None else None

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        self._handle.remove()

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return bool(self.stop and exc_type is not None and issubclass(exc_type, StopForward))


class TraceDict(OrderedDict):
    """Several Traces at once: a mapping layer name -> Trace (in the order given). edits maps
    layer names to Edit/callables. With stop=True the forward pass ends right after the last
    of the listed layers to run (whatever the listing order), by StopForward, swallowed on exit."""

    def __init__(self, model: nn.Module, layers: "str | Iterable[str]", *, stop: bool = False,
                 edits: Mapping[str, Any] | None = None, retain_output: bool = True,
                 retain_input: bool = False, detach: bool = True, clone: bool = False):
        super().__init__()
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not all(isinstance(n, str) for n in layers):
            raise TypeError(f"layers must be module names (str), got {layers}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a name twice: {layers}")
        edits = dict(edits or {})
        extra = [k for k in edits if k not in layers]
        if extra:
            raise ValueError(f"edits names layers {extra} that are not in layers {layers}")
        self.stop = stop
        self._pending = set(layers)
        try:
            for name in layers:
                trace = Trace(model, name, retain_output=retain_output, retain_input=retain_input,
                              detach=detach, clone=clone, edit=edits.get(name))
                trace._after = self._seen
                self[name] = trace
        except BaseException:
            self.close()
            raise

    def _seen(self, trace: Trace) -> None:
        self._pending.discard(trace.layer)
        if self.stop and not self._pending:
            raise StopForward(trace.layer)

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        for trace in self.values():
            trace.close()

    def __enter__(self) -> "TraceDict":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return bool(self.stop and exc_type is not None and issubclass(exc_type, StopForward))


def call_model(model: nn.Module, inputs):
    """model(inputs); a tuple/list is passed as positional arguments, a dict as keywords."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def run_layers(model: nn.Module, x, layers: "str | Iterable[str]") -> dict[str, torch.Tensor]:
    """Run `model` on x (tensor; tuple = positional args; dict = keyword args) only as far as
    needed and return {layer: detached output} for every listed layer."""
    names = [layers] if isinstance(layers, str) else list(layers)
    with TraceDict(model, names, stop=True) as traces:
        call_model(model, x)
    missing = [n for n in names if traces[n].calls == 0]
    if missing:
        raise RuntimeError(f"layers {missing} did not run during the forward pass of {type(model).__name__}")
    return {n: traces[n].output for n in names}
