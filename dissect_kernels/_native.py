"""Loading the native modules and choosing a backend.

"auto" tries, in order, cuda -> triton -> torch -> reference for CUDA tensors and
cpu -> torch -> reference for CPU tensors, taking the first that can run here: a backend is
skipped when its module is missing, the GPU's compute capability is not one the module was
built for, the driver is too old for the module's (static) CUDA runtime, or the driver cannot
load its kernels. Each such skip is logged once per process (logger "dissect_kernels", one
line saying why). A backend named explicitly that cannot run raises BackendUnavailable, a
one-line message naming what is missing. "torch" is a vectorised pure-PyTorch backend for cheap
ops (label_stats, segment_stats) where a custom kernel buys nothing.

DK_NATIVE_DIR=<dir>: load a native module from that directory when it holds one (e.g. the
AddressSanitizer build of _C that scripts/sanitize_tests.sh makes); others load as usual."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch", "reference")
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch", "reference"), "cpu": ("cpu", "torch", "reference")}
# Triton's supported NVIDIA GPUs (its README: compute capability 8.0+); also the CUDA floor.
MIN_TRITON_CAPABILITY = (8, 0)
# Oldest Linux driver branch per CUDA major version (minor-version compatibility).
DRIVER_FOR_CUDA = {11: "450", 12: "525", 13: "580"}

log = logging.getLogger("dissect_kernels")
_logged: set = set()


class BackendUnavailable(RuntimeError, LookupError):
    """A backend named explicitly cannot run here; the message is one line naming what is
    missing. (Also a LookupError, so the CLI reports it in one line without a traceback.)"""


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


def device_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (tests replace this with a fake)."""
    return torch.cuda.get_device_capability(device)


def driver_version() -> int:
    """CUDA version the installed driver supports, 1000*major + 10*minor; 0 without a driver
    (tests replace this with a fake)."""
    module = native("_cuda")
    return module.driver_version() if module is not None and hasattr(module, "driver_version") else 0


@lru_cache(maxsize=None)
def _device_problem(index: int) -> str:
    """The driver's answer to "do this build's kernels load on GPU `index`?" ("" = yes)."""
    return native("_cuda").device_problem(index)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def kernel_source(capability: tuple[int, int], archs) -> str | None:
    """How a GPU of `capability` gets this build's kernels: "sass" (machine code for its major
    version at or below its minor), "ptx" (JIT from an older arch's PTX) or None."""
    cc = 10 * capability[0] + capability[1]
    if any(a // 10 == capability[0] and a <= cc for a in archs):
        return "sass"
    return "ptx" if any(a <= cc for a in archs) else None


def cuda_problem(device: torch.device) -> str | None:
    """Why the cuda backend cannot run on `device`, or None when it can."""
    module = native("_cuda")
    if module is None:
        return "the dissect_kernels._cuda module was not built (no nvcc at build time)"
    if device.type != "cuda":
        return f"it needs CUDA tensors, these are on {device.type}"
    if not hasattr(module, "built_archs"):  # a module built before these checks existed
        return None
    runtime, driver = module.runtime_version(), driver_version()
    if driver < 1000 * (runtime // 1000):
        have = f"CUDA {_cuda_version(driver)}" if driver else "no CUDA driver"
        return (f"the module's static CUDA {_cuda_version(runtime)} runtime needs a driver for CUDA "
                f"{runtime // 1000}.x (>= {DRIVER_FOR_CUDA.get(runtime // 1000, '?')}), found {have}")
    capability, archs = device_capability(device), list(module.built_archs())
    source = kernel_source(capability, archs)
    built = ", ".join(f"sm_{a}" for a in archs)
    if source is None:
        return f"the GPU is sm_{capability[0]}{capability[1]} but the module was built for {built}"
    if source == "ptx" and driver < runtime:
        return (f"the GPU (sm_{capability[0]}{capability[1]}) needs the PTX of {built} compiled by the "
                f"driver, which needs a driver for CUDA >= {_cuda_version(runtime)}, found {_cuda_version(driver)}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    problem = _device_problem(index)
    return f"the driver cannot load its kernels ({problem})" if problem else None


def triton_problem(device: torch.device) -> str | None:
    """Why the triton backend cannot run on `device` (CPU tensors run interpreted), or None."""
    if not triton_available():
        return "the triton package is not installed"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"it needs CUDA or CPU tensors, these are on {device.type}"
    capability = device_capability(device)
    if tuple(capability) < MIN_TRITON_CAPABILITY:
        return (f"Triton needs compute capability >= {MIN_TRITON_CAPABILITY[0]}.{MIN_TRITON_CAPABILITY[1]}, "
                f"the GPU is sm_{capability[0]}{capability[1]}")
    return None


def problem(backend: str, device: torch.device, pure_torch: tuple[str, ...] = ()) -> str | None:
    """Why `backend` cannot run on tensors on `device`, or None. Backends in `pure_torch` are
    an op's own torch code under a native name: they only need the device type."""
    if backend in ("reference", "torch"):
        return None
    if backend in pure_torch:
        return None if device.type == backend else f"it needs {backend.upper()} tensors, these are on {device.type}"
    if backend == "cpu":
        if device.type != "cpu":
            return f"it needs CPU tensors, these are on {device.type}"
        return None if native("_C") is not None else "the dissect_kernels._C module was not built"
    if backend == "cuda":
        return cuda_problem(device)
    if backend == "triton":
        return triton_problem(device)
    return f"unknown backend {backend!r}"


def available(backend: str, device: torch.device) -> bool:
    """Whether `backend` can run on tensors living on `device`."""
    return problem(backend, device) is None


def check_name(backend: str, supported: tuple[str, ...]) -> None:
    """ValueError for a backend name that does not exist or that the op does not implement."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto" and backend not in supported:
        raise ValueError(f"backend {backend!r} is not implemented for this op; choose from {supported}")


def resolve(backend: str, device: torch.device, supported: tuple[str, ...],
            pure_torch: tuple[str, ...] = ()) -> str:
    """Pick a concrete backend for an op implementing `supported`: "auto" takes the first of
    AUTO_ORDER that can run (logging once why a better one could not); a named backend that
    cannot run raises BackendUnavailable."""
    check_name(backend, supported)
    if backend != "auto":
        why = problem(backend, device, pure_torch)
        if why is not None:
            raise BackendUnavailable(f"backend {backend!r} cannot run on {device}: {why}")
        return backend
    skipped = []
    for name in AUTO_ORDER.get(device.type, ("torch", "reference")):
        if name not in supported:
            continue
        why = problem(name, device, pure_torch)
        if why is None:
            for skip, reason in skipped:
                _log_once(f"dissect_kernels: backend {skip!r} cannot run on {device.type} ({reason}); "
                          f"using {name!r}")
            return name
        skipped.append((name, why))
    raise BackendUnavailable(f"no backend can run on {device}: " +
                             "; ".join(f"{n}: {w}" for n, w in skipped))


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


def stream_handle(device: torch.device) -> int:
    """The current CUDA stream as an integer handle for the C++ entry points."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
