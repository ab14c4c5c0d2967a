"""HTML building blocks shared by every report page: the page shell (inline CSS and script, no
network access, works from file://), escaping, number formatting with a fixed number of
decimals per column (so columns line up), key/value tables and image tags."""
from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from dissect_kernels.report.exemplars import STRIP_GAP, STRIP_TILE

esc = html.escape
MINUS = "\u2212"


def asset(name: str) -> str:
    """Text of a packaged report asset (report.css, report.js)."""
    return resources.files("dissect_kernels.report").joinpath(name).read_text(encoding="utf-8")


def html_page(title: str, body: str, nav: str = "") -> str:
    """A complete page: the report's inline style and script, the site's navigation bar on top."""
    header = f'<header class="site">{nav}</header>\n' if nav else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>\n{asset('report.css')}</style>\n</head>\n"
            f"<body>\n{header}<main>\n{body}\n</main>\n<script>\n{asset('report.js')}</script>\n"
            "</body>\n</html>\n")


def fixed(x, decimals: int = 3, *, sign: bool = False) -> str:
    """x with a fixed number of decimals and a true minus sign; '' for None, 'n/a' for NaN."""
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return ("" if x > 0 else MINUS) + "\u221e"
    text = f"{x:{'+' if sign else ''}.{decimals}f}"
    if text.lstrip("+-").strip("0.") == "":        # -0.000 and +0.000 read as 0.000
        text = text.lstrip("+-")
    return text.replace("-", MINUS)


def decimals_for(values, significant: int = 3, most: int = 6) -> int:
    """Decimals that give the largest |value| about `significant` digits (one format per column)."""
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
    top = max(finite, default=0.0)
    if top == 0.0:
        return significant - 1
    return max(0, min(most, significant - 1 - math.floor(math.log10(top))))


def num_cell(value, text: str | None = None, *, decimals: int = 3) -> str:
    """A right-aligned table cell; data-v keeps the exact value for sorting."""
    shown = fixed(value, decimals) if text is None else text
    key = "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)
    return f'<td class="num" data-v="{esc(key)}">{esc(shown)}</td>'


def flatten(key: str, value, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Nested dicts as 'key · sub' rows; lists and scalars as compact text."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            flatten(f"{key} \u00b7 {k}", v, out)
    elif isinstance(value, (dict, list, tuple)):
        out.append((key, json.dumps(value, default=str) if value else "-"))
    elif isinstance(value, float):
        out.append((key, f"{value:.6g}"))
    else:
        out.append((key, "-" if value is None or value == "" else str(value)))
    return out


def meta_table(rows) -> str:
    """Key/value table; nested dicts become one row per leaf."""
    flat: list[tuple[str, str]] = []
    for k, v in rows:
        flatten(str(k), v, flat)
    cells = "".join(f"<tr><th scope=\"row\">{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in flat)
    return f'<table class="meta">{cells}</table>'


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file, or None when it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def strip_img(folder: Path, rel: str | None, alt: str) -> str:
    """An exemplar-strip <img> (click to enlarge) with its size, or '' when the file is not in
    `folder` (so a page never links a missing image)."""
    size = image_size(Path(folder) / rel) if rel else None
    if size is None:
        return ""
    w, h = size
    return (f'<img class="strip" loading="lazy" src="{esc(quote(rel))}" width="{w}" height="{h}" '
            f'data-tile="{STRIP_TILE}" data-gap="{STRIP_GAP}" alt="{esc(alt)}" title="click to enlarge">')
