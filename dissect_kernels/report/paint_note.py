"""The GAN report index's note on interactive painting: a static page cannot regenerate
images, so it shows the command that serves the painting page for this run folder."""
from __future__ import annotations

import shlex
from pathlib import Path

from dissect_kernels.report.html import esc
from dissect_kernels.report.site import Site

PAINT_COMMAND = "dissect-kernels paint --run"


def paint_note(run_dir) -> str:
    """The note's HTML (escaped): what painting does and the command for this run folder."""
    command = f"{PAINT_COMMAND} {shlex.quote(str(Path(run_dir).resolve()))}"
    return ('<section class="paint-note" id="paint"><h2>Interactive painting</h2>'
            "<p>Paint a concept into these generated images, or remove it, and see each sample "
            "regenerated at once (GANPaint). A report page cannot run the generator, so start the "
            "local painting server and open the address it prints (http://127.0.0.1:8765/):</p>"
            f"<pre><code>{esc(command)}</code></pre></section>")


def with_paint_note(site: Site, run_dir) -> Site:
    """The site with the painting note above its index overview."""
    overview = site.overview
    site.overview = lambda folder: paint_note(run_dir) + (overview(folder) if overview else "")
    return site
