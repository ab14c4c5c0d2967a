"""Feed NumPy arrays to the dissect_kernels ops without copying them (DLPack), and read the
results back as NumPy arrays, again without copies.

    python examples/dlpack_numpy.py

torch.from_dlpack(a) wraps a's memory in a tensor (same address, same strides: a transposed
view stays a view, and the ops read it as stored); np.from_dlpack(t) does the reverse for CPU
tensors. The same works for CuPy and JAX arrays on a GPU (torch.from_dlpack(cupy_array)), with
the CUDA kernels reading the other library's device memory in place.
"""
import numpy as np
import torch

import dissect_kernels as dk


def main() -> None:
    rng = np.random.default_rng(0)
    B, U, h, w, H, W, C = 4, 16, 7, 7, 56, 56, 10
    acts_np = np.maximum(rng.standard_normal((B, h, w, U), dtype=np.float32), 0)  # channels-last
    acts_np = acts_np.transpose(0, 3, 1, 2)                  # [B, U, h, w] view, not contiguous
    labels_np = rng.integers(0, C, (B, H, W), dtype=np.int32)
    thresholds_np = np.full(U, 1.0, dtype=np.float32)

    acts = torch.from_dlpack(acts_np)                         # no copy: same memory, same strides
    assert acts.data_ptr() == acts_np.ctypes.data and acts.stride() == (h * w * U, 1, w * U, U)
    counts = dk.tally(acts, torch.from_dlpack(thresholds_np), torch.from_dlpack(labels_np),
                      num_concepts=C)
    intersection = np.from_dlpack(counts.intersection)        # no copy back either
    assert intersection.ctypes.data == counts.intersection.data_ptr()

    masks_np = np.empty((B, U, H, W), dtype=np.float32)       # the op writes NumPy's memory
    dk.upsample(acts, (H, W), out=torch.from_dlpack(masks_np))
    assert ((masks_np > 1.0).sum(axis=(2, 3)) == np.from_dlpack(counts.active)).all()
    print(f"intersection [U, C] = {intersection.shape}, {int(intersection.sum())} counted pixels; "
          f"upsampled maps written into a NumPy array of {masks_np.nbytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
