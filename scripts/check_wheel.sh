#!/usr/bin/env bash
# Build the sdist and the wheel with `python -m build` (the wheel is built from the sdist, which
# proves the sdist complete), install the wheel into a fresh venv and run scripts/wheel_smoke.py
# there, outside the source tree: metadata, _C and the C library load, a tiny dissection finds
# its planted unit. Takes ~2-3 minutes on 2 cores (a full native build), so CI does not run it;
# tests/test_wheel.py (marked slow: pytest -m slow) runs it.
#
#   scripts/check_wheel.sh
#
# The package comes only from the built wheel (pip --no-index --find-links <dist>); torch 2.13.0
# and the wheel's other requirements come from this machine's pip configuration (local files
# here, so it works offline). The build uses this environment's setuptools and pybind11
# (--no-isolation), as on the offline GPU machine.
# Knobs: PYTHON (default python), DK_WHEEL_DIR (keep the work there), DK_NO_CUDA=1 (CPU-only
# wheel, faster), DK_CUDA_ARCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python}
work=${DK_WHEEL_DIR:-$(mktemp -d)}
[ -n "${DK_WHEEL_DIR:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
start=$(date +%s)

"$PY" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)
built=$(date +%s)
echo "check_wheel: built $(basename "$sdist") and $(basename "$wheel") in $((built - start)) s"
"$PY" -m zipfile -l "$wheel" >"$work/wheel.txt"
tar tzf "$sdist" >"$work/sdist.txt"
for member in dissect_kernels/_C dissect_kernels/libdissect_kernels.so dissect_kernels/py.typed \
              dissect_kernels/_version.py LICENSE; do
  grep -q "$member" "$work/wheel.txt" || { echo "check_wheel: $member missing from the wheel" >&2; exit 1; }
done
for member in CMakeLists.txt csrc/capi/capi_core.cpp csrc/include/dissect_kernels/dissect_kernels.h \
              tests/cpp/CMakeLists.txt examples/c/dissect_example.c LICENSE CHANGELOG.md; do
  grep -q "$member" "$work/sdist.txt" || { echo "check_wheel: $member missing from the sdist" >&2; exit 1; }
done

"$PY" -m venv "$work/venv"
deps=$("$PY" - "$wheel" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
print(" ".join(f"'{r}'" for r in reqs if "extra ==" not in r))
PYEOF
)
pip_quiet() { "$work/venv/bin/pip" install -q "$@" >"$work/pip.log" 2>&1 || { tail -30 "$work/pip.log"; exit 1; }; }
eval "pip_quiet torch==2.13.0 $deps"
pip_quiet --no-index --find-links "$work/dist" dissect-kernels
(cd "$work" && "$work/venv/bin/python" "$root/scripts/wheel_smoke.py")
echo "check_wheel: passed in $(($(date +%s) - start)) s"
