"""Receptive fields of a model's layers, derived from the model itself (for the "netdissect"
convention, which upsamples through receptive-field centres).

NetDissect reads the geometry off the Caffe network definition: walking the graph from the
image, every convolution or pooling composes its (−pad, kernel, stride) into the field map
(offset, size, stride) of its output blob, other layers pass it through, and where several
paths meet (a residual sum) the largest field wins. Here the same walk runs on one forward
pass of a probe image: a TorchFunctionMode sees every torch call, so each tensor gets the
field map of the tensor it was computed from (convolutions and pools compose theirs;
elementwise ops, normalisation and activations pass it on; a sum of branches keeps the
largest), and a forward hook reads the map of each wanted module's output.

A field map per axis: output cell i sees input pixels [offset + i·stride, offset + i·stride +
size − 1]. Geometry.receptive_field turns it into upsampling tables.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode


class FieldMap(NamedTuple):
    """One axis of a receptive field: first pixel of cell 0, width, step between cells."""

    offset: int
    size: int
    stride: int


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def compose(fm: FieldMap, kernel: int, stride: int, padding: int, dilation: int = 1) -> FieldMap:
    """The field map after a convolution or pooling with these parameters (NetDissect's
    compose_fieldmap, with dilation)."""
    return FieldMap(fm.offset - padding * fm.stride, (kernel - 1) * dilation * fm.stride + fm.size,
                    fm.stride * stride)


def _arg(args, kwargs, i: int, name: str, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _window_params(func, args, kwargs):
    """(kernel, stride, padding, dilation) pairs of a conv/pool call, or None for other ops."""
    name = getattr(func, "__name__", "")
    if name == "conv2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:])
        dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
        padding = _arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        return kernel, _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(padding), dilation
    if name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
        stride = _arg(args, kwargs, 2, "stride", None)
        dilation = _arg(args, kwargs, 4, "dilation", 1) if "max" in name else 1
        return kernel, _pair(stride if stride not in (None, ()) else kernel), \
            _pair(_arg(args, kwargs, 3, "padding", 0)), _pair(dilation)
    return None


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _FieldTracker(TorchFunctionMode):
    """Field maps (y, x) of every 4-D tensor computed from the probe, by tensor identity."""

    def __init__(self, probe: torch.Tensor):
        super().__init__()
        self.fields: dict[int, tuple[torch.Tensor, tuple[FieldMap, FieldMap]]] = {}
        self.set(probe, (FieldMap(0, 1, 1), FieldMap(0, 1, 1)))

    def set(self, t: torch.Tensor, fm) -> None:
        self.fields[id(t)] = (t, fm)          # the tensor is kept, so its id is not reused

    def get(self, t):
        found = self.fields.get(id(t))
        return found[1] if found is not None and found[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if self.get(t) is not None]
        if not inputs:
            return out
        params = _window_params(func, args, kwargs)
        name = getattr(func, "__name__", "")
        for o in _tensors(out):
            if o.dim() != 4:
                continue
            if params is not None:
                fm = self.get(args[0] if args else kwargs["input"])
                if fm is not None:
                    self.set(o, tuple(compose(f, *(p[a] for p in params)) for a, f in enumerate(fm)))
            elif name == "pad":
                self._pad(o, args, kwargs)
            else:                             # pass through; where branches meet, the largest
                same = [self.get(t) for t in inputs if t.dim() == 4 and t.shape[-2:] == o.shape[-2:]]
                if same:
                    self.set(o, max(same, key=lambda fm: (fm[0].size, fm[1].size)))
        return out

    def _pad(self, o, args, kwargs) -> None:
        fm = self.get(args[0])
        pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
        if fm is not None:
            left, top = int(pad[0]), int(pad[2])
            self.set(o, (FieldMap(fm[0].offset - top * fm[0].stride, fm[0].size, fm[0].stride),
                         FieldMap(fm[1].offset - left * fm[1].stride, fm[1].size, fm[1].stride)))


def trace_receptive_fields(model: torch.nn.Module, modules, probe: torch.Tensor) -> dict:
    """{module name: (y FieldMap, x FieldMap)} for the output of each named module, from one
    forward pass of `probe` ([1, C, H, W] on the model's device). A module whose output is not
    a 4-D map computed from the image through convolutions, pools and pass-through ops (an
    upsampling, a flatten, a token layer) gets a clear error naming it."""
    from dissect_kernels.hooks import get_module

    names = list(dict.fromkeys(modules))
    found: dict[str, tuple] = {}
    tracker = _FieldTracker(probe)
    handles = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            out = next(_tensors(output), None)
            fm = tracker.get(out) if out is not None else None
            if fm is not None:
                found.setdefault(name, fm)
        handles.append(get_module(model, name).register_forward_hook(hook))
    try:
        with torch.no_grad(), tracker:
            model(probe)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"cannot derive the receptive field of layer(s) {missing} from the model (their "
                         "output is not a 4-D map made by convolutions and pools); pass "
                         "--receptive-fields LAYER:OFFSET,SIZE,STRIDE (receptive_fields= in Python)")
    return {n: found[n] for n in names}


def parse_receptive_fields(text: str) -> dict:
    """'layer4:-1,427,32;layer3:...' (offset, size, stride; the same on both axes, or
    OFFSET_Y,SIZE_Y,STRIDE_Y,OFFSET_X,SIZE_X,STRIDE_X) -> {layer: (FieldMap y, FieldMap x)}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        layer, _, nums = item.rpartition(":")
        try:
            values = [int(v) for v in nums.split(",")]
        except ValueError:
            values = []
        if not layer or len(values) not in (3, 6):
            raise ValueError(f"--receptive-fields: expected LAYER:OFFSET,SIZE,STRIDE (or six numbers, "
                             f"y then x), got {item!r}")
        y = FieldMap(*values[:3])
        out[layer] = (y, FieldMap(*values[3:]) if len(values) == 6 else y)
    return out


def as_field_maps(value) -> tuple[FieldMap, FieldMap]:
    """A receptive_fields= entry: (offset, size, stride) for both axes, or a (y, x) pair of them."""
    if len(value) == 2 and all(isinstance(v, (tuple, list)) for v in value):
        return FieldMap(*map(int, value[0])), FieldMap(*map(int, value[1]))
    fm = FieldMap(*map(int, value))
    return fm, fm


def plan_receptive_fields(model: torch.nn.Module, modules, dataset, given: dict | None):
    """({module: (y FieldMap, x FieldMap)}, image (H, W)) for the netdissect convention: the
    given entries (receptive_fields= / --receptive-fields) as they are, the others traced from
    the model on the dataset's first image (its size is the image size of the ratio image /
    segmentation that NetDissect divides field maps by)."""
    given = {name: as_field_maps(v) for name, v in (given or {}).items()}
    probe = dataset[0]["image"][None]
    missing = [m for m in dict.fromkeys(modules) if m not in given]
    if missing:
        param = next(model.parameters(), None)
        was_training = model.training
        model.eval()
        try:
            given.update(trace_receptive_fields(model, missing, probe.to(param.device if param is not None
                                                                         else "cpu")))
        finally:
            model.train(was_training)
    return given, tuple(int(v) for v in probe.shape[-2:])
