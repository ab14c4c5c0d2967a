"""Run kernels once on small representative inputs and check them against the oracle: the
target process for `compute-sanitizer --tool memcheck|racecheck` in benchmarks/gpu_check.sh
(one process runs every case, so the sanitizer's start-up is paid once per tool).

    python benchmarks/cuda_kernel_driver.py --list            # kernels of _cuda and their cases
    python benchmarks/cuda_kernel_driver.py tally             # cuda backend on the GPU
    python benchmarks/cuda_kernel_driver.py tally:cuda tally:triton upsample:cuda quantile:triton
    python benchmarks/cuda_kernel_driver.py tally upsample --device cpu --backend cpu   # on CPU

Exit status: 0 = every case ran and matched the oracle, 1 = a mismatch, 3 = none available.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_AVAILABLE = 3


def _tally(device, backend: str, small: bool) -> str:
    import torch

    import dissect_kernels as dk

    g = torch.Generator().manual_seed(7)
    B, U, h, w, L, H, W, M, C, K = 3, 40, 7, 7, 3, 112, 112, 2, 60, 4
    if small:
        B, U, h, w, H, W = 2, 8, 3, 4, 16, 24
    labels = torch.randint(0, C, (B, L, H // 8, W // 8), generator=g, dtype=torch.int32)
    labels = labels.repeat_interleave(8, 2).repeat_interleave(8, 3).contiguous()
    labels[:, 2][torch.rand(B, H, W, generator=g) < 0.7] = 0
    image = torch.randint(0, C, (B, M), generator=g, dtype=torch.int32)
    category_of = torch.randint(0, K, (C,), generator=g)
    msgs = []
    for dtype, transpose in ((torch.float32, False), (torch.float16, True)):
        acts = torch.relu(torch.randn(B, U, h, w, generator=g) + torch.randn(B, U, 1, 1, generator=g))
        thr = torch.quantile(acts.transpose(0, 1).reshape(U, -1), 0.8, dim=1)
        acts = acts.to(dtype)
        if transpose:  # strided input: [B, U, w, h] storage viewed as [B, U, h, w]
            acts = acts.transpose(2, 3).contiguous().transpose(2, 3)
        kw = dict(num_concepts=C, image_labels=image, category_of=category_of, num_categories=K)
        got = dk.tally(acts.to(device), thr.to(device), labels.to(device), backend=backend,
                       **{k: (v.to(device) if hasattr(v, "to") else v) for k, v in kw.items()})
        want = dk.tally(acts, thr, labels, backend="reference", **kw)
        for name in ("intersection", "active", "max", "touched"):
            a, b = getattr(got, name).cpu(), getattr(want, name)
            if not torch.equal(a, b):
                raise AssertionError(f"tally {dtype} {name}: {backend} differs from the oracle")
        msgs.append(f"{dtype} ok ({int(want.intersection.sum())} intersections)")
    return "; ".join(msgs)


def _quantile(device, backend: str, small: bool) -> str:
    import numpy as np
    import torch

    import dissect_kernels as dk

    if not hasattr(dk, "QuantileSketch"):
        raise LookupError("dk.QuantileSketch")
    g = torch.Generator().manual_seed(8)
    U = 8 if small else 64
    x = torch.randn(4, U, 7, 7, generator=g)
    sketch = dk.QuantileSketch(U, mode="exact", min_quantile=0.99, expected_count=4 * 49,
                               backend=backend, device=device)
    sketch.update(x.to(device))
    q = sketch.quantile([0.99, 1.0]).cpu().double()
    exact = torch.from_numpy(np.quantile(x.transpose(0, 1).reshape(U, -1).double().numpy(), [0.99, 1.0],
                                         axis=1, method="linear").T)
    if not torch.equal(q, exact):
        raise AssertionError(f"quantile: {backend} differs from numpy.quantile (max "
                             f"{(q - exact).abs().max().item():.3g})")
    return f"exact mode equals numpy.quantile for {U} units"


def _upsample(device, backend: str, small: bool) -> str:
    import torch

    import dissect_kernels as dk

    g = torch.Generator().manual_seed(9)
    N, h, H = (6, 3, 17) if small else (64, 7, 112)
    msgs = []
    for dtype, transpose in ((torch.float32, False), (torch.bfloat16, True)):
        acts = torch.randn(2, N, h, h + 1, generator=g).to(dtype)
        if transpose:
            acts = acts.transpose(2, 3).contiguous().transpose(2, 3)
        for convention in ("exact", "dissect"):
            got = dk.upsample(acts.to(device), (H, H + 3), convention=convention, backend=backend).cpu()
            want = dk.upsample(acts, (H, H + 3), convention=convention, backend="reference")
            if not torch.equal(got, want):
                raise AssertionError(f"upsample {dtype} {convention}: {backend} differs from the oracle")
        msgs.append(f"{dtype} ok")
    return "; ".join(msgs)


# kernel name in _cuda -> case. A kernel of _cuda missing here is reported as "no case".
CASES = {"tally": _tally, "quantile": _quantile, "upsample": _upsample}


BUILD_FACTS = ("device_count", "built_archs", "runtime_version", "driver_version", "device_problem")


def cuda_kernels() -> list[str]:
    """The entry points the built _cuda module exports (empty when it was not built)."""
    from dissect_kernels import _native

    module = _native.native("_cuda")
    if module is None:
        return []
    return sorted(n for n in dir(module) if not n.startswith("_") and n not in BUILD_FACTS
                  and callable(getattr(module, n)))


def run_case(spec: str, default_backend: str, device, small: bool) -> int:
    """One "op[:backend]" case: 0 ok, 1 mismatch, 3 not available; prints one line."""
    op, _, backend = spec.partition(":")
    backend = backend or default_backend
    if op not in CASES:
        print(f"{op}: no driver case (have {', '.join(CASES)})")
        return NOT_AVAILABLE
    try:
        msg = CASES[op](device, backend, small)
    except LookupError as e:  # the op's Python API is not in this tree yet, or no such backend here
        print(f"{op} [{backend}]: not available ({e})")
        return NOT_AVAILABLE
    except AssertionError as e:
        print(f"{op} [{backend}]: FAILED: {e}")
        return 1
    print(f"{op} [{backend}]: {msg}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ops", nargs="*", help="cases to run, op or op:backend; ops: " + ", ".join(CASES))
    p.add_argument("--list", action="store_true", help="print the kernels of _cuda and their cases")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="cuda", help="backend for cases that name none")
    p.add_argument("--small", action="store_true", help="tiny inputs (CPU dry runs)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.list:
        for name in sorted(set(cuda_kernels()) | set(CASES)):
            built = name in cuda_kernels()
            print(f"{name}\t{'built' if built else 'not built'}\t{'case' if name in CASES else 'no case'}")
        return 0
    import torch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("not available (no CUDA device)")
        return NOT_AVAILABLE
    codes = [run_case(spec, a.backend, device, a.small) for spec in a.ops]
    if device.type == "cuda":
        torch.cuda.synchronize()
    if 1 in codes:
        return 1
    return 0 if 0 in codes else NOT_AVAILABLE


if __name__ == "__main__":
    sys.exit(main())
