"""Generic segmentation datasets with the same item dict as BrodenDataset: (image, label map)
pairs from in-memory tensors or from two folders (label PNGs decoded as R + 256*G)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dissect_kernels.data.broden import decode_label_png
from dissect_kernels.data.transforms import Normalize, imagenet_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class _Meta:
    """Concept/category metadata shared by the generic datasets."""

    def _init_meta(self, num_concepts, concept_names, category_of, category_names):
        if num_concepts is None:
            num_concepts = len(concept_names) if concept_names is not None else None
        self.num_concepts = num_concepts
        self.concept_names = (list(concept_names) if concept_names is not None else
                              (["-"] + [f"c{c}" for c in range(1, num_concepts)] if num_concepts else None))
        if category_of is None and num_concepts:
            category_of = torch.zeros(num_concepts, dtype=torch.int64)
        self.category_of = None if category_of is None else torch.as_tensor(category_of, dtype=torch.int64)
        if category_names is None and self.category_of is not None:
            category_names = [f"category{k}" for k in range(int(self.category_of.max()) + 1)]
        self.category_names = list(category_names) if category_names is not None else None
        self.num_categories = None if self.category_names is None else len(self.category_names)
        if self.concept_names is not None and len(self.concept_names) != num_concepts:
            raise ValueError(f"concept_names has {len(self.concept_names)} entries, expected {num_concepts}")
        if self.category_of is not None and self.category_of.shape != (num_concepts,):
            raise ValueError(f"category_of must have shape ({num_concepts},), got {tuple(self.category_of.shape)}")


class TensorSegmentationDataset(torch.utils.data.Dataset, _Meta):
    """Items from tensors: images uint8 [N,H,W,3] (normalised by `transform`) or float [N,3,H,W]
    (used as given); labels int [N,H',W'] or [N,L,H',W']; image_labels int [N,M] or None."""

    def __init__(self, images, labels, image_labels=None, *, num_concepts=None, concept_names=None,
                 category_of=None, category_names=None, transform=None):
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        if images.dim() != 4:
            raise ValueError(f"images must be [N,H,W,3] uint8 or [N,3,H,W] float, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8 and images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [N,H,W,3], got shape {tuple(images.shape)}")
        if labels.dim() == 3:
            labels = labels[:, None]
        if labels.dim() != 4 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N,H,W] or [N,L,H,W] with N={images.shape[0]}, got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if image_labels is not None:
            image_labels = torch.as_tensor(image_labels)
            if image_labels.dim() != 2 or image_labels.shape[0] != images.shape[0]:
                raise ValueError(f"image_labels must be [N,M], got {tuple(image_labels.shape)}")
        self.images, self.labels, self.image_labels = images, labels.to(torch.int32), image_labels
        self.transform = transform if transform is not None else imagenet_transform()
        if num_concepts is None and concept_names is None:
            hi = int(labels.max()) if labels.numel() else 0
            if image_labels is not None and image_labels.numel():
                hi = max(hi, int(image_labels.max()))
            num_concepts = hi + 1
        self._init_meta(num_concepts, concept_names, category_of, category_names)
        size = images.shape[1:3] if images.dtype == torch.uint8 else images.shape[2:4]
        self.resolution = int(size[0]) if size[0] == size[1] else tuple(size)
        self.label_size = int(labels.shape[2]) if labels.shape[2] == labels.shape[3] else tuple(labels.shape[2:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def load_image_uint8(self, i: int) -> np.ndarray:
        x = self.images[i]
        if x.dtype == torch.uint8:
            return x.numpy().copy()
        norm = getattr(self.transform, "steps", [None])[-1]
        if isinstance(norm, Normalize):
            x = norm.invert(x)
        return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        image = self.transform(x.numpy()) if x.dtype == torch.uint8 else x.float()
        il = (self.image_labels[i] if self.image_labels is not None else torch.zeros(1)).to(torch.int32)
        return dict(image=image, labels=self.labels[i], image_labels=il, index=i)


class FolderSegmentationDataset(torch.utils.data.Dataset, _Meta):
    """Images in `image_dir` paired by file stem with label PNGs in `label_dir` (R + 256*G, or
    grey values); optionally resized to image_size (images bilinear, labels nearest)."""

    def __init__(self, image_dir, label_dir, *, image_size=None, label_size=None, num_concepts=None,
                 concept_names=None, category_of=None, category_names=None, transform=None):
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"directory not found: {d}")
        labels = {p.stem: p for p in self.label_dir.iterdir() if p.suffix.lower() == ".png"}
        self.pairs = []
        for p in sorted(self.image_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                if p.stem not in labels:
                    raise FileNotFoundError(f"no label PNG {self.label_dir / (p.stem + '.png')} for image {p}")
                self.pairs.append((p, labels[p.stem]))
        if not self.pairs:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.image_dir}")
        self.image_size = image_size
        self.transform = transform if transform is not None else imagenet_transform()
        if label_size is None and image_size is not None:
            label_size = image_size
        self._label_size = label_size
        if num_concepts is None and concept_names is None:
            raise ValueError("pass num_concepts or concept_names (label ids must lie below it)")
        self._init_meta(num_concepts, concept_names, category_of, category_names)
        self.resolution = image_size
        self.label_size = label_size

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, i: int) -> Path:
        return self.pairs[i][0]

    def load_image_uint8(self, i: int) -> np.ndarray:
        with Image.open(self.pairs[i][0]) as im:
            im = im.convert("RGB")
        if self.image_size is not None:
            s = self.image_size
            im = im.resize((s, s) if isinstance(s, int) else (s[1], s[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).copy()

    def __getitem__(self, i: int) -> dict:
        lab = decode_label_png(self.pairs[i][1])
        if self._label_size is not None:
            h, w = (self._label_size,) * 2 if isinstance(self._label_size, int) else self._label_size
            lab = lab[(np.arange(h) * lab.shape[0]) // h][:, (np.arange(w) * lab.shape[1]) // w]
        if lab.size and int(lab.max()) >= self.num_concepts:
            raise ValueError(f"{self.pairs[i][1]}: label id {int(lab.max())} >= num_concepts={self.num_concepts}")
        return dict(image=self.transform(self.load_image_uint8(i)),
                    labels=torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int32))[None],
                    image_labels=torch.zeros(1, dtype=torch.int32), index=i)
