"""One version, written once (dissect_kernels/_version.py), and everything that reports one agrees:
pyproject.toml reads it, CMakeLists.txt reads it, the built _C and C library report it, the
installed metadata carries it."""
import ctypes
import importlib.metadata
import re
import tomllib
from pathlib import Path

import dissect_kernels as dk
from dissect_kernels import _native, clib

ROOT = Path(__file__).resolve().parent.parent


def written_version() -> str:
    text = (ROOT / "dissect_kernels" / "_version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def test_sources_read_the_one_version():
    v = written_version()
    assert dk.__version__ == v
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dissect_kernels._version.__version__"}
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert 'dissect_kernels/_version.py" _dk_version_line' in cmake
    assert "project(dissect_kernels VERSION ${DK_VERSION_NUMBER}" in cmake
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", v)
    assert f"## {v}" in (ROOT / "CHANGELOG.md").read_text()


def test_built_artifacts_report_it():
    v = written_version()
    assert _native.native("_C").version == v
    lib = clib.load()
    lib.dk_version.restype = ctypes.c_char_p
    assert lib.dk_version().decode() == v
    assert importlib.metadata.version("dissect-kernels") == v
