"""The CUDA sources build for every default architecture (CMakeLists.txt's DK_CUDA_ARCHS_DEFAULT)
with no register spills (ptxas -v on each kernel), and targets below sm_80 are refused with a
message naming the minimum, by nvcc and by CMake. Compile-only: runs wherever nvcc is, no GPU."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# the flags CMakeLists.txt gives dk_core_cuda (Release)
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--fmad=false", "--expt-relaxed-constexpr", "-I", str(ROOT / "csrc" / "include")]


def default_archs() -> list[int]:
    text = (ROOT / "CMakeLists.txt").read_text()
    found = re.search(r'set\(DK_CUDA_ARCHS_DEFAULT "([0-9;]+)"\)', text)
    assert found, "CMakeLists.txt no longer sets DK_CUDA_ARCHS_DEFAULT"
    return [int(a) for a in found.group(1).split(";")]


def test_defaults_cover_ampere_to_hopper():
    assert default_archs() == [80, 86, 89, 90]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_register_spills_on_any_default_arch(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in default_archs()]
    run = subprocess.run([NVCC, *FLAGS, *gencode, "--threads", "2", "-Xptxas", "-v", "-c", str(source),
                          "-o", str(tmp_path / "out.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = run.stdout + run.stderr
    kernels = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(spills) == len(kernels), report[-3000:]
    bad = [f"{k} on {arch}: {s} B stores, {l} B loads" for (k, arch), (s, l) in zip(kernels, spills)
           if (s, l) != ("0", "0")]
    assert not bad, "register spills:\n" + "\n".join(bad)
    if kernels:   # every default arch compiled
        assert {arch for _, arch in kernels} == {f"sm_{a}" for a in default_archs()}


def test_nvcc_refuses_archs_below_sm80(tmp_path):
    tally = ROOT / "csrc" / "cuda" / "tally.cu"
    run = subprocess.run([NVCC, *FLAGS, "-gencode=arch=compute_75,code=sm_75", "-c", str(tally),
                          "-o", str(tmp_path / "out.o")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "compute capability 8.0 (sm_80) or newer" in run.stdout + run.stderr


def test_cmake_refuses_archs_below_sm80(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    env = dict(os.environ, DK_CUDA_ARCHS="75;86")
    run = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path), "-DDK_WITH_PYTHON=OFF", "-DDK_BUILD_TESTS=OFF"],
                         capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert "below the minimum, sm_80" in run.stdout + run.stderr
