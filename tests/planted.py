"""Planted truth for the drivers: an in-memory Broden-style dataset whose image channel 0 carries
the label map, and a model whose units are smoothed, downsampled copies of known concept masks
(plus noise units). Dissection must recover unit u <-> concept c."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PlantedDataset:
    """Concepts 1..4 as 8x8 squares, one per quadrant in a random order and offset (each covers
    exactly 1/16 of every label map); concept 5 is a scene label of half the images. Image
    channel 0 holds the label map at twice the resolution."""

    category_names = ["object", "scene"]
    COVERAGE = 1 / 16

    def __init__(self, n_images: int = 48, size: int = 64, num_concepts: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.size, self.label_size = size, size // 2
        self.num_concepts = num_concepts
        self.num_categories = 2
        self.concept_names = ["-"] + [f"thing{c}" for c in range(1, num_concepts - 1)] + ["scene_a"]
        self.category_of = torch.tensor([0] * (num_concepts - 1) + [1])
        self.labels, self.scene = [], []
        for _ in range(n_images):
            lab = np.zeros((self.label_size, self.label_size), np.int32)
            q = self.label_size // 2
            for c, (qy, qx) in zip(rng.permutation(np.arange(1, 5)), [(0, 0), (0, 1), (1, 0), (1, 1)]):
                y, x = qy * q + 2 * rng.integers(0, (q - 8) // 2 + 1), qx * q + 2 * rng.integers(0, (q - 8) // 2 + 1)
                lab[y:y + 8, x:x + 8] = c
            self.labels.append(lab)
            self.scene.append(num_concepts - 1 if rng.random() < 0.5 else 0)

    def __len__(self):
        return len(self.labels)

    def midgap_quantile(self, positions_per_image: int) -> float:
        """The quantile whose linear interpolation lands halfway between the background values
        and the planted response (1/16 of all positions): T ~ 0.5, so the mask is the square."""
        n = len(self) * positions_per_image
        return (n * (1 - self.COVERAGE) - 0.5) / (n - 1)

    def __getitem__(self, i):
        lab = torch.from_numpy(self.labels[i])
        img = lab.float().repeat_interleave(2, 0).repeat_interleave(2, 1)
        return dict(image=torch.stack([img, img * 0, img * 0]), labels=lab[None].clone(),
                    image_labels=torch.tensor([self.scene[i]], dtype=torch.int32), index=i)

    def load_image_uint8(self, i):
        lab = self.labels[i].repeat(2, 0).repeat(2, 1)
        return np.stack([lab * 30 % 256] * 3, axis=-1).astype(np.uint8)


class Planted(nn.Module):
    """Layer `units`: unit j < len(concepts) is avgpool4(image == concepts[j]) + tiny noise;
    the rest are smooth noise."""

    def __init__(self, concepts=(1, 2, 3, 4), noise_units: int = 3):
        super().__init__()
        self.concepts = list(concepts)
        self.noise_units = noise_units
        self.units = nn.Identity()
        self.head = nn.Conv2d(len(concepts) + noise_units, 2, 1)

    def forward(self, x):
        maps = [(x[:, 0] == c).float() for c in self.concepts]
        planted = nn.functional.avg_pool2d(torch.stack(maps, 1), 4)
        noise = torch.stack([self._noise(img) for img in x])   # per image: batching-independent
        planted = planted + 1e-3 * noise[:, :len(self.concepts), ::4, ::4]
        smooth = nn.functional.avg_pool2d(noise[:, len(self.concepts):], 4)
        return self.head(self.units(torch.cat([planted, smooth], 1)))

    def _noise(self, img):
        g = torch.Generator().manual_seed(int(img.sum().item() * 7919) % 1_000_003)
        return torch.rand(len(self.concepts) + self.noise_units, *img.shape[-2:], generator=g)


def write_planted_broden(root, data: PlantedDataset):
    """`data` as a Broden-format folder: images store the label id in their red channel (so
    --normalize 0,0.00392156862745098, i.e. mean 0 and std 1/255, gives the planted models their
    ids back), label PNGs the object layer, the scene label as an image-level label."""
    import csv
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def write(name, header, rows):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    rows = []
    for i in range(len(data)):
        lab = data.labels[i].astype(np.uint8)
        img = np.zeros((data.size, data.size, 3), np.uint8)
        img[..., 0] = lab.repeat(2, 0).repeat(2, 1)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        png = np.zeros((*lab.shape, 3), np.uint8)
        png[..., 0] = lab
        Image.fromarray(png).save(root / "images" / f"{i}_object.png")
        scene = str(data.scene[i]) if data.scene[i] else ""
        rows.append([f"{i}.png", "train", data.size, data.size, data.label_size, data.label_size,
                     f"{i}_object.png", scene])
    write("index.csv", ["image", "split", "ih", "iw", "sh", "sw", "object", "scene"], rows)
    names = data.concept_names
    cats = ["object"] * (data.num_concepts - 1) + ["scene"]
    write("label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
          [[n, names[n], f"{cats[n - 1]}(1)", 1, 1.0, ""] for n in range(1, data.num_concepts)])
    for cat in ("object", "scene"):
        members = [n for n in range(1, data.num_concepts) if cats[n - 1] == cat]
        write(f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
              [[0, 0, "-", 0, 0.0]] + [[k + 1, n, names[n], 1, 1.0] for k, n in enumerate(members)])
    write("category.csv", ["name", "first", "last", "count", "frequency"],
          [["object", 1, data.num_concepts - 2, data.num_concepts - 2, len(data)],
           ["scene", data.num_concepts - 1, data.num_concepts - 1, 1, len(data)]])
    return root
