"""The report site without a browser: strips shade outside the mask and outline it; figures use
the report style and one colour per category name; numbers have fixed decimals; write_report
writes index.html + a page per layer whose links all resolve, whose unit tables arrive sorted by
IoU and list every unit, and which escape every name; add_page extends an existing site; the
sort script (run under node) sorts grouped rows. tests/test_report_browser.py checks the pages
of real runs in Chromium."""
import base64
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from results_factory import make_layer, make_result

import dissect_kernels as dk
from dissect_kernels.report import add_page, grouped_bar, render_strip, save_strip, strip_path, write_report
from dissect_kernels.report.exemplars import contour
from dissect_kernels.report.html import decimals_for, fixed
from dissect_kernels.report.palette import BRODEN_COLORS, category_color, category_order
from dissect_kernels.report.plots import figure_svg, layer_summary
from dissect_kernels.report.units import layer_file

VOID = {"meta", "img", "input", "br", "hr", "link", "col", "source", "wbr"}
HOSTILE = '<script>window.pwned = 1</script><b>bold</b> & "q" $x$'


class Page(HTMLParser):
    """Checks tag balance; collects what a browser would fetch, the tables' rows (data-v of each
    cell; a grouped table's row is a <tbody>: its first row's cells), inline scripts and text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.refs, self.tables, self.scripts, self.text = [], [], [], [], [], []
        self._script = self._first_row = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if k in a]
        if tag == "table":
            self.tables.append({"layer": a.get("data-layer"), "class": a.get("class") or "", "rows": [],
                                "heads": []})
        elif tag == "th" and self.tables and "thead" in self.stack:
            self.tables[-1]["heads"].append(a)
        elif tag == "tbody" and self.tables and "grouped" in self.tables[-1]["class"]:
            self.tables[-1]["rows"].append({"class": a.get("class"), "cells": [], "id": a.get("id")})
        elif tag == "td" and self.tables and self.stack[-1:] == ["tr"] and self.stack[-2:-1] == ["tbody"]:
            if self._first_row:
                self.tables[-1]["rows"][-1]["cells"].append(a.get("data-v"))
        if tag == "tr" and self.stack[-1:] == ["tbody"] and self.tables:
            rows = self.tables[-1]["rows"]
            if "grouped" not in self.tables[-1]["class"]:     # a row per <tr>
                rows.append({"class": a.get("class"), "cells": [], "id": a.get("id")})
            self._first_row = not rows[-1].get("seen")
            rows[-1]["seen"] = True
        self._script = tag == "script"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        self._script = False

    def handle_data(self, data):
        (self.scripts if self._script else self.text).append(data)


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    return p


def random_images(k, S, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(20, 256, size=(k, S, S, 3), dtype=np.uint8)


# ------------------------------------------------------------------ strips

def test_strip_shades_outside_and_outlines_the_mask():
    k, size = 3, 24
    imgs = random_images(k, size)
    rng = np.random.default_rng(1)
    masks = rng.random((k, 6, 6)) < 0.4                 # coarser than the image: nearest x4
    masks[0] = False
    masks[1] = True
    strip = np.asarray(render_strip(imgs, masks, size=size, gap=3))
    assert strip.shape == (size, k * size + 2 * 3, 3)
    assert (strip[:, size:size + 3] == 255).all()       # white gap
    for i in range(k):
        tile = strip[:, i * (size + 3): i * (size + 3) + size].astype(int)
        m = np.kron(masks[i], np.ones((4, 4), dtype=bool)).astype(bool)
        edge = contour(m)
        img = imgs[i].astype(int)
        outside, inside = ~m, m & ~edge
        assert np.array_equal(tile[outside], np.rint(img[outside] * 0.2).astype(int))
        assert np.array_equal(tile[inside], img[inside])
        assert (tile[edge] == [255, 255, 0]).all()
        if outside.any():
            assert (tile[outside] < img[outside]).all()  # darkened
    assert not contour(np.ones((5, 5), bool)).any()      # the image border is no contour
    ring = contour(np.pad(np.ones((3, 3), bool), 1))
    assert ring.sum() == 8 and not ring[2, 2]


def test_strip_resizes_images_and_masks():
    imgs = random_images(2, 40)
    strip = render_strip(imgs, np.ones((2, 13, 13), bool), size=30, gap=0, contour_color=None)
    assert strip.size == (60, 30)
    expect = np.asarray(Image.fromarray(imgs[1]).resize((30, 30), Image.BILINEAR))
    assert np.array_equal(np.asarray(strip)[:, 30:], expect)  # mask all ones: untouched


def test_strip_wraps_into_rows_of_columns_tiles():
    imgs = random_images(5, 8)
    strip = np.asarray(render_strip(imgs, np.ones((5, 8, 8), bool), size=8, gap=2, columns=2,
                                    contour_color=None))
    assert strip.shape == (3 * 8 + 2 * 2, 2 * 8 + 2, 3)
    assert np.array_equal(strip[20:28, 0:8], imgs[4])   # fifth tile: third row, first column
    assert (strip[20:28, 10:18] == 255).all()           # the empty slot stays white


def test_strip_rejects_bad_input():
    with pytest.raises(ValueError, match="images must be uint8"):
        render_strip(np.zeros((2, 8, 8, 3), np.float32) + 1, np.ones((2, 8, 8), bool))
    with pytest.raises(ValueError, match="same k"):
        render_strip(random_images(2, 8), np.ones((3, 8, 8), bool))
    with pytest.raises(ValueError, match="columns"):
        render_strip(random_images(2, 8), np.ones((2, 8, 8), bool), columns=0)


def test_save_strip_writes_a_jpeg_at_its_relative_path(tmp_path):
    rel = save_strip(tmp_path, "block/2", 3, torch.from_numpy(random_images(4, 16)),
                     torch.rand(4, 8, 8) > 0.5, size=20, gap=2)
    assert rel == strip_path("block/2", 3) and rel.startswith("images/block_2-")
    assert rel.endswith("/unit_0003.jpg")
    with Image.open(tmp_path / rel) as im:
        assert im.format == "JPEG" and im.size == (4 * 20 + 3 * 2, 20)
    assert strip_path("block_2", 3) != rel  # sanitised names never collide
    assert [p.name for p in (tmp_path / rel).parent.iterdir()] == ["unit_0003.jpg"]


def test_default_strips_are_large_enough_to_read(tmp_path):
    rel = save_strip(tmp_path, "l", 0, random_images(12, 64), np.ones((12, 4, 4), bool))
    with Image.open(tmp_path / rel) as im:       # 64 px images drawn at 112 px, 10 per row
        assert im.size == (10 * 112 + 9 * 3, 2 * 112 + 3)


# ------------------------------------------------------------------ numbers, colours, figures

def test_numbers_have_fixed_decimals():
    assert [fixed(v) for v in (0.5, 0.009097, 0.1196, -0.01392, 0.0)] == \
        ["0.500", "0.009", "0.120", "\u22120.014", "0.000"]
    assert fixed(0.749, 3, sign=True) == "+0.749" and fixed(-0.0001, 3, sign=True) == "0.000"
    assert fixed(None) == "" and fixed(float("nan")) == "n/a"
    assert decimals_for([2.24, 7.88]) == 2 and decimals_for([0.012, 0.07]) == 4
    assert decimals_for([1234.0]) == 0 and decimals_for([]) == 2


def test_category_colours_are_keyed_by_name():
    assert category_color("object") == BRODEN_COLORS["object"]
    assert category_color("my-cat") == category_color("my-cat") != category_color("-")
    assert len(set(BRODEN_COLORS.values())) == len(BRODEN_COLORS)
    assert category_order(["zeta", "texture", "object", "alpha"]) == ["object", "texture", "alpha", "zeta"]


def test_grouped_bar_draws_every_bar_in_its_category_colour():
    from matplotlib.colors import to_hex
    groups = [("object", [("sky", 3), ("grass", 1)]), ("color", [("red", 2)]), ("empty", [])]
    fig = grouped_bar(groups, ylabel="units")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [3, 1, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sky", "grass", "red"]
    assert [to_hex(p.get_facecolor()) for p in ax.patches] == \
        [BRODEN_COLORS["object"]] * 2 + [BRODEN_COLORS["color"]]
    assert ax.get_xticklabels()[0].get_fontsize() >= 9 and ax.yaxis.label.get_fontsize() >= 10


def test_figures_show_names_as_text_not_markup():
    name = '<b>x</b> & "q" $y$'                    # '$' would start matplotlib's mathtext
    svg = figure_svg(grouped_bar([("object", [(name, 1)])]))
    root = ET.fromstring(svg)                      # well-formed: the name is escaped
    assert name in ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("text")]


def test_detector_bars_counts_detectors_by_category_and_concept():
    from dissect_kernels.report.plots import detector_bars
    lr = make_layer("l", 40, seed=11)
    ax = detector_bars(lr).axes[0]
    shown = dict(zip([t.get_text() for t in ax.get_xticklabels()], [p.get_height() for p in ax.patches]))
    labels = lr.best_label[lr.detector].tolist()
    assert shown == {lr.concept_names[c]: labels.count(c) for c in set(labels)}
    assert len(detector_bars(lr, max_bars=2).axes[0].patches) == 2


def test_layer_summary_stacks_categories_per_layer():
    fig = layer_summary([("a", {"object": (3, 2), "color": (1, 1)}), ("b", {"object": (5, 4)})])
    units, concepts = fig.axes
    assert sorted(p.get_height() for p in units.patches) == [0, 1, 3, 5]   # color has no unit in b
    assert sorted(p.get_height() for p in concepts.patches) == [0, 1, 2, 4]
    assert units.get_ylabel() == "detector units" and concepts.get_ylabel() == "unique concepts detected"


# ------------------------------------------------------------------ the report site

def build_run(out: Path):
    strips = {"features.3": {}, "block/2": {}}
    for u in (0, 2, 5):
        strips["features.3"][u] = save_strip(out, "features.3", u, random_images(3, 16, u),
                                             np.random.default_rng(u).random((3, 4, 4)) < 0.5, size=16)
    strips["features.3"][7] = "images/features.3/never_rendered.jpg"  # missing: not linked
    strips["features.3"][8] = None
    strips["block/2"][1] = save_strip(out, "block/2", 1, random_images(3, 16), np.ones((3, 4, 4), bool))
    r = make_result(strips=strips)
    dk.save_results(out, r)
    return r


def links_resolve(folder: Path, page: Page) -> None:
    for ref in page.refs:
        assert not re.match(r"^(https?:)?//", ref), ref          # nothing from the network
        if ref.startswith(("data:", "#")):
            continue
        assert (folder / unquote(ref.split("#")[0])).is_file(), ref


def test_site_has_an_index_and_a_page_per_layer_whose_links_resolve(tmp_path):
    r = build_run(tmp_path)
    index = write_report(tmp_path, r)
    assert index == tmp_path / "index.html"
    pages = [tmp_path / layer_file(name) for name in r.layers]
    assert len(set(pages)) == 2 and all(p.is_file() for p in pages)
    manifest = json.loads((tmp_path / "site.json").read_text())
    assert [p["file"] for p in manifest["pages"]] == [p.name for p in pages]
    home = parse(index)
    assert all(p.name in home.refs for p in pages)
    for path in [index, *pages]:
        page = parse(path)
        links_resolve(tmp_path, page)
        assert "index.html" in page.refs                  # every page links back home
    assert "unreadable image: 2" in index.read_text() and "tiny-cnn" in index.read_text()


def test_unit_tables_arrive_sorted_by_iou_and_list_every_unit(tmp_path):
    r = build_run(tmp_path)
    write_report(tmp_path, r)
    for name, lr in r.layers.items():
        page = parse(tmp_path / layer_file(name))
        (table,) = [t for t in page.tables if "sortable" in t["class"]]
        assert table["layer"] == name
        ious = [float(row["cells"][3]) for row in table["rows"]]
        assert ious == sorted(lr.best_iou.tolist(), reverse=True)
        units = [int(row["cells"][0]) - r.unit_base for row in table["rows"]]
        assert sorted(units) == list(range(lr.num_units))
        assert [row["class"] == "det" for row in table["rows"]] == [bool(lr.detector[u]) for u in units]
        iou_head = table["heads"][3]
        assert iou_head.get("aria-sort") == "descending" and iou_head.get("data-first") == "descending"
        text = (tmp_path / layer_file(name)).read_text()
        n, d = lr.num_units, lr.num_detectors
        assert f"<b>{d}</b> of <b>{n}</b> units are detectors" in text
        shown = re.findall(r'<td class="num" data-v="([^"]*)">([^<]*)</td>', text)
        iou_cells = shown[1::3] if lr.iqr is None else shown[1::4]        # unit, IoU, [IQR,] threshold
        assert len(iou_cells) == lr.num_units
        assert all(re.fullmatch(r"\d\.\d{3}", t) and abs(float(t) - float(v)) <= 5e-4 for v, t in iou_cells)


def test_only_existing_strips_are_shown(tmp_path):
    r = build_run(tmp_path)
    write_report(tmp_path, r)
    text = (tmp_path / layer_file("features.3")).read_text()
    page = parse(tmp_path / layer_file("features.3"))
    assert len([ref for ref in page.refs if ref.startswith("images/")]) == 3
    assert "never_rendered" not in text
    assert re.search(r'<img class="strip"[^>]* width="54" height="16"', text)   # its real size


def test_names_from_user_files_are_escaped_everywhere(tmp_path):
    lr = make_layer("conv<1>", 12, seed=4)
    lr.concept_names[1] = HOSTILE
    lr.category_names[0] = "<i>cat</i>"
    lr.best_label[:] = 1
    lr.best_category[:] = 0
    write_report(tmp_path, dk.DissectionResult([lr], convention="exact",
                                               model={"name": "<img src=x onerror=alert(1)>"}))
    for path in [tmp_path / "index.html", tmp_path / layer_file("conv<1>")]:
        html = path.read_text()
        page = parse(path)
        assert "<script>window" not in html and "<b>bold</b>" not in html and "<img src=x" not in html
        assert len(page.scripts) == 1                      # only the report's own script
        assert "<i>cat</i>" not in html
    visible = "".join(parse(tmp_path / layer_file("conv<1>")).text)
    assert HOSTILE in visible and "<i>cat</i>" in visible


def test_layer_bar_graph_is_inline_svg(tmp_path):
    r = build_run(tmp_path)
    write_report(tmp_path, r)
    page = parse(tmp_path / layer_file("features.3"))
    (graph,) = [ref for ref in page.refs if ref.startswith("data:image/svg+xml;base64,")]
    svg = base64.b64decode(graph.split(",", 1)[1]).decode()
    assert ET.fromstring(svg).tag.endswith("svg")
    lr = r.layers["features.3"]
    for c in set(lr.best_label[lr.detector].tolist()):
        assert lr.concept_names[c] in svg
    index = parse(tmp_path / "index.html")
    assert len([ref for ref in index.refs if ref.startswith("data:image/svg+xml")]) == 1  # summary


def test_rotated_layers_are_listed_as_the_rotation_test(tmp_path):
    a = make_layer("conv4", 8, seed=1)
    b = make_layer("conv4@rot1", 8, seed=2)
    b.rotation_info = {"seed": 1, "of": "conv4"}
    write_report(tmp_path, dk.DissectionResult([a, b], convention="exact"))
    manifest = json.loads((tmp_path / "site.json").read_text())
    assert [(p["file"], p["section"]) for p in manifest["pages"]] == \
        [(layer_file("conv4"), "Layers"), (layer_file("conv4@rot1"), "Rotation test")]
    text = (tmp_path / "index.html").read_text()
    assert "<h2>Rotation test</h2>" in text and text.count(f'href="{layer_file("conv4@rot1")}"') >= 2


def test_layer_without_detectors_has_no_graph(tmp_path):
    lr = make_layer("quiet", 4, seed=9, high=0.01)
    assert lr.num_detectors == 0
    write_report(tmp_path, dk.DissectionResult([lr], convention="exact"))
    page = parse(tmp_path / layer_file("quiet"))
    assert not [ref for ref in page.refs if ref.startswith("data:")]
    assert "No unit of any layer is a detector" in (tmp_path / "index.html").read_text()
    (table,) = [t for t in page.tables if "sortable" in t["class"]]
    assert sorted(int(row["cells"][0]) for row in table["rows"]) == [0, 1, 2, 3]  # exact: 0-based


def test_report_from_loaded_results_is_identical(tmp_path):
    r = build_run(tmp_path)
    write_report(tmp_path, r)
    first = {p.name: p.read_text() for p in tmp_path.glob("*.html")}
    write_report(tmp_path, dk.load_results(tmp_path))
    assert {p.name: p.read_text() for p in tmp_path.glob("*.html")} == first


def test_report_unwritable_out_dir_is_named(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to output directory") as e:
        write_report(blocker / "out", make_result())
    assert str(blocker / "out") in str(e.value)


def test_add_page_joins_an_existing_site(tmp_path, monkeypatch):
    write_report(tmp_path, make_result())
    path = add_page(tmp_path, "robustness.html", "Robustness <1>", "<h1>robust</h1>", section="Analyses",
                    summary="IoU under noise")
    assert path.is_file() and "index.html" in parse(path).refs
    index = (tmp_path / "index.html").read_text()
    assert 'href="robustness.html"' in index and "Robustness &lt;1&gt;" in index and "IoU under noise" in index
    assert "Detectors across layers" in index                  # the overview is kept
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr("dissect_kernels.report.site.index_page", lambda m: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        add_page(tmp_path, "other.html", "Other", "<p>x</p>")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_site_refuses_a_page_registered_twice():
    from dissect_kernels.report import Site
    site = Site("t")
    site.add("a.html", "A", lambda folder: "")
    for name in ("a.html", "index.html", "site.json"):
        with pytest.raises(ValueError, match="reserved or already registered"):
            site.add(name, "again", lambda folder: "")


def test_browser_checks_say_what_to_install_without_chromium(monkeypatch):
    from dissect_kernels.report import browser
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.delenv("DK_CHROMIUM", raising=False)
    monkeypatch.delenv("DK_CHROMEDRIVER", raising=False)
    reason = browser.missing_reason()
    assert reason and "apt-get install -y chromium chromium-driver" in reason


JS_HARNESS = r"""
// a minimal DOM for report.js: one grouped table (a <tbody> per unit) whose header cells sort it
function cell(v, text) { return { getAttribute: k => (k === 'data-v' ? v : null), textContent: text }; }
function el(extra) {
  const h = {};
  return Object.assign({ h, attrs: {}, addEventListener: (e, f) => { h[e] = f; },
    getAttribute(k) { return this.attrs[k] === undefined ? null : this.attrs[k]; },
    setAttribute(k, v) { this.attrs[k] = v; }, removeAttribute(k) { delete this.attrs[k]; } }, extra);
}
const table = { tBodies: [], classList: { contains: c => c === 'grouped' },
  appendChild(b) { this.tBodies.splice(this.tBodies.indexOf(b), 1); this.tBodies.push(b); } };
table.tBodies = DATA.map(r => ({ rows: [{ cells: r.map(x => cell(x[0], x[1])) }] }));
const heads = HEADS.map(first => el({ attrs: first ? { 'data-first': first } : {} }));
table.tHead = { rows: [{ cells: heads }] };
global.document = { querySelectorAll: s => (s === 'table.sortable' ? [table] : []),
  addEventListener: () => {}, body: { classList: { toggle: () => {} } } };
SCRIPT
const out = [];
for (const col of CLICKS) { heads[col].h.click(); out.push(table.tBodies.map(b => b.rows[0].cells[0].textContent)); }
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_sort_script_sorts_grouped_rows_numerically_in_each_columns_first_direction():
    from dissect_kernels.report.html import asset
    data = [[["1", "1"], [None, "sky"], ["0.5", "0.5"]],
            [["2", "2"], [None, "grass"], ["0.05", "0.05"]],
            [["10", "10"], [None, "red"], ["0.2", "0.2"]]]
    src = (JS_HARNESS.replace("DATA", json.dumps(data))
           .replace("HEADS", json.dumps(["ascending", "ascending", "descending"]))
           .replace("CLICKS", "[2, 2, 1, 0]").replace("SCRIPT", asset("report.js")))
    res = subprocess.run(["node", "-e", src], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out[0] == ["1", "10", "2"]     # IoU: first click descending, numerically
    assert out[1] == ["2", "10", "1"]     # second click: ascending
    assert out[2] == ["2", "10", "1"]     # by label text: grass, red, sky
    assert out[3] == ["1", "2", "10"]     # unit numbers numerically (not "1", "10", "2")


def test_ace_page_ranks_units_and_joins_the_site(tmp_path):
    from types import SimpleNamespace

    from dissect_kernels.report.ace_page import ACE_FILE, write_ace_page
    lr = make_layer("layer3", 6, seed=5)
    lr.concept_names[2] = HOSTILE
    write_report(tmp_path, dk.DissectionResult([lr], convention="exact"))
    ace = torch.tensor([0.1, -0.2, 0.7, 0.0, 0.3, -0.05], dtype=torch.float64)
    ranking = SimpleNamespace(ace=ace, order=ace.argsort(descending=True), ablated=torch.full((6,), 0.1),
                              inserted=0.1 + ace, original=0.12, mode="insert_minus_ablate", num_samples=8)
    path = write_ace_page(tmp_path, lr, ranking, HOSTILE, top=3)
    assert path == tmp_path / ACE_FILE
    page = parse(path)
    links_resolve(tmp_path, page)
    (table,) = [t for t in page.tables if "sortable" in t["class"]]
    assert [float(row["cells"][5]) for row in table["rows"]] == sorted(ace.tolist(), reverse=True)
    text = path.read_text()
    assert [f'id="ace-unit-{u}"' in text for u in range(6)] == [u in (2, 4, 0) for u in range(6)]
    assert "+0.700" in text and "\u22120.200" in text
    assert "<script>window" not in text and HOSTILE in "".join(page.text)
    assert f'href="{ACE_FILE}"' in (tmp_path / "index.html").read_text()


def test_strips_are_named_as_the_report_numbers_units(tmp_path):
    """A 1-based preset (NetDissect's) names unit index 0's strip unit_0001.jpg, as its pages
    and units.csv number it."""
    from planted import Planted, PlantedDataset
    rel = save_strip(tmp_path, "l", 3, random_images(2, 8), np.ones((2, 4, 4), bool), unit_base=1)
    assert rel == strip_path("l", 3, 1) and rel.endswith("/unit_0004.jpg")
    out = tmp_path / "run"
    result = dk.dissect(Planted(), "units", PlantedDataset(16), out_dir=out, convention="netdissect-lite",
                        batch_size=8, progress=False, backend="cpu")
    lr = result.layers["units"]
    assert result.unit_base == 1 and lr.exemplar_strips
    for u, path in lr.exemplar_strips.items():
        assert path.endswith(f"/unit_{u + 1:04d}.jpg") and (out / path).is_file()
