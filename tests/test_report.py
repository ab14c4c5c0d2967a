"""HTML report, exemplar strips and bar graphs: strips shade outside the mask and outline it,
report.html parses, lists every unit, links only files that exist, and carries its sort script."""
import base64
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
from dissect_kernels.report import grouped_bar, render_strip, save_strip, strip_path, write_report
from dissect_kernels.report.exemplars import contour

VOID = {"meta", "img", "input", "br", "hr", "link", "col", "source", "wbr"}
OPTIONAL_END = {"p", "li", "td", "th", "tr"}


class Page(HTMLParser):
    """Checks tag balance and collects what a browser would fetch."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.refs, self.tables, self.scripts = [], [], [], [], []
        self._script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if tag == "table":
            self.tables.append({"layer": a.get("data-layer"), "rows": [], "class": a.get("class")})
        if tag == "tr" and self.tables and "tbody" in self.stack:
            self.tables[-1]["rows"].append({"class": a.get("class"), "cells": []})
        if tag == "td" and self.tables and self.tables[-1]["rows"] and "tbody" in self.stack:
            self.tables[-1]["rows"][-1]["cells"].append(a.get("data-v"))
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
        if self._script:
            self.scripts.append(data)


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


def test_strip_rejects_bad_input():
    with pytest.raises(ValueError, match="images must be uint8"):
        render_strip(np.zeros((2, 8, 8, 3), np.float32) + 1, np.ones((2, 8, 8), bool))
    with pytest.raises(ValueError, match="same k"):
        render_strip(random_images(2, 8), np.ones((3, 8, 8), bool))


def test_save_strip_writes_a_jpeg_at_its_relative_path(tmp_path):
    rel = save_strip(tmp_path, "block/2", 3, torch.from_numpy(random_images(4, 16)),
                     torch.rand(4, 8, 8) > 0.5, size=20, gap=2)
    assert rel == strip_path("block/2", 3) and rel.startswith("images/block_2-")
    assert rel.endswith("/unit_0003.jpg")
    with Image.open(tmp_path / rel) as im:
        assert im.format == "JPEG" and im.size == (4 * 20 + 3 * 2, 20)
    assert strip_path("block_2", 3) != rel  # sanitised names never collide
    assert [p.name for p in (tmp_path / rel).parent.iterdir()] == ["unit_0003.jpg"]


# ------------------------------------------------------------------ plots

def test_grouped_bar_draws_every_bar():
    groups = [("object", [("sky", 3), ("grass", 1)]), ("color", [("red", 2)]), ("empty", [])]
    fig = grouped_bar(groups, ylabel="units")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [3, 1, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sky", "grass", "red"]
    assert len({p.get_facecolor() for p in ax.patches}) == 2  # coloured by group


def test_detector_bars_counts_detectors_by_category_and_concept():
    from dissect_kernels.report.plots import detector_bars
    lr = make_layer("l", 40, seed=11)
    ax = detector_bars(lr).axes[0]
    shown = dict(zip([t.get_text() for t in ax.get_xticklabels()], [p.get_height() for p in ax.patches]))
    labels = lr.best_label[lr.detector].tolist()
    assert shown == {lr.concept_names[c]: labels.count(c) for c in set(labels)}
    assert len(detector_bars(lr, max_bars=2).axes[0].patches) == 2


# ------------------------------------------------------------------ report

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


def test_report_lists_every_unit_and_links_only_existing_files(tmp_path):
    r = build_run(tmp_path)
    path = write_report(tmp_path, r)
    assert path == tmp_path / "report.html"
    page = parse(path)
    text = path.read_text(encoding="utf-8")
    for ref in page.refs:
        assert not re.match(r"^(https?:)?//", ref), ref
        if ref.startswith(("data:", "#")):
            continue
        assert (tmp_path / unquote(ref)).is_file(), ref
    strips = [ref for ref in page.refs if ref.startswith("images/")]
    assert len(strips) == 4 and "never_rendered" not in text
    units = [t for t in page.tables if t["class"] == "units sortable"]
    assert [t["layer"] for t in units] == list(r.layers)
    for t, lr in zip(units, r.layers.values()):
        assert [int(row["cells"][0]) for row in t["rows"]] == list(range(1, lr.num_units + 1))
        assert [row["class"] == "det" for row in t["rows"]] == lr.detector.tolist()
        ious = [float(row["cells"][3]) for row in t["rows"]]
        assert ious == lr.best_iou.tolist()
        n, d, z = lr.num_units, lr.num_detectors, len(set(lr.best_label[lr.detector].tolist()))
        assert f"<b>{d}/{n}</b> units are detectors covering <b>{z}</b> unique concepts" in text
    script = "".join(page.scripts)
    assert "table.sortable" in script and "addEventListener('click'" in script
    assert 'id="detectors-only"' in text and "body.detectors-only tr.nondet" in text
    assert "unreadable image" in text and "tiny-cnn" in text


def test_report_bar_graph_is_inline_svg(tmp_path):
    r = build_run(tmp_path)
    page = parse(write_report(tmp_path, r))
    graphs = [ref for ref in page.refs if ref.startswith("data:image/svg+xml;base64,")]
    assert len(graphs) == len(r.layers)
    svg = base64.b64decode(graphs[0].split(",", 1)[1]).decode()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    lr = r.layers["features.3"]
    for c in set(lr.best_label[lr.detector].tolist()):
        assert lr.concept_names[c] in svg


def test_report_without_detectors_has_no_graph(tmp_path):
    lr = make_layer("quiet", 4, seed=9, high=0.01)
    assert lr.num_detectors == 0
    e = dk.LayerResult("empty", lr.iou[:0], lr.thresholds[:0], lr.best_label[:0], lr.best_iou[:0],
                       lr.best_category[:0], lr.detector[:0], lr.concept_names, lr.category_names,
                       lr.category_of)
    page = parse(write_report(tmp_path, dk.DissectionResult([lr, e], convention="exact")))
    assert not [ref for ref in page.refs if ref.startswith("data:")]
    text = (tmp_path / "report.html").read_text()
    assert "<b>0/4</b> units are detectors covering <b>0</b>" in text
    assert "<b>0/0</b> units are detectors" in text
    assert [len(t["rows"]) for t in page.tables if t["layer"]] == [4, 0]
    quiet = next(t for t in page.tables if t["layer"] == "quiet")
    assert [int(row["cells"][0]) for row in quiet["rows"]] == [0, 1, 2, 3]  # exact: 0-based


def test_report_from_loaded_results_is_identical(tmp_path):
    r = build_run(tmp_path)
    a = write_report(tmp_path, r).read_text()
    b = write_report(tmp_path, dk.load_results(tmp_path)).read_text()
    assert a == b


def test_report_unwritable_out_dir_is_named(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to output directory") as e:
        write_report(blocker / "out", make_result())
    assert str(blocker / "out") in str(e.value)


JS_HARNESS = r"""
// a minimal DOM: one table with a header row and body rows; runs report.js and clicks
function cell(v, text) { return { getAttribute: k => (k === 'data-v' ? v : null), textContent: text }; }
function handlers() { const h = {}; return { h, addEventListener: (e, f) => { h[e] = f; } }; }
const rows = DATA.map(r => ({ cells: r.map(x => cell(x[0], x[1])) }));
const body = { rows: rows.slice(), appendChild(r) { this.rows.splice(this.rows.indexOf(r), 1); this.rows.push(r); } };
const heads = HEADS.map(() => Object.assign(handlers(), { attrs: {},
  getAttribute(k) { return this.attrs[k] === undefined ? null : this.attrs[k]; },
  setAttribute(k, v) { this.attrs[k] = v; }, removeAttribute(k) { delete this.attrs[k]; } }));
const table = { tHead: { rows: [{ cells: heads }] }, tBodies: [body] };
const box = Object.assign(handlers(), { checked: true });
const classes = new Set();
global.document = { querySelectorAll: () => [table], getElementById: () => box,
  body: { classList: { toggle: (c, on) => (on ? classes.add(c) : classes.delete(c)) } } };
SCRIPT
const out = [];
for (const col of CLICKS) { heads[col].h.click(); out.push(body.rows.map(r => r.cells[0].textContent)); }
box.h.change();
out.push([...classes]);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_sort_script_sorts_numbers_numerically_and_toggles_filter():
    import json

    from dissect_kernels.report.html import asset
    data = [[["1", "1"], [None, "sky"], ["0.5", "0.5"]],
            [["2", "2"], [None, "grass"], ["0.05", "0.05"]],
            [["10", "10"], [None, "red"], ["0.2", "0.2"]]]
    src = (JS_HARNESS.replace("DATA", json.dumps(data)).replace("HEADS", "[0,1,2]")
           .replace("CLICKS", "[2, 2, 1, 0]").replace("SCRIPT", asset("report.js")))
    res = subprocess.run(["node", "-e", src], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out[0] == ["2", "10", "1"]     # IoU ascending, numerically
    assert out[1] == ["1", "10", "2"]     # second click: descending
    assert out[2] == ["2", "10", "1"]     # by label text: grass, red, sky
    assert out[3] == ["1", "2", "10"]     # unit numbers numerically (not "1", "10", "2")
    assert out[4] == ["detectors-only"]
