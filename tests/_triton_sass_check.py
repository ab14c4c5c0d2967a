"""Compile the Triton tally kernel for sm_90 (no GPU needed) with the wrapper's launch options
and print, per variant (dtype, label mode, arithmetic mode), counts of FFMA/FMUL/FADD and
atomics in the SASS as one JSON line.
Run without TRITON_INTERPRET (tests/test_tally_triton.py does)."""
import json
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dissect_kernels.triton import tally as tt

PTRS = dict(thr="*fp32", lab="*i32", img="*i32", yi0="*i32", yi1="*i32", yw0="*fp32", yw1="*fp32",
            yd0="*fp64", yd1="*fp64", xi0="*i32", xi1="*i32", xw0="*fp32", xw1="*fp32", xd0="*fp64",
            xd1="*fp64", cat="*i32", inter="*i64",
            active="*i64", amax="*fp32", touched="*u8", stats="*i64")


def sass_counts(dtype: str, per_layer: bool, touched: bool, arith: int = 0) -> dict:
    th, tw = tt.tile_shape(112, 112, 128)
    consts = dict(w=7, hw=49, H=112, W=112, HW=112 * 112, L=6, M=2, PER_LAYER=per_layer,
                  HAS_TOUCHED=touched, COUNT_STATS=False, BLOCK_U=16, TILE_H=th, TILE_W=tw,
                  BLOCK_S=64, RECT=8, MAX_GROUPS=8, ARITH=arith)
    ptrs = dict(PTRS, acts=f"*{dtype}")
    sig = {n: ptrs.get(n, "constexpr" if n in consts else ("i64" if n[0] == "s" else "i32"))
           for n in tt._tally_kernel.arg_names}
    compiled = triton.compile(ASTSource(tt._tally_kernel, sig, consts),
                              target=GPUTarget("cuda", 90, 32), options=tt.LAUNCH_OPTIONS)
    sass = compiled.asm["sass"]
    count = lambda pat: len(re.findall(pat, sass))  # noqa: E731
    return dict(FFMA=count(r"\bFFMA\b"), DFMA=count(r"\bDFMA\b"), FMUL=count(r"\bFMUL\b"), FADD=count(r"\bFADD\b"),
                atomics=count(r"\b(ATOMG?|RED|REDG)\.[A-Z.0-9]*ADD"),
                local_memory=count(r"\b(STL|LDL)\b"))


if __name__ == "__main__":
    variants = {"fp32/any-layer/touched": ("fp32", False, True), "fp16/per-layer": ("fp16", True, False),
                "bf16/any-layer": ("bf16", False, False),
                "fp32/grid-sample": ("fp32", False, False, 1), "fp32/pillow/per-layer": ("fp32", True, True, 2)}
    print(json.dumps({name: sass_counts(*v) for name, v in variants.items()}))
