"""The files of a GAN dissection: results, the report site (index.html, a page per layer, and
any page the caller registers, such as ace.html) and each unit's exemplar strip (its top
generated samples with the unit's mask, drawn at the strips' common tile size)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from dissect_kernels.report.dissection import dissection_site
from dissect_kernels.report.exemplars import save_strip
from dissect_kernels.report.paint_note import with_paint_note
from dissect_kernels.report.site import Site
from dissect_kernels.report.write import write_run
from dissect_kernels.results import DissectionResult

TITLE = "GAN dissection"


def write_gan(out_dir, result: DissectionResult, exemplars: dict, *,
              register: Callable[[Site], object] | None = None,
              strips: Callable[[Path], None] | None = None) -> Path:
    """exemplars = {layer: {sample: (image uint8 [H, W, 3], masks bool [U, H', W'])}} (see
    generator.generated_exemplars); `register(site)` adds pages to the report site (e.g.
    `lambda site: site.add("ace.html", ...)`) and `strips(folder)` renders their images into the
    folder the files are staged in."""
    def render(stage: Path) -> None:
        for name, lr in result.layers.items():
            found = exemplars.get(name, {})
            for u in range(lr.num_units):
                ids = [i for i in lr.topk_indices[u].tolist() if i >= 0 and i in found]
                if ids:
                    lr.exemplar_strips[u] = save_strip(
                        stage, name, u, torch.stack([found[i][0] for i in ids]),
                        torch.stack([found[i][1][u] for i in ids]), unit_base=result.unit_base)
        if strips is not None:
            strips(stage)

    site = with_paint_note(dissection_site(result, TITLE, "GAN dissection"), out_dir)
    if register is not None:
        register(site)
    return write_run(out_dir, result, strips=render, site=site)
