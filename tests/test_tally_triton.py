"""Triton tally (interpreter on CPU, compiled on a GPU) against the oracle: every output
bit-identical on random small shapes, dtypes, strides, geometries and label layouts."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dissect_kernels.geometry import Geometry
from _tally_cases import DTYPES, GEOMETRIES, assert_same, make_case, run
from dissect_kernels.reference.upsample import upsample

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _random_params(seed: int) -> dict:
    r = random.Random(1000 + seed)
    h, w = r.choice([(1, 1), (1, 3), (2, 2), (3, 4), (4, 3), (5, 5)])
    return dict(B=r.randint(1, 3), U=r.randint(1, 11), h=h, w=w, H=r.randint(1, 10),
                W=r.randint(1, 12), L=r.randint(1, 4), M=r.choice([0, 0, 1, 3]),
                C=r.choice([2, 3, 7, 13]), K=r.randint(1, 4), dtype=r.choice(DTYPES),
                geom=r.choice(GEOMETRIES), layout=r.choice(["contiguous", "channels-last", "strided"]))


@pytest.mark.parametrize("seed", range(16))
def test_triton_matches_reference_random(seed):
    params = _random_params(seed)
    per_layer, touched = bool(seed % 2), seed % 3 != 0
    case = make_case(seed, device=DEVICE, **params)
    want = run("reference", case, per_layer=per_layer, touched=touched)
    got = run("triton", case, per_layer=per_layer, touched=touched)
    assert_same(got, want, f"seed {seed} {params} per_layer={per_layer}")
    assert not torch.equal(want.intersection, case["init"]) or want.active.sum() == 0


@pytest.mark.parametrize("block_u,block_p", [(2, 16), (4, 32), (8, 16)])
def test_triton_ragged_blocks(block_u, block_p):
    """U and H*W not multiples of the block sizes; several unit and pixel blocks per image."""
    case = make_case(7, B=2, U=7, h=3, w=3, H=9, W=7, L=3, M=2, C=5, K=2, geom="half-pixel")
    for per_layer in (False, True):
        want = run("reference", case, per_layer=per_layer, touched=True)
        got = run("triton", case, per_layer=per_layer, touched=True, block_u=block_u, block_p=block_p)
        assert_same(got, want, f"blocks {block_u}x{block_p} per_layer={per_layer}")


@pytest.mark.parametrize("geom", ["zero-pad", "affine-zero", "half-pixel"])
def test_triton_negative_maps(geom):
    """All-negative maps: with zero padding the border values rise towards 0, so the
    dead-unit bound must use max(M, 0) there (a convex bound would skip active units)."""
    case = make_case(3, B=2, U=6, h=3, w=3, H=8, W=8, L=2, M=1, C=4, K=2, geom=geom, negative=True)
    case["acts"][:, :3] = -1.0  # constant maps: zero padding lifts only the border pixels
    case["thresholds"][:3] = -0.8
    want = run("reference", case, per_layer=False, touched=True)
    got = run("triton", case, per_layer=False, touched=True)
    assert_same(got, want, geom)
    if geom != "half-pixel":
        assert want.active[:, :3].sum() > 0  # the case really exercises the non-convex bound


def test_triton_subnormal_ties():
    """Subnormal activations: rounding is absolute there; ties must still match exactly."""
    case = make_case(5, B=2, U=6, h=2, w=3, H=7, W=5, L=2, M=0, C=4, K=2, scale=1e-39)
    want = run("reference", case, per_layer=False, touched=True)
    got = run("triton", case, per_layer=False, touched=True)
    assert_same(got, want, "subnormal")
    assert want.active.sum() > 0


def test_triton_many_layers_and_duplicates():
    """Many label layers with few concepts: any-layer dedup across layers and against
    image-level labels (which contain duplicates and zeros)."""
    case = make_case(11, B=2, U=4, h=2, w=2, H=5, W=6, L=9, M=4, C=3, K=2, geom="align-corners")
    case["image_labels"] = torch.tensor([[2, 0, 2, 1], [0, 0, 1, 1]], dtype=torch.int32, device=DEVICE)
    for per_layer in (False, True):
        want = run("reference", case, per_layer=per_layer, touched=True)
        got = run("triton", case, per_layer=per_layer, touched=True)
        assert_same(got, want, f"per_layer={per_layer}")


def test_triton_single_pixel_maps():
    """h = w = 1 sources (constant maps) and a 1x1 target."""
    for H, W in ((6, 5), (1, 1)):
        case = make_case(2, B=3, U=5, h=1, w=1, H=H, W=W, L=2, M=2, C=4, K=3, dtype=torch.float16)
        want = run("reference", case, per_layer=False, touched=True)
        got = run("triton", case, per_layer=False, touched=True)
        assert_same(got, want, f"1x1 -> {H}x{W}")


def test_triton_rounding_can_exceed_the_map_max():
    """Subnormal rounding is absolute: 0.5*(3 ulp) rounds up to 2 ulp, so halfway taps on a
    constant 3-ulp map give 4 ulp > max. The dead-unit bound must not skip such a unit."""
    tiny = torch.tensor(3 * 2.0 ** -149, dtype=torch.float32)
    case = make_case(4, B=1, U=2, h=2, w=2, H=3, W=2, L=1, M=0, C=3, K=1)
    ytab, xtab = Geometry.affine(0.0, 0.5, 0.0, 0.5).tables((2, 2), (3, 2))
    case.update(ytab=ytab.to(DEVICE), xtab=xtab.to(DEVICE))
    case["acts"] = tiny.expand(1, 2, 2, 2).to(DEVICE)  # stride-0 maps, too
    case["thresholds"] = tiny.repeat(2).to(DEVICE)
    want = run("reference", case, per_layer=False, touched=True)
    got = run("triton", case, per_layer=False, touched=True)
    assert_same(got, want, "subnormal rounding")
    assert want.active.sum() == 2 * 6


def test_triton_kernel_compiles_for_hopper_without_fma():
    """Compile (no GPU needed; a subprocess, with a fresh Triton) for sm_90 with the wrapper's
    launch options, in every arithmetic mode: the SASS must hold no fused multiply-add (the
    grid-sample chain's fma is built from float64 steps), or GPU counts could differ from the
    oracle's, and no register spills."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_triton_sass_check.py")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(counts) == 5   # three dtypes x label modes, then the grid-sample and pillow blends
    for variant, c in counts.items():
        assert c["FFMA"] == 0 and c["FMUL"] > 0 and c["FADD"] > 0 and c["atomics"] > 0, (variant, c)
        assert c["DFMA"] == 0, (variant, c)   # the float64 passes and fma32 round every step
        assert c["local_memory"] == 0, (variant, c)  # no register spills (STL/LDL)


def _peaked_case(seed: int, geom: str, H: int = 40, W: int = 36):
    """One bump per map (the rest below zero): most output tiles of a unit lie far from its
    peak and are skipped by the tile bound; thresholds are exact upsampled values near the
    peak (ties), so the tiles next to the skipped ones are decided at the threshold."""
    case = make_case(seed, B=2, U=5, h=7, w=6, H=H, W=W, L=2, M=1, C=5, K=2, geom=geom)
    g = torch.Generator().manual_seed(seed)
    B, U, h, w = case["acts"].shape
    acts = torch.full((B, U, h, w), -1.0)
    for b in range(B):
        for u in range(U):
            i, j = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
            acts[b, u, i, j] = 3.0 + float(torch.rand(1, generator=g))
    case["acts"] = acts.to(DEVICE)
    up = upsample(acts, case["ytab"].to("cpu"), case["xtab"].to("cpu"))
    flat = up.transpose(0, 1).reshape(U, -1)
    case["thresholds"] = flat.kthvalue(flat.shape[1] - 3, dim=1).values.contiguous().to(DEVICE)
    return case


@pytest.mark.parametrize("geom", ["half-pixel", "zero-pad", "align-corners"])
def test_triton_tile_skip_is_exact_and_skips(geom):
    """Tiles whose source rectangle cannot reach the threshold are skipped: counts still equal
    the oracle's bit for bit, and the kernel's own statistics show skipped and computed tiles."""
    case = _peaked_case(21, geom)
    want = run("reference", case, per_layer=False, touched=True)
    stats = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    got = run("triton", case, per_layer=False, touched=True, block_p=32, stats=stats)
    assert_same(got, want, geom)
    visited, skipped = int(stats[0]), int(stats[1])
    assert 0 < skipped < visited, stats.tolist()
    assert want.active.sum() > 0


def test_triton_tile_bound_ignores_rectangles_too_large_to_bound():
    """Downsampling: a tile's source rectangle exceeds 8 x 8, so no tile is skipped by it."""
    case = make_case(22, B=2, U=4, h=20, w=19, H=5, W=6, L=1, M=0, C=4, K=2, geom="half-pixel")
    stats = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    want = run("reference", case, per_layer=False, touched=False)
    got = run("triton", case, per_layer=False, touched=False, block_p=16, stats=stats)
    assert_same(got, want, "downsampling")
    assert int(stats[0]) > 0 and int(stats[1]) == 0, stats.tolist()


@pytest.mark.parametrize("max_groups,labels", [(8, "blobs"), (1, "noise"), (2, "noise")])
def test_triton_aggregated_atomics(max_groups, labels):
    """Counter updates are summed per (unit, concept) over a tile before the atomic add: with
    blobby labels far fewer atomics than label hits; with noisy labels and few groups the
    per-element rest path runs too. Counts equal the oracle's either way (touched too)."""
    case = make_case(23, B=2, U=6, h=4, w=4, H=16, W=16, L=2, M=1, C=9, K=3)
    if labels == "blobs":  # 4 x 4 blocks of one concept per layer
        g = torch.Generator().manual_seed(1)
        coarse = torch.randint(0, 9, (2, 2, 4, 4), generator=g, dtype=torch.int32)
        case["labels"] = coarse.repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous().to(DEVICE)
    case["thresholds"] = torch.full((6,), -10.0, device=DEVICE)  # every pixel active
    for per_layer, touched in ((False, False), (True, True)):
        want = run("reference", case, per_layer=per_layer, touched=touched)
        stats = torch.zeros(4, dtype=torch.int64, device=DEVICE)
        got = run("triton", case, per_layer=per_layer, touched=touched, block_p=64, stats=stats,
                  max_groups=max_groups)
        assert_same(got, want, f"{labels} max_groups={max_groups} per_layer={per_layer}")
        hits, atomics = int(stats[2]), int(stats[3])
        assert 0 < atomics < hits, stats.tolist()
        if labels == "blobs":
            assert atomics * 8 <= hits
