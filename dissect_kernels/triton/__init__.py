"""Triton kernels (triton==3.6.0). On CUDA tensors a kernel compiles and runs on the GPU; on
CPU tensors `launch` runs it through Triton's interpreter. The interpreter is chosen per launch
rather than by TRITON_INTERPRET at import time (Triton 3.6 fixes the kind of every @triton.jit
function, its standard library's too, when the module is imported), so one process runs both:
the CPU-tensor tests pass on a GPU machine. TRITON_INTERPRET=1 still works (everything is
interpreted already)."""
from __future__ import annotations

import threading

import torch

_INTERPRETED: dict = {}
_LOCK = threading.Lock()


def launch(kernel, grid, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), through the interpreter when the first tensor argument
    lives on the CPU."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None or first.device.type != "cpu":
        kernel[grid](*args, **kwargs)
        return
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):  # TRITON_INTERPRET=1 at import
        kernel[grid](*args, **kwargs)
        return
    with _LOCK, _interpreter_scope():
        _interpreted(kernel)[grid](*args, **kwargs)


def _interpreted(kernel):
    """The interpreter's version of a @triton.jit function (cached)."""
    from triton.runtime.interpreter import InterpretedFunction

    # keyed by id: hashing a JITFunction computes its cache key, which fails while
    # triton.language is patched; the value keeps the kernel alive, so ids are not reused
    if id(kernel) not in _INTERPRETED:
        _INTERPRETED[id(kernel)] = (kernel, InterpretedFunction(kernel.fn))
    return _INTERPRETED[id(kernel)][1]


class _interpreter_scope:
    """For one interpreted launch in a process that imported Triton for the GPU: patch
    triton.language.core as the interpreter does for its own standard library (the kernel's
    launch patches triton.language on top and restores it first), and let compiled-mode
    @triton.jit helpers (tl.max, tl.cumsum, ...) be called by running their interpreted form.
    Everything is restored on exit; the lock keeps other interpreted launches out meanwhile."""

    def __enter__(self):
        import triton.language.standard as standard
        from triton.runtime import interpreter
        from triton.runtime.jit import JITFunction

        self.scope = interpreter._patch_lang(standard.max.fn)
        self.original = JITFunction.__call__
        JITFunction.__call__ = lambda fn, *a, **k: _interpreted(fn).rewrite()(*a, **k)
        return self

    def __exit__(self, *exc):
        from triton.runtime.jit import JITFunction

        JITFunction.__call__ = self.original
        self.scope.restore()
        return False
