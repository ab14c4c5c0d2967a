"""Write the shipped tiny generator's "real" images (dissect_kernels/assets/tiny_gan_real/,
REAL_COUNT 64x64 PNGs), deterministically: the generator's own rendering of the real
distribution's z (models/tiny_gan_data.real_z: more water than the generator draws).

    python scripts/build_tiny_gan_real.py [--out-dir DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from dissect_kernels.models.tiny_gan import load_default_generator
from dissect_kernels.models.tiny_gan_data import REAL_COUNT, REAL_IMAGES, real_z


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=REAL_IMAGES)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = load_default_generator()(real_z(torch.arange(REAL_COUNT)))
    pix = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, p in enumerate(pix):
        Image.fromarray(p).save(args.out_dir / f"real_{i:03d}.png", optimize=True)
    print(f"wrote {REAL_COUNT} images to {args.out_dir}")


if __name__ == "__main__":
    main()
