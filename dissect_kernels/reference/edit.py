"""Oracle for edit: the intervention rule x <- x*(1-alpha) + value*alpha as one plain torch
expression in float32, rounded once to x's dtype."""
from __future__ import annotations

import torch


def edit(x: torch.Tensor, alpha: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """New tensor of x's shape and dtype. alpha and value are float32 tensors already
    broadcastable to x (the op in ops/edit.py prepares them); the arithmetic order is the one
    every backend follows: x*(1-a) first, v*a second, then their sum, each rounded to fp32."""
    a = alpha.float()
    return (x.float() * (1 - a) + value.float() * a).to(x.dtype)
