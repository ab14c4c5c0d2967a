"""Input validation shared by the ops: errors name the input and what was expected."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def tensor(name: str, x, *, ndim: int | tuple[int, ...], dtypes) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if x.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    return x


def same_device(**tensors) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name} is on {dev} but the other inputs are on {first}")
    return first


def finite(name: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{name} contains {bad} values; expected finite numbers")


def not_nan(name: str, x: torch.Tensor) -> None:
    """No NaN in x: one reduction (NaN propagates through amax), no temporary as big as x."""
    if x.numel() and x.dtype.is_floating_point and bool(torch.isnan(x.amax())):
        raise ValueError(f"{name} contains NaN values")


def ids_in_range(name: str, x: torch.Tensor, upper: int, what: str = "num_concepts") -> None:
    """Integer ids must lie in [0, upper)."""
    if x is None or x.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(x))  # one pass over the ids
    if lo < 0 or hi >= upper:
        raise ValueError(f"{name} holds ids in [{lo}, {hi}] but they must lie in [0, {upper}) ({what}={upper})")


def label_inputs(labels, image_labels, category_of):
    """Validate label layers [B, L, H, W] (or [B, H, W], made 4-D), image_labels [B, M] or None
    and category_of [C] or None, as the label-side ops take them."""
    labels = tensor("labels", labels, ndim=(3, 4), dtypes=INT_DTYPES)
    if labels.dim() == 3:
        labels = labels[:, None]
    if image_labels is not None:
        image_labels = tensor("image_labels", image_labels, ndim=2, dtypes=INT_DTYPES)
    if category_of is not None:
        category_of = tensor("category_of", category_of, ndim=1, dtypes=INT_DTYPES)
    return labels, image_labels, category_of
