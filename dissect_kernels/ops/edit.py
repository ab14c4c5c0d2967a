"""dk.edit: the intervention rule x <- x*(1-alpha) + value*alpha (GAN Dissection's ablation /
insertion), fused into one pass with alpha and value broadcast through strides.

Backends: "triton" (CUDA; CPU tensors run in Triton's interpreter), "cpu" (torch's vectorised
expression updated in place on one fp32 buffer: the rule is memory-bound and torch's loops
already stream at bandwidth, so there is no C++ kernel), "reference" (the oracle). "auto":
cpu on CPU tensors, triton on CUDA (reference if triton is missing)."""
from __future__ import annotations

import torch

from dissect_kernels import _native
from dissect_kernels.ops import _checks, _library

BACKENDS = ("cpu", "triton", "reference")


def edit(x: torch.Tensor, alpha, value=0.0, *, backend: str = "auto") -> torch.Tensor:
    """New tensor x*(1-alpha) + value*alpha, same shape and dtype as x (fp32/fp16/bf16).

    x is typically [S, U, H, W] (any rank, any strides). alpha and value are Python numbers or
    tensors broadcastable to x; a 1-D tensor whose length is x.shape[1] is per unit, i.e. viewed
    as [1, U, 1, 1] (GAN Dissection's convention), so alpha may be [U], [S, U, 1, 1],
    [S, 1, H, W], [S, U, H, W], ... Arithmetic is float32 in one fixed order (x*(1-a) + v*a,
    no FMA), rounded once to x's dtype, so every backend gives identical bits. Ablation is
    value=0, insertion value=k. When autograd needs it (any input requires grad), the
    differentiable torch expression runs whatever the backend.
    """
    x, a, v = _prepare(x, alpha, value)
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or v.requires_grad):
        from dissect_kernels.reference.edit import edit as differentiable
        return differentiable(x, a, v)
    _native.check_name(backend, BACKENDS)
    return torch.ops.dissect_kernels.edit(x, a, v, backend)


def _edit_impl(x, alpha, value, backend):
    """torch.ops.dissect_kernels.edit: a new tensor (alpha, value: float32, broadcastable)."""
    name = _resolve(backend, x.device)
    if name == "reference":
        from dissect_kernels.reference.edit import edit as run
        return run(x, alpha, value)
    if name == "cpu":
        return _torch_edit(x, alpha, value)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _triton(x, alpha, value, out)
    return out


def _edit_fake(x, alpha, value, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_library.define("edit(Tensor x, Tensor alpha, Tensor value, str backend) -> Tensor", _edit_impl, _edit_fake)


def edit_(x: torch.Tensor, alpha, value=0.0, *, backend: str = "auto") -> torch.Tensor:
    """In-place edit: overwrite x with x*(1-alpha) + value*alpha and return x (bits identical
    to `edit`). For tensors that must not be modified under autograd use `edit`."""
    x, a, v = _prepare(x, alpha, value)
    name = _resolve(backend, x.device)
    if name == "triton" and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        _triton(x, a, v, x)
    elif name == "cpu" and x.dtype == torch.float32:
        x.mul_(1 - a).add_(v * a)
    else:
        x.copy_(edit(x, a, v, backend=name))
    return x


def _prepare(x, alpha, value):
    """Validate x; turn alpha and value into float32 tensors on x's device broadcastable to x."""
    _checks.tensor("x", x, ndim=tuple(range(1, 9)), dtypes=_checks.FLOAT_DTYPES)
    return x, _operand("alpha", alpha, x), _operand("value", value, x)


def _operand(name: str, t, x: torch.Tensor) -> torch.Tensor:
    if isinstance(t, (bool, int, float)):
        return torch.tensor(float(t), dtype=torch.float32, device=x.device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a number or a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_complex:
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if t.device != x.device:
        if t.numel() != 1:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        t = t.to(x.device)
    if t.dim() == 1 and x.dim() >= 2 and t.shape[0] == x.shape[1] and t.shape[0] != 1:
        t = t.view([1, -1] + [1] * (x.dim() - 2))
    if not _broadcasts(tuple(t.shape), tuple(x.shape)):
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to x's shape "
                         f"{tuple(x.shape)} (a 1-D {name} must have x.shape[1]={x.shape[1] if x.dim() > 1 else x.shape[0]} entries)")
    return t if t.dtype == torch.float32 else t.float()


def _broadcasts(small: tuple, big: tuple) -> bool:
    """Whether `small` broadcasts to exactly `big` (torch.broadcast_shapes imports sympy)."""
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(small[::-1], big[::-1]))


def _resolve(backend: str, device: torch.device) -> str:
    """auto: cpu on CPU tensors, else triton (reference when triton cannot run, logged once).
    The "cpu" backend is torch code here: it needs CPU tensors, not the _C module."""
    return _native.resolve(backend, device, BACKENDS, pure_torch=("cpu",))


def _torch_edit(x, a, v):
    """The "cpu" backend: the oracle's expression with in-place updates on one fp32 buffer
    (torch's vectorised loops are already bandwidth-bound for this memory-bound rule)."""
    y = x.to(torch.float32, copy=True)
    y.mul_(1 - a).add_(v * a)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _as4d(t: torch.Tensor, shape) -> torch.Tensor:
    t = t.expand(shape)
    if t.dim() > 4:
        t = t.reshape(-1, *t.shape[-3:])
    while t.dim() < 4:
        t = t.unsqueeze(-1)
    return t


def _triton(x, a, v, out) -> None:
    from dissect_kernels.triton.edit import edit_into
    out4 = out if out.dim() <= 4 else out.view(-1, *out.shape[-3:])
    edit_into(_as4d(x, x.shape), _as4d(a, x.shape), _as4d(v, x.shape), _as4d(out4, out4.shape))
