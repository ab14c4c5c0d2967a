"""The files of a classifier dissection: results, the report site (index.html and one page per
layer, rotated layers under "Rotation test") and each unit's exemplar strip (its top images from
the dataset, shaded outside the unit's thresholded mask)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dissect_kernels.io import atomic_write, ensure_dir
from dissect_kernels.report.exemplars import save_strip
from dissect_kernels.report.overview import dissection_overview
from dissect_kernels.report.site import INDEX_FILE, Site
from dissect_kernels.report.units import layer_file, layer_page, layer_summary_line
from dissect_kernels.report.write import write_run
from dissect_kernels.results import DissectionResult

TITLE = "Network dissection"


def run_subtitle(result: DissectionResult) -> str:
    """One line under the index's title: model, dataset, convention."""
    def name(meta, *keys):
        if isinstance(meta, dict):
            return next((str(meta[k]) for k in keys if meta.get(k)), "")
        return str(meta)
    model = name(result.model, "name", "class", "factory")
    data = name(result.dataset, "name", "type", "kind")
    if isinstance(result.dataset, dict):
        images = result.dataset.get("images") or result.dataset.get("num_samples")
        data += f", {images} {'samples' if 'num_samples' in result.dataset else 'images'}" if images else ""
    return " \u00b7 ".join(p for p in (model, data, f"convention {result.convention}") if p)


def dissection_site(result: DissectionResult, title: str = TITLE, kind: str = "Dissection") -> Site:
    """A Site with one page per layer (registered in the result's layer order) and the index's
    overview; callers may register more pages before rendering it."""
    site = Site(title, run_subtitle(result), overview=lambda folder: dissection_overview(result))
    for name, lr in result.layers.items():
        rotated = bool(lr.rotation_info)
        site.add(layer_file(name), name, lambda folder, lr=lr: layer_page(folder, lr, result, kind),
                 section="Rotation test" if rotated else "Layers", summary=layer_summary_line(lr))
    return site


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
                lr.exemplar_strips[u] = save_strip(stage, name, u, images, unit_masks,
                                                      unit_base=result.unit_base)

    return write_run(out_dir, result, strips=strips, site=dissection_site(result) if report else None)


def write_report(out_dir, result: DissectionResult, *, title: str = TITLE) -> Path:
    """Write the report site of `result` (index.html, a page per layer, site.json) into out_dir,
    atomically; exemplar strips are shown when their files exist there. Returns index.html."""
    if not isinstance(result, DissectionResult):
        raise TypeError(f"result must be a DissectionResult, got {type(result).__name__}")
    result.validate()
    out = ensure_dir(out_dir)
    atomic_write(out, dissection_site(result, title).writers(out))
    return out / INDEX_FILE
