"""Smoke test of an installed dissect-kernels (run by scripts/check_wheel.sh in a fresh venv,
outside the source tree): metadata, the shipped native modules and C library, and a tiny
dissection whose planted unit must be found."""
import ctypes
import importlib.metadata
from importlib import resources

import torch
import torch.nn.functional as F

import dissect_kernels as dk
from dissect_kernels import _native, clib


def planted_batch(B=8, U=3, size=7, scale=4, seed=0):
    """Labels with concepts 1 and 2 as random squares; unit 0 is concept 2's mask pooled to the
    map size (a detector by construction), the others noise."""
    g = torch.Generator().manual_seed(seed)
    H = size * scale
    labels = torch.zeros(B, 1, H, H, dtype=torch.int64)
    for b in range(B):
        for c in (1, 2):
            y, x = (int(v) for v in torch.randint(0, H - 10, (2,), generator=g))
            labels[b, 0, y:y + 10, x:x + 10] = c
    acts = torch.randn(B, U, size, size, generator=g) * 0.05
    acts[:, 0] += F.avg_pool2d((labels[:, 0:1] == 2).float(), scale)[:, 0]
    return acts, labels


def main():
    assert dk.__version__ == importlib.metadata.version("dissect-kernels"), dk.__version__
    assert resources.files("dissect_kernels").joinpath("py.typed").is_file(), "py.typed missing"
    real = resources.files("dissect_kernels").joinpath("assets/tiny_gan_real")
    assert len([f for f in real.iterdir() if f.name.endswith(".png")]) == 48, "the tiny GAN's real images are missing"
    assert _native.native("_C") is not None, "the CPU module _C is missing from the wheel"
    lib = clib.load()
    lib.dk_version.restype = ctypes.c_char_p
    assert lib.dk_version().decode() == dk.__version__
    acts, labels = planted_batch()
    B, U, h, w = acts.shape
    q = dk.make_quantile("auto", U, expected_count=B * h * w, min_quantile=0.9)
    assert isinstance(q, dk.ExactQuantile)
    q.update(acts)
    thresholds = q.quantile(0.9).float()
    counts = dk.tally(acts, thresholds, labels, num_concepts=3, backend="cpu")
    truth = dk.label_stats(labels, num_concepts=3).pixels.sum(0)
    inter = counts.intersection
    iou = inter / (counts.active.sum(0)[:, None] + truth[None, :] - inter).clamp(min=1)
    assert int(iou[0, 1:].argmax()) + 1 == 2 and float(iou[0, 2]) > 0.3, iou
    print(f"wheel smoke test passed: dissect-kernels {dk.__version__}, torch {torch.__version__}, "
          f"unit 0 -> concept 2 with IoU {float(iou[0, 2]):.3f}, C library {clib.library_path().name}")


if __name__ == "__main__":
    main()
