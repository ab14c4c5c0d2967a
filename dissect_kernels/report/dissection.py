"""The files of a classifier dissection: results, report.html and each unit's exemplar strip
(its top images from the dataset, shaded outside the unit's thresholded mask)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dissect_kernels.report.exemplars import save_strip
from dissect_kernels.report.html import REPORT_FILE, html_page, report_body
from dissect_kernels.report.write import write_run
from dissect_kernels.results import DissectionResult

TITLE = "Network dissection report"


def write_dissection(out_dir, result: DissectionResult, masks: dict, load_image: Callable[[int], np.ndarray],
                     *, report: bool = True) -> Path:
    """Write a dissection's files; masks[f"{layer}/masks"] = {"keys": [P, 2] (unit, image),
    "masks": [P, H, W]} from the tally pass (ExemplarMasks); load_image(i) -> uint8 [S, S, 3]."""
    def strips(stage: Path) -> None:
        cache: dict[int, np.ndarray] = {}

        def image(i: int) -> np.ndarray:
            if i not in cache:
                cache[i] = load_image(i)
            return cache[i]

        for name, lr in result.layers.items():
            kept = masks.get(f"{name}/masks")
            if kept is None or lr.topk_indices is None:
                continue
            found = {tuple(k): j for j, k in enumerate(kept["keys"].tolist())}
            for u, row in enumerate(lr.topk_indices.tolist()):
                keys = [(u, int(i)) for i in row if i >= 0 and (u, int(i)) in found]
                if not keys:
                    continue
                images = np.stack([image(i) for _, i in keys])
                unit_masks = torch.stack([kept["masks"][found[k]] for k in keys]).numpy()
                lr.exemplar_strips[u] = save_strip(stage, name, u, images, unit_masks)

    pages = {REPORT_FILE: lambda stage: html_page(TITLE, report_body(stage, result, TITLE))} if report else {}
    return write_run(out_dir, result, strips=strips, pages=pages)
