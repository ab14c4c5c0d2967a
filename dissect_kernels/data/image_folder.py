"""A folder of plain images (no labels): the "real" images that generated-vs-real statistics
compare a generator's samples with. Files are read in sorted name order; each image's header is
checked against the pixel cap before it is decoded; images are resized to one size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dissect_kernels.data.broden import MAX_PIXELS

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageFolder(torch.utils.data.Dataset):
    """Images of `root` (sorted, the extensions above; max_images: the first N) as float
    [3, H, W] in [-1, 1] (a generator's range), resized to `size` (H, W) bilinearly."""

    def __init__(self, root, size: tuple[int, int], max_images: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
        if max_images is not None:
            self.files = self.files[:max_images]
        if not self.files:
            raise ValueError(f"image folder {str(root)!r} holds no {'/'.join(EXTENSIONS)} images")
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ValueError(f"{path}: {im.size[0]}x{im.size[1]} pixels, over the cap of {MAX_PIXELS:,}")
                rgb = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        if rgb.size != (self.size[1], self.size[0]):
            rgb = rgb.resize((self.size[1], self.size[0]), Image.BILINEAR)
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1)))
        return x.float() / 127.5 - 1

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] of the images at `indices`."""
        return torch.stack([self[int(i)] for i in indices.tolist()])
