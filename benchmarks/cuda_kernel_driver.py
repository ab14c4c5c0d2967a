"""Run one native kernel once on small representative inputs and check it against the oracle:
the target process for `compute-sanitizer --tool memcheck|racecheck` in gpu_suite.py.

    python benchmarks/cuda_kernel_driver.py --list            # kernels of _cuda and their cases
    python benchmarks/cuda_kernel_driver.py tally             # cuda backend on the GPU
    python benchmarks/cuda_kernel_driver.py tally --device cpu --backend cpu   # same path on CPU

Exit status: 0 = ran and matched the oracle, 1 = mismatch, 3 = not available here.
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


# kernel name in _cuda -> case. A kernel of _cuda missing here is reported as "no case".
CASES = {"tally": _tally, "quantile": _quantile}


def cuda_kernels() -> list[str]:
    """The entry points the built _cuda module exports (empty when it was not built)."""
    from dissect_kernels import _native

    module = _native.native("_cuda")
    if module is None:
        return []
    return sorted(n for n in dir(module) if not n.startswith("_") and n != "device_count"
                  and callable(getattr(module, n)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("op", nargs="?", help="kernel to run: " + ", ".join(CASES))
    p.add_argument("--list", action="store_true", help="print the kernels of _cuda and their cases")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny inputs (the suite's CPU smoke run)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.list:
        for name in sorted(set(cuda_kernels()) | set(CASES)):
            built = name in cuda_kernels()
            print(f"{name}\t{'built' if built else 'not built'}\t{'case' if name in CASES else 'no case'}")
        return 0
    if a.op not in CASES:
        print(f"{a.op}: no driver case (have {', '.join(CASES)})")
        return NOT_AVAILABLE
    import torch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{a.op}: not available (no CUDA device)")
        return NOT_AVAILABLE
    try:
        msg = CASES[a.op](device, a.backend, a.small)
    except LookupError as e:  # the op's Python API is not in this tree yet
        print(f"{a.op}: not available ({e} missing)")
        return NOT_AVAILABLE
    except AssertionError as e:
        print(f"{a.op}: FAILED: {e}")
        return 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{a.op} [{a.backend}]: {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
