"""The files of a GAN dissection: results, report.html (plus any extra page, such as ace.html)
and each unit's exemplar strip (its top generated samples with the unit's mask)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from dissect_kernels.report.exemplars import save_strip
from dissect_kernels.report.html import REPORT_FILE, html_page, report_body
from dissect_kernels.report.write import write_run
from dissect_kernels.results import DissectionResult

TITLE = "GAN dissection report"
STRIP_SIZE = 64


def write_gan(out_dir, result: DissectionResult, exemplars: dict, *,
              pages: dict[str, Callable[[Path], str]] | None = None,
              strips: Callable[[Path], None] | None = None) -> Path:
    """exemplars = {layer: {sample: (image uint8 [H, W, 3], masks bool [U, H', W'])}} (see
    generator.generated_exemplars); `pages` adds pages beside report.html and `strips` renders
    more images into the staging folder (both see the folder the files are staged in)."""
    def render(stage: Path) -> None:
        for name, lr in result.layers.items():
            found = exemplars.get(name, {})
            for u in range(lr.num_units):
                ids = [i for i in lr.topk_indices[u].tolist() if i >= 0 and i in found]
                if ids:
                    lr.exemplar_strips[u] = save_strip(
                        stage, name, u, torch.stack([found[i][0] for i in ids]),
                        torch.stack([found[i][1][u] for i in ids]), size=STRIP_SIZE)
        if strips is not None:
            strips(stage)

    all_pages = {REPORT_FILE: lambda stage: html_page(TITLE, report_body(stage, result, TITLE))}
    all_pages.update(pages or {})
    return write_run(out_dir, result, strips=render, pages=all_pages)
