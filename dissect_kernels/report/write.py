"""Writing a finished run's files all or nothing: the exemplar strips are rendered into a
staging folder, the result files and the report pages replace the old ones in one atomic write,
then the strips are moved in (renames). On any error (e.g. a full disk) an earlier run's files
stay intact."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from dissect_kernels.io import ensure_dir, save_results, write_text
from dissect_kernels.results import DissectionResult


def write_run(out_dir, result: DissectionResult, *, strips: Callable[[Path], None] | None = None,
              pages: dict[str, Callable[[Path], str]] | None = None) -> Path:
    """Write results.safetensors, units.csv, summary.json and `pages` (file name -> function of
    the staging folder returning the page's HTML, rendered after the strips so it can link
    them) into out_dir; `strips(stage)` renders the exemplar images and records their paths in
    the result first. Returns out_dir."""
    out = ensure_dir(out_dir)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        if strips is not None:
            strips(stage)
        texts = {name: render(stage) for name, render in (pages or {}).items()}
        extra = {name: (lambda path, text=text: write_text(path, text)) for name, text in texts.items()}
        save_results(out, result, extra_files=extra)
        for strip in sorted(p for p in stage.rglob("*") if p.is_file()):
            dest = out / strip.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            strip.replace(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out
