"""Build the native modules by driving CMake: dissect_kernels._C (CPU) and, when nvcc is
found, dissect_kernels._cuda. Both are declared as Extensions so editable installs keep them.
The same build puts the core's C library (libdissect_kernels.so, the C ABI) beside them, so the
wheel ships it for ctypes/cffi users (dissect_kernels.clib.library_path()).
Environment: DK_NO_CUDA=1 (CPU only), DK_CUDA_ARCHS="80;86;89;90" (CUDA targets),
DK_BUILD_TYPE (Release), DK_SANITIZE, DK_BUILD_JOBS."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
C_LIBRARY = "libdissect_kernels.so"   # the C ABI (CMake target dissect_kernels), shipped in the package


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str, optional: bool = False):
        super().__init__(name, sources=[], optional=optional)
        self.target = target


class CMakeBuild(build_ext):
    """Configure once into a fixed build directory (incremental rebuilds), build all targets."""

    _built = False

    def run(self):
        if shutil.which("cmake") is None:
            raise RuntimeError("cmake was not found on PATH; install it (e.g. `pip install cmake`).")
        super().run()

    def copy_extensions_to_source(self):
        """In-place / editable builds: the C library goes beside the modules, like them."""
        super().copy_extensions_to_source()
        built = Path(self.build_lib) / "dissect_kernels" / C_LIBRARY
        if built.exists():
            shutil.copy2(built, ROOT / "dissect_kernels" / C_LIBRARY)

    def build_extension(self, ext):
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        if not CMakeBuild._built:
            self._cmake_build(extdir)
            CMakeBuild._built = True
        built = list(extdir.glob(ext.name.split(".")[-1] + ".*"))
        if not built:
            msg = f"CMake did not produce {ext.name} (see the CMake output above)"
            if ext.optional:
                print(f"note: {msg}; building without it", file=sys.stderr)
                return
            raise RuntimeError(msg)

    def _cmake_build(self, extdir: Path):
        import pybind11

        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        build_dir = ROOT / "build" / f"cmake-{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda = os.environ.get("DK_NO_CUDA", "0") in ("", "0")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('DK_BUILD_TYPE', 'Release')}",
            f"-DDK_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DDK_SANITIZE={os.environ.get('DK_SANITIZE', '')}",
            "-DDK_BUILD_TESTS=OFF",          # ctest programs: a plain CMake build (README, .ci/run)
            "-DDK_VERSIONED_SONAME=OFF",     # one libdissect_kernels.so in the package, no symlinks
        ]
        # DK_CUDA_ARCHS (e.g. "80;90" or "89"): CUDA architectures, read by cmake/cuda_archs.cmake
        # from the environment on every configure; unset = 80;86;89;90 (+ PTX of the newest).
        if shutil.which("ninja"):
            args.append("-GNinja")
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and "-GNinja" in args and "Ninja" not in cache.read_text():
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = os.environ.get("DK_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[
        CMakeExtension("dissect_kernels._C", target="_C"),
        CMakeExtension("dissect_kernels._cuda", target="_cuda", optional=True),
    ],
    cmdclass={"build_ext": CMakeBuild},
)
