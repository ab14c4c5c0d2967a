"""Loading the native modules and choosing a backend ("auto" -> cuda -> triton -> cpu ->
torch -> reference). "torch" is a vectorised pure-PyTorch backend that runs on any device,
for cheap ops (label_stats, segment_stats) where a custom kernel buys nothing.

DK_NATIVE_DIR=<dir>: load a native module from that directory when it holds one (e.g. the
AddressSanitizer build of _C that scripts/sanitize_tests.sh makes); others load as usual."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch", "reference")


@lru_cache(maxsize=None)
def native(name: str):
    """The compiled module `dissect_kernels.<name>` ("_C" or "_cuda"), or None if not built."""
    override = os.environ.get("DK_NATIVE_DIR")
    if override:
        found = sorted(Path(override).glob(f"{name}.*.so")) + sorted(Path(override).glob(f"{name}.so"))
        if found:
            spec = importlib.util.spec_from_file_location(f"dissect_kernels.{name}", found[0])
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # a later `import dissect_kernels._C` gets this one
            spec.loader.exec_module(module)
            return module
    try:
        return importlib.import_module(f"dissect_kernels.{name}")
    except ImportError:
        return None


@lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(backend: str, device: torch.device) -> bool:
    """Whether `backend` can run on tensors living on `device`."""
    if backend in ("reference", "torch"):
        return True
    if backend == "cpu":
        return device.type == "cpu" and native("_C") is not None
    if backend == "cuda":
        return device.type == "cuda" and native("_cuda") is not None
    if backend == "triton":
        return triton_available() and (device.type == "cuda" or triton_interpreted())
    return False


def resolve(backend: str, device: torch.device, supported: tuple[str, ...]) -> str:
    """Pick a concrete backend for an op supporting `supported`, with a clear error if the
    named one cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
        for name in order + ("torch", "reference"):
            if name in supported and available(name, device):
                return name
        raise RuntimeError(f"no backend for device {device}")
    if backend not in supported:
        raise ValueError(f"backend {backend!r} is not implemented for this op; choose from {supported}")
    if not available(backend, device):
        why = {
            "cpu": "needs CPU tensors and the compiled dissect_kernels._C module",
            "cuda": "needs CUDA tensors and the compiled dissect_kernels._cuda module",
            "triton": "needs the triton package and CUDA tensors (or TRITON_INTERPRET=1 on CPU)",
        }[backend]
        raise RuntimeError(f"backend {backend!r} cannot run on {device}: it {why}")
    return backend


def stream_handle(device: torch.device) -> int:
    """The current CUDA stream as an integer handle for the C++ entry points."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
