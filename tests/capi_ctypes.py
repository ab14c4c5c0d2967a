"""ctypes declarations of the C ABI (csrc/include/dissect_kernels/dissect_kernels.h) for the tests
that compare the C library with the Python API, and tensor-to-pointer helpers."""
from __future__ import annotations

import ctypes as C

import torch

from dissect_kernels import clib

DK_OK, DK_ERR_INVALID_ARGUMENT, DK_ERR_STATE = 0, 1, 2
DK_QUANTILE_AUTO, DK_QUANTILE_EXACT, DK_QUANTILE_SKETCH = 0, 1, 2
DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
GEOMETRY = {"half-pixel": 0, "align-corners": 1, "zero-pad": 2}
i64, i32, f64, vp = C.c_int64, C.c_int32, C.c_double, C.c_void_p


class AxisTable(C.Structure):
    _fields_ = [("i0", vp), ("i1", vp), ("w0", vp), ("w1", vp)]


class TallyArgs(C.Structure):
    _fields_ = [("acts", vp), ("acts_dtype", i32), ("B", i64), ("U", i64), ("h", i64), ("w", i64),
                ("acts_stride", i64 * 4), ("thresholds", vp), ("labels", vp), ("L", i64), ("H", i64), ("W", i64),
                ("image_labels", vp), ("M", i64), ("ytab", AxisTable), ("xtab", AxisTable),
                ("num_concepts", i64), ("per_layer", i32), ("category_of", vp), ("num_categories", i64),
                ("intersection", vp), ("active", vp), ("max", vp), ("touched", vp)]


class QuantileOptions(C.Structure):
    _fields_ = [("mode", i32), ("num_units", i64), ("min_quantile", f64), ("expected_count", i64),
                ("slack", i64), ("max_bytes", i64)]


def load() -> C.CDLL:
    """The library with every function's signature declared."""
    lib = clib.load()
    sig = {
        "dk_last_error": (C.c_char_p, []),
        "dk_version": (C.c_char_p, []),
        "dk_axis_table_named": (i32, [i32, i64, i64, vp, vp, vp, vp]),
        "dk_tally": (i32, [C.POINTER(TallyArgs)]),
        "dk_tally_cuda": (i32, [C.POINTER(TallyArgs), C.c_ssize_t]),
        "dk_label_stats": (i32, [vp, i64, i64, i64, i64, vp, i64, i64, i32, vp, i64, vp, vp]),
        "dk_quantile_default_options": (QuantileOptions, [i64]),
        "dk_quantile_create": (i32, [C.POINTER(QuantileOptions), C.POINTER(vp)]),
        "dk_quantile_free": (None, [vp]),
        "dk_quantile_update": (i32, [vp, vp, i32, i64, i64, i64, C.POINTER(i64)]),
        "dk_quantile_update_maps": (i32, [vp, vp, i32, i64, i64, i64, i64, C.POINTER(i64)]),
        "dk_quantile_query": (i32, [vp, C.POINTER(f64), i64, vp]),
        "dk_quantile_cdf": (i32, [vp, vp, i64, vp]),
        "dk_quantile_merge": (i32, [vp, vp]),
        "dk_quantile_count": (i32, [vp, C.POINTER(i64)]),
        "dk_quantile_get_mode": (i32, [vp, C.POINTER(i32)]),
        "dk_quantile_rank_error_bound": (i32, [vp, C.POINTER(f64), i64, vp]),
        "dk_quantile_serialize": (i32, [vp, vp, C.c_size_t, C.POINTER(C.c_size_t)]),
        "dk_quantile_deserialize": (i32, [vp, C.c_size_t, C.POINTER(vp)]),
        "dk_topk_create": (i32, [i64, i64, C.POINTER(vp)]),
        "dk_topk_free": (None, [vp]),
        "dk_topk_update": (i32, [vp, vp, i32, i64, i64, i64, i64, vp]),
        "dk_topk_merge": (i32, [vp, vp]),
        "dk_topk_result": (i32, [vp, vp, vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def i64s(*values) -> C.Array:
    return (i64 * len(values))(*values)


def check(lib, status: int, want: int = DK_OK) -> None:
    assert status == want, f"status {status}, expected {want}: {lib.dk_last_error().decode()}"
