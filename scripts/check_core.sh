#!/usr/bin/env bash
# The C/C++ core as a consumer gets it, with no Python involved: configure, build and install the
# core (-DDK_WITH_PYTHON=OFF) into a temporary prefix, run its ctest programs, then build the C
# example (examples/c, its own CMake project using find_package(dissect_kernels)) against the
# installed package and run it (exit 0 = its results equal its brute-force computation).
#
#   scripts/check_core.sh          # from CI (.ci/run); prints the time each step took
#
# Knobs: DK_CORE_CUDA=ON also builds the CUDA kernels into the library (compile check only
# without a GPU; default OFF: the Python build already compiles them), DK_BUILD_JOBS (default 2),
# DK_CORE_DIR (keep the build there instead of a temporary directory), DK_SANITIZE.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${DK_CORE_DIR:-$(mktemp -d)}
[ -n "${DK_CORE_DIR:-}" ] || trap 'rm -rf "$work"' EXIT
jobs=${DK_BUILD_JOBS:-2}
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
step() { local t=$(date +%s); "$@"; echo "check_core: $(basename "$1") ... done in $(($(date +%s) - t)) s" >&2; }

start=$(date +%s)
step cmake -S "$root" -B "$work/build" "${gen[@]}" -DDK_WITH_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release \
  -DDK_WITH_CUDA="${DK_CORE_CUDA:-OFF}" -DDK_SANITIZE="${DK_SANITIZE:-}" -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
if grep -qiE "^(Python|pybind11)[A-Za-z_]*:" "$work/build/CMakeCache.txt"; then
  echo "check_core: the core's configure looked for Python or pybind11" >&2
  exit 1
fi
step cmake --build "$work/build" --parallel "$jobs"
step ctest --test-dir "$work/build" --output-on-failure
step cmake --install "$work/build" >/dev/null
step cmake -S "$root/examples/c" -B "$work/example" "${gen[@]}" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
step cmake --build "$work/example"
"$work/example/dissect_example"
echo "check_core: passed in $(($(date +%s) - start)) s (installed: $(cd "$work/prefix" && find . -type f | sort | tr '\n' ' '))"
