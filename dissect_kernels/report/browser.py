"""Drive headless Chromium over report pages (selenium with Debian's chromium and chromedriver):
open a page at a window width, wait for every image, and measure what a reader would meet:
console errors, requests that leave file://, broken images, horizontal overflow, strip sizes.
Used by tests/test_report_browser.py and scripts/screenshots.py; only they need selenium."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# Flags that work on a closed network: without the background-networking ones Chromium keeps
# trying to reach Google's services.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--force-device-scale-factor=1")
NETWORK_SCHEMES = ("http", "https", "ws", "wss", "ftp")
INSTALL_HINT = "apt-get install -y chromium chromium-driver; pip install selenium"

FACTS_JS = """
const root = document.documentElement;
const wraps = [...document.querySelectorAll('.table-wrap')]
  .filter(w => w.scrollWidth > w.clientWidth + 1).map(w => w.scrollWidth + ' > ' + w.clientWidth);
const imgs = [...document.images];
const strips = [...document.querySelectorAll('img.strip')].map(i => i.getBoundingClientRect().height);
return {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, scrollHeight: root.scrollHeight,
        overflowingTables: wraps, images: imgs.length,
        brokenImages: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
        stripHeights: strips, title: document.title};
"""


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) from $DK_CHROMIUM / $DK_CHROMEDRIVER or the PATH, else None."""
    browser = os.environ.get("DK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("DK_CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing_reason() -> str | None:
    """Why pages cannot be checked in a browser here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed ({INSTALL_HINT})"
    if chromium_paths() is None:
        return f"chromium and chromedriver are not on the PATH ({INSTALL_HINT})"
    return None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900):
    """A headless Chromium (fresh profile, logs of the console and the network kept)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(missing_reason())
    profile = tempfile.mkdtemp(prefix="dk-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path, width: int = 1280, height: int = 900, timeout: float = 15.0) -> None:
    """Load a page at a window size and wait until every image (lazy ones too) has loaded."""
    driver.set_window_size(width, height)
    driver.get(Path(path).resolve().as_uri())
    driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    deadline = time.monotonic() + timeout
    while not driver.execute_script("return [...document.images].every(i => i.complete)"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def resize(driver, width: int, height: int = 900) -> None:
    """Change the window size and let the page lay itself out again."""
    driver.set_window_size(width, height)
    driver.execute_script("return document.body.getBoundingClientRect().width")


def page_facts(driver) -> dict:
    """Widths, overflowing tables, images and broken ones, strip heights, title."""
    return driver.execute_script(FACTS_JS)


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def outside_requests(driver) -> list[str]:
    """Network URLs (http, https, ws, wss, ftp) requested since the last call: any is a defect,
    as reports must work offline (the browser's own chrome:// pages do not count)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if url.split(":", 1)[0].lower() in NETWORK_SCHEMES:
                urls.append(url)
    return urls


def screenshot(driver, path: Path, width: int = 1280, max_height: int = 1800, colors: int = 256,
               scroll_to: str | None = None) -> Path:
    """The top of the page, or the part from the element `scroll_to` (a CSS selector) down, up
    to max_height px, at `width`, saved as a palette PNG (small files)."""
    from PIL import Image

    top = driver.execute_script("const e = arguments[0] && document.querySelector(arguments[0]);"
                                "return e ? e.getBoundingClientRect().top + window.scrollY - 60 : 0;", scroll_to)
    height = min(int(driver.execute_script("return document.documentElement.scrollHeight")) - int(top),
                 max_height)
    chrome = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
    resize(driver, width, height + chrome)
    driver.execute_script("window.scrollTo(0, arguments[0])", top)
    tmp = Path(path).with_suffix(".full.png")
    driver.save_screenshot(str(tmp))
    with Image.open(tmp) as im:
        im.convert("RGB").quantize(colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) \
            .save(path, format="PNG", optimize=True)
    tmp.unlink()
    return Path(path)
