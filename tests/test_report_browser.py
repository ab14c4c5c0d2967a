"""Every page of small default runs (dissect with the rotation test, gan, ablate) opened in
headless Chromium as a reader would: no console error, no request leaving file://, every image
loads, no horizontal scroll at 1,280 px (nor at 800 px), strips at >= 112 px per image that
enlarge on click, unit tables that open sorted by IoU and re-sort on click, and a concept name
holding <script> (from the dataset's label.csv) shown as text. Skips, saying what to install,
without chromium, chromedriver or selenium."""
import csv
import json

import pytest
import torch

from dissect_kernels.report.browser import missing_reason

REASON = missing_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"browser tests: {REASON}")
HOSTILE = "red <script>window.pwned = 1</script><b>bold</b>"


def hostile_dataset(root):
    """A synthetic Broden copy whose concept 'red' is renamed to HOSTILE in label.csv."""
    from dissect_kernels.data import make_synthetic_broden
    path = make_synthetic_broden(root, n_images=24, seed=1)
    rows = list(csv.reader((path / "label.csv").open(newline="")))
    for row in rows[1:]:
        row[1] = HOSTILE if row[1] == "red" else row[1]
    with (path / "label.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three default commands at small sizes: {name: output folder}."""
    from dissect_kernels.cli import main
    base = tmp_path_factory.mktemp("browser_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = hostile_dataset(base / "data")
        out = {"dissect": base / "dissect", "gan": base / "gan", "ablate": base / "ablate"}
        assert main(["dissect", "--dataset", f"broden:{data}", "--rotation", "1", "--batch-size", "32",
                     "--out", str(out["dissect"]), "--quiet"]) == 0
        assert main(["gan", "--num-samples", "16", "--ace-samples", "4", "--batch-size", "8",
                     "--out", str(out["gan"]), "--quiet"]) == 0
        assert main(["ablate", "--dataset", "synthetic:24", "--top-n", "1,5,64,128,256",
                     "--out", str(out["ablate"]), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def browser():
    from dissect_kernels.report.browser import headless_chromium
    with headless_chromium() as driver:
        yield driver


def pages(runs):
    return sorted(p for folder in runs.values() for p in folder.glob("*.html"))


def test_every_page_loads_offline_without_errors_or_overflow(runs, browser):
    from dissect_kernels.report.browser import (console_errors, open_page, outside_requests, page_facts,
                                                resize)
    problems, checked = [], []
    for path in pages(runs):
        open_page(browser, path, 1280)
        facts = page_facts(browser)
        name = f"{path.parent.name}/{path.name}"
        checked.append(name)
        if facts["scrollWidth"] > facts["clientWidth"]:
            problems.append(f"{name}: scrolls sideways at 1280 px ({facts['scrollWidth']} > {facts['clientWidth']})")
        if facts["overflowingTables"]:
            problems.append(f"{name}: tables scroll sideways at 1280 px: {facts['overflowingTables']}")
        if facts["brokenImages"] or not facts["images"]:
            problems.append(f"{name}: {facts['images']} images, broken: {facts['brokenImages']}")
        short = [h for h in facts["stripHeights"] if h < 112]
        if short:
            problems.append(f"{name}: exemplar strips shown below 112 px: {short[:5]}")
        resize(browser, 800)
        narrow = page_facts(browser)
        if narrow["scrollWidth"] > narrow["clientWidth"]:
            problems.append(f"{name}: scrolls sideways at 800 px ({narrow['scrollWidth']} > {narrow['clientWidth']})")
        problems += [f"{name}: console: {m}" for m in console_errors(browser)]
        problems += [f"{name}: requested {u}" for u in outside_requests(browser)]
    assert {"index.html", "ace.html", "ablation.html", "layer-conv4.html", "layer-layer3.html"} <= \
        {n.split("/")[1] for n in checked}
    assert not problems, "\n".join(problems)


def test_each_index_links_every_page_of_its_run_and_each_page_links_home(runs, browser):
    from dissect_kernels.report.browser import open_page
    for folder in runs.values():
        files = {p.name for p in folder.glob("*.html")} - {"index.html"}
        assert files
        open_page(browser, folder / "index.html")
        linked = set(browser.execute_script(
            "return [...document.querySelectorAll('main a')].map(a => a.getAttribute('href'))"))
        assert files <= linked, f"{folder.name}: index.html does not link {files - linked}"
        for name in files:
            open_page(browser, folder / name)
            assert browser.execute_script("return !!document.querySelector('header nav a[href=\"index.html\"]')")
    site = json.loads((runs["dissect"] / "site.json").read_text())
    rotated = [p["title"] for p in site["pages"] if p["section"] == "Rotation test"]
    assert rotated == ["conv3@rot1", "conv4@rot1"]


SORT_JS = """
const t = document.querySelector('table.sortable.grouped');
const col = [...t.tHead.rows[0].cells].findIndex(th => th.textContent.trim().startsWith(arguments[0]));
return [...t.tBodies].map(b => parseFloat(b.rows[0].cells[col].getAttribute('data-v')));
"""


def test_unit_tables_open_sorted_by_iou_and_resort_on_click(runs, browser):
    from selenium.webdriver.common.by import By

    from dissect_kernels.report.browser import open_page
    layer_pages = sorted(runs["dissect"].glob("layer-*.html")) + sorted(runs["gan"].glob("layer-*.html"))
    assert len(layer_pages) == 5
    for path in layer_pages:
        open_page(browser, path)
        ious = browser.execute_script(SORT_JS, "IoU")
        assert ious[0] == max(ious) and ious == sorted(ious, reverse=True), path.name
        heads = browser.find_elements(By.CSS_SELECTOR, "table.sortable.grouped thead th")
        next(h for h in heads if h.text.startswith("unit")).click()
        units = browser.execute_script(SORT_JS, "unit")
        assert units == sorted(units) and len(set(units)) == len(units) > 1
        next(h for h in heads if h.text.startswith("IoU")).click()
        assert browser.execute_script(SORT_JS, "IoU") == sorted(ious, reverse=True)


def test_strips_enlarge_on_click_and_close_on_escape(runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from dissect_kernels.report.browser import open_page
    for path in (runs["dissect"] / "layer-conv4.html", runs["gan"] / "ace.html"):
        open_page(browser, path)
        browser.find_elements(By.CSS_SELECTOR, "img.strip")[0].click()
        tiles = browser.execute_script(
            "return [...document.querySelectorAll('.lightbox .tile')].map(t => t.getBoundingClientRect().width)")
        assert tiles and min(tiles) >= 224, (path.name, tiles[:3])
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert browser.execute_script("return document.querySelector('.lightbox') === null")


def test_concept_names_from_user_files_show_as_text(runs, browser):
    from dissect_kernels.report.browser import open_page
    seen = 0
    for path in sorted(runs["dissect"].glob("*.html")):
        open_page(browser, path)
        labels = browser.execute_script("return [...document.querySelectorAll('td.label')].map(td => "
                                        "[td.textContent, td.querySelector('b, script') === null])")
        seen += sum(text == HOSTILE and plain for text, plain in labels)
        assert browser.execute_script("return window.pwned === undefined"), path.name
        assert browser.execute_script("return document.scripts.length") == 1, path.name
    assert seen >= 1, "no unit was labelled with the renamed concept: the check did not run"


def test_detector_filter_hides_the_other_units(runs, browser):
    from selenium.webdriver.common.by import By

    from dissect_kernels.report.browser import open_page
    open_page(browser, runs["dissect"] / "layer-conv4.html")
    shown = "return [...document.querySelectorAll('table.grouped tbody')].filter(b => b.offsetParent !== null).length"
    total = browser.execute_script(shown)
    browser.find_element(By.CSS_SELECTOR, "input.detectors-only").click()
    detectors = browser.execute_script(shown)
    assert 0 < detectors < total == 128
    assert detectors == browser.execute_script("return document.querySelectorAll('tbody.det').length")

