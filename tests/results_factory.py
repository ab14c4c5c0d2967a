"""Random (non-zero) DissectionResults for the results/report tests."""
from __future__ import annotations

import torch

from dissect_kernels.results import DissectionResult, LayerResult

CONCEPTS = ["-", "sky", "grass", "red", "blue", "dotted", "striped", "wheel", "door", "kitchen"]
CATEGORIES = ["object", "color", "texture", "scene"]
CATEGORY_OF = [0, 0, 0, 1, 1, 2, 2, 0, 0, 3]


def make_layer(name: str, units: int, seed: int, *, iqr: bool = False, convention="netdissect",
               strips: dict | None = None, high: float = 0.12) -> LayerResult:
    """A layer whose IoUs are random in (0, high): some units clear 0.04, some do not."""
    g = torch.Generator().manual_seed(seed)
    C = len(CONCEPTS)
    inter = torch.randint(1, 500, (units, C), generator=g, dtype=torch.int64)
    act = inter + torch.randint(1, 4000, (units, C), generator=g, dtype=torch.int64)
    truth = inter + torch.randint(1, 4000, (units, C), generator=g, dtype=torch.int64)
    iou = (inter / (act + truth - inter)).to(torch.float64) * (high / 0.5)
    iou[:, 0] = 0  # "-" never wins
    best_iou, best_label = iou.max(1)
    q = torch.rand(units, C, generator=g, dtype=torch.float64) * 0.05 if iqr else None
    return LayerResult.build(
        name, iou, torch.rand(units, generator=g) * 3 + 0.1, best_label, best_iou,
        concept_names=CONCEPTS, category_names=CATEGORIES,
        category_of=torch.tensor(CATEGORY_OF), convention=convention, iqr=q,
        counts={"intersection": inter, "activation": act, "truth": truth},
        topk_indices=torch.randint(0, 1000, (units, 4), generator=g),
        topk_values=torch.rand(units, 4, generator=g).sort(1, descending=True).values,
        exemplar_strips=strips or {}, rotation_info={}, extra={"shape": [units, 7, 7]})


def make_result(*, convention="netdissect", strips=None) -> DissectionResult:
    a = make_layer("features.3", 11, seed=1, convention=convention, strips=(strips or {}).get("features.3"))
    b = make_layer("block/2", 6, seed=2, iqr=True, convention=convention,
                   strips=(strips or {}).get("block/2"))
    b.rotation = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3)))[0]
    b.rotation_info = {"method": "random orthogonal", "seed": 3}
    return DissectionResult(
        {a.layer: a, b.layer: b}, convention=convention,
        model={"name": "tiny-cnn", "weights": "tiny.safetensors", "hash": "abc123"},
        dataset={"name": "synthetic-broden", "images": 64, "size": 32},
        parameters={"quantile": 0.995, "batch_size": 8, "layers": ["features.3", "block/2"]},
        skipped=3, skip_reasons={"unreadable image": 2, "no labels": 1},
        timing={"quantile": 1.25, "tally": 3.5})
