"""A run's report site: index.html linking every page the run wrote, grouped by section, each
page carrying a navigation bar back to the index and to its siblings. A writer registers a page
in one line (`site.add(file, title, render, section=...)`); `site.render(folder)` returns every
page's HTML plus index.html and site.json, for one all-or-nothing write with the run's other
files. site.json keeps the index's content, so an analysis run later can add its page to an
existing run's site (add_page) without recomputing anything."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from dissect_kernels.io import atomic_write, ensure_dir, read_json, write_text
from dissect_kernels.report.html import esc, html_page

INDEX_FILE = "index.html"
MANIFEST_FILE = "site.json"
SECTION_ORDER = ("Layers", "Rotation test", "Causal effects", "Ablation")   # others follow


@dataclass
class PageEntry:
    """One page of the site: its file (relative to the run folder), title, index section and a
    one-line summary shown on the index (plain text)."""
    file: str
    title: str
    section: str = "Pages"
    summary: str = ""


class Site:
    """The pages of one run. `overview(folder)` returns the index's content below the page list
    (figures, tables), rendered when the site is."""

    def __init__(self, title: str, subtitle: str = "", overview: Callable[[Path], str] | None = None):
        self.title, self.subtitle, self.overview = title, subtitle, overview
        self.entries: list[PageEntry] = []
        self.renderers: dict[str, Callable[[Path], str]] = {}
        self.kept: list[PageEntry] = []          # pages of an earlier site listed, not rewritten

    def keep(self, folder: Path, section: str = "Analyses") -> "Site":
        """List the `section` pages of the site already in `folder` (e.g. analyses added to an
        earlier run) whose files still exist, so rewriting the site does not orphan them."""
        path = Path(folder) / MANIFEST_FILE
        if path.is_file():
            old = read_json(path, "report site manifest").get("pages", [])
            self.kept = [PageEntry(**e) for e in old if e.get("section") == section
                         and e["file"] not in self.renderers and (Path(folder) / e["file"]).is_file()]
        return self

    def add(self, file: str, title: str, render: Callable[[Path], str], *, section: str = "Pages",
            summary: str = "") -> "Site":
        """Register a page: render(folder) returns its body HTML (the folder holds its images)."""
        if file in (INDEX_FILE, MANIFEST_FILE) or file in self.renderers:
            raise ValueError(f"page file {file!r} is reserved or already registered")
        self.entries.append(PageEntry(file, title, section, summary))
        self.renderers[file] = render
        return self

    def render(self, folder: Path) -> dict[str, str]:
        """{file name: text} for every page, index.html and site.json."""
        entries = ordered(self.entries + [e for e in self.kept if e.file not in self.renderers])
        out = {e.file: html_page(f"{e.title} \u00b7 {self.title}", self.body(e.file, folder),
                                 nav_bar(self.title, entries, e.file)) for e in entries if e.file in self.renderers}
        overview = self.overview(folder) if self.overview else ""
        manifest = {"title": self.title, "subtitle": self.subtitle, "overview": overview,
                    "pages": [asdict(e) for e in entries]}
        out[INDEX_FILE] = index_page(manifest)
        out[MANIFEST_FILE] = json.dumps(manifest, indent=1) + "\n"
        return out

    def body(self, file: str, folder: Path) -> str:
        """A registered page's body HTML (a renderer returning anything else is a bug: refused)."""
        body = self.renderers[file](folder)
        if not isinstance(body, str):
            raise TypeError(f"the renderer of {file} returned {type(body).__name__}, not HTML text")
        return body

    def writers(self, folder: Path) -> dict[str, Callable[[Path], None]]:
        """render() as atomic_write writers (name -> writer(path))."""
        return {name: (lambda p, t=text: write_text(p, t)) for name, text in self.render(folder).items()}


def ordered(entries: list[PageEntry]) -> list[PageEntry]:
    """Entries by section (SECTION_ORDER first, then by first appearance), stable within one."""
    first: dict[str, int] = {}
    for i, e in enumerate(entries):
        first.setdefault(e.section, i)

    def rank(e: PageEntry):
        known = SECTION_ORDER.index(e.section) if e.section in SECTION_ORDER else len(SECTION_ORDER)
        return known, first[e.section]
    return sorted(entries, key=rank)


def href(file: str) -> str:
    return esc(quote(file))


def nav_bar(site_title: str, entries: list[PageEntry], current: str | None) -> str:
    """The bar on top of every page: the run's title (links to the index), then every page."""
    home = ' aria-current="page"' if current is None else ""
    links = [f'<a class="home" href="{INDEX_FILE}"{home}>{esc(site_title)}</a>']
    for e in entries:
        mark = ' aria-current="page"' if e.file == current else ""
        links.append(f'<a href="{href(e.file)}"{mark} title="{esc(e.section)}">{esc(e.title)}</a>')
    return f'<nav aria-label="report pages">{"".join(links)}</nav>'


def index_page(manifest: dict) -> str:
    """index.html from a manifest: title, the page list by section, then the overview."""
    entries = [PageEntry(**e) for e in manifest["pages"]]
    parts = [f"<h1>{esc(manifest['title'])}</h1>"]
    if manifest.get("subtitle"):
        parts.append(f'<p class="lede">{esc(manifest["subtitle"])}</p>')
    sections: dict[str, list[PageEntry]] = {}
    for e in entries:
        sections.setdefault(e.section, []).append(e)
    parts.append('<div class="pages">')
    for section, items in sections.items():
        lis = "".join(f'<li><a href="{href(e.file)}">{esc(e.title)}</a>'
                      f'{" <span>" + esc(e.summary) + "</span>" if e.summary else ""}</li>' for e in items)
        parts.append(f'<section><h2>{esc(section)}</h2><ul class="page-list">{lis}</ul></section>')
    parts.append("</div>")
    parts.append(manifest.get("overview", ""))
    return html_page(manifest["title"], "\n".join(parts), nav_bar(manifest["title"], entries, None))


def add_page(out_dir, file: str, title: str, body: str, *, section: str = "Analyses",
             summary: str = "") -> Path:
    """Add a page to the site of an existing run folder (written by an earlier run): writes
    `file` and rewrites index.html and site.json, all three atomically. Returns the page path."""
    out = ensure_dir(out_dir)
    manifest = read_json(out / MANIFEST_FILE, "report site manifest") if (out / MANIFEST_FILE).is_file() \
        else {"title": "Report", "subtitle": "", "overview": "", "pages": []}
    entries = [PageEntry(**e) for e in manifest["pages"] if e["file"] != file]
    entries.append(PageEntry(file, title, section, summary))
    entries = ordered(entries)
    manifest["pages"] = [asdict(e) for e in entries]
    page = html_page(f"{title} \u00b7 {manifest['title']}", body, nav_bar(manifest["title"], entries, file))
    atomic_write(out, {file: lambda p: write_text(p, page),
                       INDEX_FILE: lambda p: write_text(p, index_page(manifest)),
                       MANIFEST_FILE: lambda p: write_text(p, json.dumps(manifest, indent=1) + "\n")})
    return out / file
