"""Test set-up: Triton runs under its interpreter on CPU (must be set before any kernel module
is imported); tests marked `gpu` skip cleanly without CUDA."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


POISON_INT = -7777777


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with garbage a correct kernel must overwrite."""
    if t.dtype.is_floating_point:
        return t.fill_(float("nan"))
    if t.dtype == torch.uint8:
        return t.fill_(0xAB)
    return t.fill_(POISON_INT)
