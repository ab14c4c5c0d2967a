"""Batched intervention: evaluate S unit sets (ablation or insertion, optionally at chosen
positions) on one batch in one forward pass. The classifier ablation experiment built on it
lives in dissect_kernels/ablation.py."""
from __future__ import annotations

import copy
import numbers
from typing import Callable

import torch
from torch import nn

from dissect_kernels import hooks
from dissect_kernels.engine.layers import LayerSpec, as_spec
from dissect_kernels.ops.edit import edit, edit_

__all__ = ["intervene", "unit_masks"]


def unit_masks(unit_sets, num_units: int, device=None) -> torch.Tensor:
    """Unit sets -> float32 alpha [S, U]. Accepts a list of sets (each an int, a sequence or
    1-D int tensor of unit ids; ragged is fine), an int tensor [S] (one unit each) or [S, k],
    or a bool/float tensor [S, U] used as the mask (soft alpha; gradients flow through it)."""
    if isinstance(unit_sets, torch.Tensor):
        t = unit_sets.to(device) if device is not None else unit_sets
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            if t.dim() != 2 or t.shape[1] != num_units:
                raise ValueError(f"unit_sets as a mask must have shape [S, {num_units}] (the layer's "
                                 f"units), got {tuple(t.shape)}")
            return t.float()
        if t.dim() not in (1, 2):
            raise ValueError(f"unit_sets as unit ids must be [S] or [S, k], got shape {tuple(t.shape)}")
        ids = t.long().reshape(t.shape[0], -1)
        check_unit_ids(ids, num_units)
        return torch.zeros(ids.shape[0], num_units, device=ids.device).scatter_(1, ids, 1.0)
    if not isinstance(unit_sets, (list, tuple)):
        raise TypeError(f"unit_sets must be a list of unit-id sets or a tensor, got {type(unit_sets).__name__}")
    rows, cols = [], []
    for s, units in enumerate(unit_sets):
        if isinstance(units, torch.Tensor):
            units = units.reshape(-1).tolist()
        ids = torch.as_tensor([units] if isinstance(units, numbers.Integral) else list(units), dtype=torch.int64)
        rows.append(torch.full_like(ids, s))
        cols.append(ids)
    cols = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    check_unit_ids(cols, num_units)
    mask = torch.zeros(len(unit_sets), num_units)
    if cols.numel():
        mask[torch.cat(rows), cols] = 1.0
    return mask.to(device) if device is not None else mask


def check_unit_ids(ids: torch.Tensor, num_units: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_units):
        raise ValueError(f"unit_sets holds unit ids in [{int(ids.min())}, {int(ids.max())}] but the "
                         f"layer has {num_units} units (ids must lie in [0, {num_units}))")


def _batch_size(inputs) -> int:
    first = inputs
    if isinstance(inputs, (tuple, list)):
        first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    elif isinstance(inputs, dict):
        first = next((t for t in inputs.values() if isinstance(t, torch.Tensor)), None)
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise TypeError("inputs must be a batched tensor, or a tuple/dict holding one")
    return first.shape[0]


def _repeat_inputs(inputs, c: int, B: int):
    rep = lambda t: t.repeat(c, *[1] * (t.dim() - 1)) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == B else t  # noqa: E731
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(rep(t) for t in inputs)
    if isinstance(inputs, dict):
        return {k: rep(t) for k, t in inputs.items()}
    return rep(inputs)


class _Plan:
    """Per-chunk alpha and value for the layer's output, built once its shape is known."""

    def __init__(self, unit_sets, values, positions, layer: str):
        self.unit_sets, self.values, self.positions, self.layer = unit_sets, values, positions, layer
        self.alpha_units = None

    def prepare(self, out: torch.Tensor, B: int) -> None:
        if self.alpha_units is not None:
            return
        if out.dim() < 2:
            raise ValueError(f"layer {self.layer!r} outputs shape {tuple(out.shape)}; intervene needs [B, U, ...]")
        U, spatial = out.shape[1], tuple(out.shape[2:])
        try:
            self.alpha_units = unit_masks(self.unit_sets, U, out.device)
        except ValueError as err:
            raise ValueError(f"layer {self.layer!r}: {err}") from err
        S = self.alpha_units.shape[0]
        p = self.positions
        if p is not None:
            p = p.to(out.device)
            k = len(spatial)
            ok = k > 0 and p.dim() in (k + 1, k + 2) and tuple(p.shape[-k:]) == spatial and (
                p.shape[-k - 1] in (1, B)) and (p.dim() == k + 1 or p.shape[0] in (1, S))
            if not ok:
                raise ValueError(f"positions must have shape [B, *spatial] = {[B, *spatial]} or "
                                 f"[S, B, *spatial] = {[S, B, *spatial]} for layer {self.layer!r} "
                                 f"(output {tuple(out.shape)}), got {tuple(p.shape)}")
            p = p.float().reshape((-1, p.shape[-k - 1], 1) + spatial)  # [S|1, B|1, 1, *spatial]
        self.pos = p
        v = self.values
        if isinstance(v, torch.Tensor):
            v = v.to(out.device)
            if v.dim() == out.dim() and v.shape[0] not in (1,):
                if v.shape[0] != B:
                    raise ValueError(f"values of shape {tuple(v.shape)} must have batch size 1 or {B}")
                self.value_per_sample = True
            else:
                self.value_per_sample = False
        else:
            self.value_per_sample = False
        self.v = v

    def chunk(self, s0: int, s1: int, out: torch.Tensor, B: int):
        """alpha, value for sets s0..s1 on the replicated output [(s1-s0)*B, U, ...]."""
        c, rest = s1 - s0, out.shape[2:]
        a = self.alpha_units[s0:s1].reshape((c, 1, -1) + (1,) * len(rest))  # [c, 1, U, 1..]
        if self.pos is not None:
            pos = self.pos if self.pos.shape[0] == 1 else self.pos[s0:s1]
            a = a * pos
        a = a.expand((c, B) + tuple(a.shape[2:])).reshape((c * B,) + tuple(a.shape[2:]))
        v = self.v
        if self.value_per_sample:
            v = v.unsqueeze(0).expand((c,) + tuple(v.shape)).reshape((c * B,) + tuple(v.shape[1:]))
        return a, v


def intervene(model: nn.Module, layer: "str | LayerSpec", unit_sets, inputs, *, mode: str = "ablate",
              values=None, positions: torch.Tensor | None = None,
              measure: Callable | None = None, chunk_size: int | None = None,
              replicate: str = "output") -> torch.Tensor:
    """Evaluate S unit sets on one batch: returns measure(output) as [S, B, ...].

    The model runs up to `layer` once per chunk of sets, the layer's output is replicated for
    the chunk's sets (batch c*B, set-major), each copy is edited with dk.edit (alpha = unit set
    x positions; value 0 for mode="ablate", `values` for "insert": a number, [U], or a tensor
    broadcastable to one sample's output, optionally with batch B) and the rest of the network
    runs on the replicated batch. Equals a loop of Trace(edit=Edit(alpha_s, value)) runs, one
    set at a time, exactly when the model is in eval mode and per-sample (no cross-sample ops).
    unit_sets: see unit_masks. positions: [B, *spatial] or [S, B, *spatial] (bool/float).
    layer: a module name (its output [B, U, ...] of any rank), or a dk.LayerSpec: the edit then
    applies to the spec's [B, U, h, w] view (token and NHWC layouts, a tensor selected from a
    tuple/dict output), and everything outside it (class and register tokens) stays as it is.
    measure(output) -> per-sample tensor with leading dim c*B (default: the output itself).
    chunk_size bounds the sets per forward pass. replicate="input" repeats the inputs instead
    (for networks whose later layers reuse activations from before `layer`, e.g. skips).
    It works on exactly the inputs it is given (no sharding, no collectives, even under
    torch.distributed); the drivers built on it (ace, rank_units_by_ace, classifier_ablation) shard.
    """
    spec = as_spec(layer)
    module = hooks.get_module(model, spec.module)
    if spec.capture != "output":
        raise ValueError(f"layer {spec.key!r}: intervene edits a module's output, not its input")
    values = _check_args(mode, replicate, values, positions, unit_sets, chunk_size)
    S = len(unit_sets)
    c_max = S if chunk_size is None else min(chunk_size, S)
    B = _batch_size(inputs)
    plan = _Plan(unit_sets, values, positions, spec.key)
    results = []
    for s0 in range(0, S, c_max):
        s1 = min(S, s0 + c_max)
        output = _run_chunk(model, module, spec, plan, inputs, s0, s1, B, replicate)
        m = (measure or (lambda out: out))(output)
        c = s1 - s0
        if not isinstance(m, torch.Tensor) or m.dim() == 0 or m.shape[0] != c * B:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"measure must return a tensor with one row per sample ({c * B} rows "
                             f"for {c} sets x batch {B}), got {shape}")
        results.append(m.reshape((c, B) + tuple(m.shape[1:])))
    return torch.cat(results) if len(results) > 1 else results[0]


def _check_args(mode, replicate, values, positions, unit_sets, chunk_size):
    """Clear errors for intervene's arguments; returns the value to write (0 for ablation)."""
    if mode not in ("ablate", "insert"):
        raise ValueError(f"mode must be 'ablate' or 'insert', got {mode!r}")
    if replicate not in ("output", "input"):
        raise ValueError(f"replicate must be 'output' or 'input', got {replicate!r}")
    if values is None:
        if mode == "insert":
            raise ValueError("mode='insert' needs values (a number, a [U] tensor, or a tensor "
                             "broadcastable to the layer's output)")
        values = 0.0
    if positions is not None and not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a tensor or None, got {type(positions).__name__}")
    if not isinstance(unit_sets, (list, tuple, torch.Tensor)):
        raise TypeError(f"unit_sets must be a list of unit-id sets or a tensor, got {type(unit_sets).__name__}")
    if len(unit_sets) == 0:
        raise ValueError("unit_sets is empty")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return values


def _edit_hook(plan: "_Plan", spec, s0: int, s1: int, B: int, replicate: str, calls: list):
    """The forward hook that replicates the layer's output for sets s0..s1 and edits each copy
    (through the LayerSpec's [B, U, h, w] view when one is given: other tokens stay as they are)."""
    c, layer = s1 - s0, spec.key
    batch_dim = 1 if spec.layout == "tokens_seq_first" else 0
    whole = spec.layout == "nchw"                 # the edited view is the whole tensor

    def hook(mod, args, kwargs, out):
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError(f"layer {layer!r} ran more than once in one forward pass; "
                               "intervene needs a layer that runs once")
        raw = spec.pick(out)
        if not isinstance(raw, torch.Tensor) or not raw.dtype.is_floating_point:
            raise TypeError(f"layer {layer!r} must output a float tensor, got {type(raw).__name__}")
        view = raw if whole else spec.to_nchw(raw)
        expect = B if replicate == "output" else c * B
        if view.shape[0] != expect:
            raise ValueError(f"layer {layer!r} output has batch {view.shape[0]}, expected {expect}")
        plan.prepare(view, B)
        a, v = plan.chunk(s0, s1, view, B)
        grad = torch.is_grad_enabled() and (raw.requires_grad or a.requires_grad or
                                            (isinstance(v, torch.Tensor) and v.requires_grad))
        base = raw if replicate == "input" else raw.repeat(
            tuple(c if d == batch_dim else 1 for d in range(raw.dim())))
        if whole:
            new = edit(base, a, v) if replicate == "input" or grad else edit_(base, a, v)
        elif replicate == "input" or grad:
            new = base.clone()
            spec.to_nchw(new).copy_(edit(spec.to_nchw(base), a, v))
        else:
            new = base
            edit_(spec.to_nchw(base), a, v)
        return _with_selected(out, spec.select, new)
    return hook


def _with_selected(out, select, new: torch.Tensor):
    """The module's output with its selected tensor replaced by `new`."""
    if select is None:
        return new
    if isinstance(out, tuple):
        return tuple(new if i == select else t for i, t in enumerate(out))
    if isinstance(out, list):
        return [new if i == select else t for i, t in enumerate(out)]
    replaced = copy.copy(out)
    if isinstance(out, dict):
        replaced[select] = new
    else:
        setattr(replaced, select, new)
    return replaced


def _run_chunk(model, module, spec, plan, inputs, s0: int, s1: int, B: int, replicate: str):
    """The model's output with sets s0..s1 applied (one forward pass on the replicated batch)."""
    calls, layer = [0], spec.key
    handle = module.register_forward_hook(_edit_hook(plan, spec, s0, s1, B, replicate, calls),
                                          with_kwargs=True)
    try:
        run_inputs = inputs if replicate == "output" else _repeat_inputs(inputs, s1 - s0, B)
        try:
            output = hooks.call_model(model, run_inputs)
        except RuntimeError as e:
            if replicate == "output" and "size of tensor" in str(e):
                raise RuntimeError(f"{e}\n(intervene: layers after {layer!r} seem to combine its "
                                   "replicated output with activations from before it, e.g. a skip "
                                   "connection; pass replicate='input')") from e
            raise
    finally:
        handle.remove()
    if calls[0] == 0:
        raise RuntimeError(f"layer {layer!r} did not run during the forward pass")
    return output
