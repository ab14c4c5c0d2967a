"""Where the core's C library lives: libdissect_kernels.so, the C ABI of
csrc/include/dissect_kernels/dissect_kernels.h, built and shipped beside the Python modules so
ctypes / cffi users (and the tests comparing it with the Python API) can load it.

DK_NATIVE_DIR=<dir>: a library in that directory is preferred (e.g. the AddressSanitizer build
that scripts/sanitize_tests.sh makes), as for the Python modules (dissect_kernels._native)."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

LIBRARY_NAME = "libdissect_kernels.so"


def library_path() -> Path:
    """The path of libdissect_kernels.so; FileNotFoundError naming where it looked."""
    places = []
    override = os.environ.get("DK_NATIVE_DIR")
    if override:
        places.append(Path(override) / LIBRARY_NAME)
    places.append(Path(__file__).resolve().with_name(LIBRARY_NAME))
    for path in places:
        if path.exists():
            return path
    raise FileNotFoundError(f"{LIBRARY_NAME} not found (looked in {', '.join(str(p.parent) for p in places)}); "
                            "build it with `pip install -e .` or `python setup.py build_ext --inplace`")


def load() -> ctypes.CDLL:
    """The C library loaded with ctypes (argument types are the caller's to declare)."""
    return ctypes.CDLL(str(library_path()))
