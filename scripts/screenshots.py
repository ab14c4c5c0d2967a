#!/usr/bin/env python
"""Screenshots of the default reports at 1,280 px for reviewers (docs/screenshots/*.png): runs
`dissect-kernels dissect`, `gan` and `ablate` with their defaults (or reuses the runs already in
--runs), opens the pages in headless Chromium and saves the top of each as a small palette PNG.

    python scripts/screenshots.py                      # runs the three commands (~2 min on 2 cores)
    python scripts/screenshots.py --runs /tmp/r        # reuse /tmp/r/{dissect,gan,ablate} if there

Needs chromium, chromedriver and selenium (apt-get install -y chromium chromium-driver; pip
install selenium)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from dissect_kernels.report.browser import (console_errors, headless_chromium, missing_reason, open_page,
                                            page_facts, screenshot)

ROOT = Path(__file__).resolve().parents[1]
# (run, page, screenshot name, height in px, element to start from): what a reviewer sees first
SHOTS = (("dissect", "index.html", "dissect-index", 1400, None),
         ("dissect", "layer-conv4.html", "dissect-layer", 1500, None),
         ("gan", "layer-layer3.html", "gan-layer", 1300, None),
         ("gan", "ace.html", "gan-ace", 1500, None),
         ("gan", "ace.html", "gan-ace-units", 1300, "#ace-unit-0"),
         ("gan", "context.html", "gan-context", 1300, None),
         ("gan", "artifacts.html", "gan-artifacts", 1100, None),
         ("gan", "generated_vs_real.html", "gan-real", 1100, None),
         ("ablate", "ablation.html", "ablate", 1500, None),
         ("ablate", "ablation.html", "ablate-classes", 1300, ".cards"))


def ensure_runs(runs: Path) -> None:
    """Run each default command whose output folder has no index.html yet."""
    for command in ("dissect", "gan", "ablate"):
        if not (runs / command / "index.html").is_file():
            print(f"running dissect-kernels {command} ...", flush=True)
            subprocess.run([sys.executable, "-m", "dissect_kernels", command, "--out", str(runs / command),
                            "--quiet"], check=True, cwd=runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="folder of the runs (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        raise SystemExit(f"screenshots: {reason}")
    runs = args.runs or Path(tempfile.mkdtemp(prefix="dk-screenshots-"))
    runs.mkdir(parents=True, exist_ok=True)
    ensure_runs(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    with headless_chromium(args.width) as driver:
        for run, page, name, height, start in SHOTS:
            open_page(driver, runs / run / page, args.width)
            facts, errors = page_facts(driver), console_errors(driver)
            path = screenshot(driver, args.out / f"{name}.png", args.width, height, scroll_to=start)
            print(f"{path} ({path.stat().st_size // 1024} KB; page {facts['scrollWidth']} px wide, "
                  f"{len(facts['brokenImages'])} broken images, {len(errors)} console errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
