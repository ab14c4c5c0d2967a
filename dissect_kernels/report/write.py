"""Writing a finished run's files all or nothing: the exemplar strips are rendered into a
staging folder, the result files and the report pages replace the old ones in one atomic write,
then the strips are moved in (renames). On any error (e.g. a full disk) an earlier run's files
stay intact."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dissect_kernels.io import ensure_dir, save_results
from dissect_kernels.results import DissectionResult

if TYPE_CHECKING:
    from dissect_kernels.report.site import Site


def write_run(out_dir, result: DissectionResult, *, strips: Callable[[Path], None] | None = None,
              site: "Site | None" = None) -> Path:
    """Write results.safetensors, units.csv, summary.json and the report `site` (its pages,
    index.html and site.json, rendered after the strips so they can link them) into out_dir;
    `strips(stage)` renders the exemplar images and records their paths in the result first.
    Returns out_dir."""
    out = ensure_dir(out_dir)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        if strips is not None:
            strips(stage)
        if site is not None:
            site.keep(out)                # analyses added to an earlier run stay listed
        save_results(out, result, extra_files=site.writers(stage) if site is not None else None)
        for strip in sorted(p for p in stage.rglob("*") if p.is_file()):
            dest = out / strip.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            strip.replace(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out
