#!/usr/bin/env bash
# Build the CPU module _C and the C library (libdissect_kernels.so, the C ABI) with
# AddressSanitizer + UndefinedBehaviorSanitizer into build/asan (the normal build is untouched),
# run the core's ctest programs (C ABI, exact-quantile state machine; leak checking on), and run
# the tests that exercise _C or the C library against that build.
#
#   scripts/sanitize_tests.sh            # from CI (.ci/run) after the main test run
#
# How: CMake configures csrc/cpu/*.cpp (whatever exists: the glob is CMake's) + python/bind_cpu*
# with -DDK_SANITIZE=address,undefined, writes _C*.so into build/asan/lib, and the tests load it
# through DK_NATIVE_DIR (dissect_kernels/_native.py). Python is not built with ASan, so the gcc
# runtimes are LD_PRELOADed; leak checking is off (CPython leaks by design at exit). The
# kernels and their bindings are instrumented; any report fails the run (exit 86 ASan, 87 UBSan).
# Tests: tests/test_<op>*.py for every csrc/cpu/<op>.cpp plus test files that load _C or the C
# library (dissect_kernels.clib / tests/capi_ctypes.py) themselves, minus their triton/cuda cases
# (-k), with -x.
# Checked 2026-11-22: an injected one-past-the-end write in csrc/cpu/tally.cpp's load_map gives
# "heap-buffer-overflow ... WRITE of size 4 ... tally.cpp:87" and exit 86; an injected signed
# int overflow gives "runtime error: signed integer overflow" and exit 87.
# Knobs: PYTHON (default python), DK_ASAN_BUILD_DIR, DK_BUILD_JOBS (default 1),
# DK_SANITIZE_TESTS (space-separated test files, replacing the automatic selection),
# DK_SANITIZE_PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUILD=${DK_ASAN_BUILD_DIR:-build/asan}
LIB="$PWD/$BUILD/lib"
start=$(date +%s)
for lib in libasan.so libubsan.so; do
  case "$(gcc -print-file-name=$lib)" in
    /*) ;;
    *) echo "sanitize_tests: gcc's $lib was not found (install gcc's sanitizer runtimes)" >&2; exit 2 ;;
  esac
done
if ! pybind11_dir=$("$PY" -m pybind11 --cmakedir 2>/dev/null); then
  echo "sanitize_tests: pybind11 is not installed for $PY (pip install -e '.[test]' brings it)" >&2
  exit 2
fi

# --- build -------------------------------------------------------------------------------
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
if [ -f "$BUILD/CMakeCache.txt" ] && [ ${#gen[@]} -gt 0 ] && ! grep -q Ninja "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S . -B "$BUILD" "${gen[@]}" -Wno-dev \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$san" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DDK_SANITIZE=address,undefined \
  -DDK_WITH_CUDA=OFF \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$LIB" \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$pybind11_dir" >/dev/null
cmake --build "$BUILD" --target _C dissect_kernels test_capi test_exact_quantile --parallel "${DK_BUILD_JOBS:-1}"
ls "$LIB"/_C*.so "$LIB"/libdissect_kernels.so >/dev/null
built=$(date +%s)

# --- the core's C/C++ tests (instrumented programs; leaks are reported here) ---------------
ASAN_OPTIONS="halt_on_error=1:exitcode=86" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87" \
  ctest --test-dir "$BUILD" --output-on-failure

# --- which tests exercise _C ---------------------------------------------------------------
# For every kernel csrc/cpu/<op>.cpp its tests/test_<op>*.py (the one-op-one-name layout), plus
# any test file that loads _C itself.
if [ -n "${DK_SANITIZE_TESTS:-}" ]; then
  read -r -a tests <<<"$DK_SANITIZE_TESTS"
else
  mapfile -t tests < <({ for src in csrc/cpu/*.cpp; do
      op=$(basename "$src" .cpp); ls tests/test_"$op"*.py 2>/dev/null || true; done
    grep -lE "native\([\"']_C[\"']\)|dissect_kernels\._C\b|import _C\b|capi_ctypes|dissect_kernels\.clib" tests/test_*.py || true
  } | sort -u)
fi
if [ ${#tests[@]} -eq 0 ]; then
  echo "sanitize_tests: no test exercises _C; nothing to run" >&2
  exit 0
fi
echo "sanitize_tests: ${tests[*]}"

# --- run under the sanitizers --------------------------------------------------------------
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export DK_NATIVE_DIR="$LIB"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:${UBSAN_OPTIONS:-}"
export TRITON_INTERPRET=${TRITON_INTERPRET:-1}  # as tests/conftest.py sets it without CUDA
# One process: check that the sanitized _C is the one loaded, then run pytest. Triton
# (interpreter) and CUDA cases do not touch _C: the main run covers them. --capture=sys keeps
# the sanitizer report (written to fd 2 just before the process exits) out of pytest's capture.
LD_PRELOAD="$preload" "$PY" - -x -q --capture=sys -p no:randomly -p no:cacheprovider -k "not triton and not cuda" \
  ${DK_SANITIZE_PYTEST_ARGS:-} "${tests[@]}" <<PYEOF
import sys
import pytest
from dissect_kernels import _native
m = _native.native("_C")
if m is None or not m.__file__.startswith("$LIB"):
    sys.exit(f"sanitize_tests: the sanitized _C was not loaded: {m}")
print("sanitize_tests: _C from", m.__file__, flush=True)
sys.exit(pytest.main(sys.argv[1:]))
PYEOF
echo "sanitize_tests: passed (build $((built - start)) s, tests $(($(date +%s) - built)) s)"
