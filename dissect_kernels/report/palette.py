"""One colour per concept category, keyed by the category's name, so that a category has the
same colour on every page and in every figure of every run (Broden's six categories have fixed
colours; any other name gets a stable colour from its hash), plus the colours of figure series
that are not categories."""
from __future__ import annotations

import hashlib

from dissect_kernels.report.html import esc

# Broden's categories, in the order reports list them (Tableau 10 colours, colour-blind aware).
BRODEN_COLORS = {"object": "#4e79a7", "part": "#f28e2b", "material": "#59a14f",
                 "scene": "#e15759", "texture": "#b07aa1", "color": "#76b7b2"}
OTHER_COLORS = ("#edc948", "#9c755f", "#ff9da7", "#86bcb6", "#8cd17d", "#d37295", "#a0cbe8",
                "#ffbe7d", "#b6992d", "#499894", "#79706e", "#d4a6c8")
NO_CATEGORY = "#bab0ac"
SERIES = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")  # non-category series
REFERENCE = "#8c8c8c"    # baselines and reference lines


def category_color(name: str) -> str:
    """The category's colour (hex): fixed for Broden's names, a hash-chosen one otherwise."""
    if name in BRODEN_COLORS:
        return BRODEN_COLORS[name]
    if name in ("", "-"):
        return NO_CATEGORY
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return OTHER_COLORS[int.from_bytes(digest[:4], "big") % len(OTHER_COLORS)]


def category_order(names) -> list[str]:
    """Categories in report order: Broden's order first, then the others alphabetically."""
    names = set(names)
    known = [n for n in BRODEN_COLORS if n in names]
    return known + sorted(names - set(known))


def category_chip(name: str) -> str:
    """HTML: the category's name after a swatch of its colour."""
    return f'<span class="cat" style="--cat:{category_color(name)}">{esc(name)}</span>'
