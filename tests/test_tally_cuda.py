"""CUDA tally: the module imports and fails clearly without a GPU; on a GPU the cuda and triton
backends match the oracle bit for bit (random shapes, dtypes, strides, a Broden-size batch)."""
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import dissect_kernels as dk
from dissect_kernels import _native
from dissect_kernels.ops.tally import TallyResult, _native_spec
from _tally_cases import DTYPES, GEOMETRIES, assert_same, make_case, run

needs_module = pytest.mark.skipif(_native.native("_cuda") is None,
                                  reason="dissect_kernels._cuda was not built (no nvcc)")


@needs_module
def test_cuda_module_imports_and_counts_devices():
    module = _native.native("_cuda")
    assert module.device_count() == torch.cuda.device_count()


@needs_module
def test_cuda_tally_on_host_memory_raises_clearly():
    """Host pointers: "no usable CUDA device" on a CPU-only machine, "device memory" on a GPU
    machine; never a crash."""
    case = make_case(0, device="cpu")
    B, U = case["acts"].shape[:2]
    out = TallyResult.empty(B, U, case["num_concepts"], None, "cpu")
    spec = _native_spec(case["acts"], case["thresholds"], case["labels"], case["image_labels"],
                        case["ytab"], case["xtab"], case["num_concepts"], False, None, None, out)
    expected = "device memory" if torch.cuda.is_available() else "no usable CUDA device"
    with pytest.raises(RuntimeError, match=expected):
        _native.native("_cuda").tally(spec, 0)


def _cuobjdump() -> str | None:
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


GRID_SAMPLE = "ArithE1E"     # mangled Arith::GridSample template argument: its corner chain fuses on purpose


def _by_function(listing: str, header: str) -> dict[str, str]:
    """{mangled kernel name: its code} from a cuobjdump listing split at `header`."""
    parts = re.split(header, listing)[1:]
    return {p.split("(")[0].split()[0]: p for p in parts}


@needs_module
def test_cuda_module_has_sm90_code_without_fma():
    """The built module holds sm_90 SASS and PTX, with no fused multiply-add (--fmad=false)
    except the grid-sample corner chain, which fuses explicitly (fmaf) as torch's CPU
    grid_sample does: otherwise GPU counts could differ from the oracle's."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump to inspect the module")
    path = _native.native("_cuda").__file__
    sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "-ptx", path], capture_output=True, text=True, check=True).stdout
    assert "sm_90" in sass and "tally_kernel" in sass
    assert len(re.findall(r"\bFMUL\b", sass)) > 0
    for listing, header, fused in ((sass, r"Function : ", r"\bFFMA\b"), (ptx, r"\.entry ", r"\bfma\.rn\.f32")):
        kernels = _by_function(listing, header)
        plain = {k: code for k, code in kernels.items() if GRID_SAMPLE not in k}
        chains = {k: code for k, code in kernels.items() if GRID_SAMPLE in k}
        assert plain and chains
        assert not [k for k, code in plain.items() if re.search(fused, code)]
        assert all(re.search(fused, code) for k, code in chains.items() if "tally_kernel" in k)
    assert "mul.rn.f32" in ptx


def _params(seed: int) -> dict:
    r = random.Random(2000 + seed)
    h, w = r.choice([(1, 1), (3, 4), (7, 7), (14, 14), (28, 28), (112, 112)])
    H, W = r.choice([(1, 1), (9, 13), (56, 56), (112, 112), (33, 121)])
    return dict(B=r.randint(1, 4), U=r.choice([1, 5, 31, 33, 70]), h=h, w=w, H=H, W=W,
                L=r.choice([1, 3, 6, 10]), M=r.choice([0, 2, 5]), C=r.choice([3, 17, 300]),
                K=r.randint(1, 6), dtype=r.choice(DTYPES), geom=r.choice(GEOMETRIES),
                layout=r.choice(["contiguous", "channels-last", "strided"]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("seed", range(12))
def test_gpu_backends_match_reference(backend, seed):
    params = _params(seed)
    case = make_case(seed, device="cuda", **params)
    for per_layer in (False, True):
        touched = (seed + per_layer) % 2 == 0
        want = run("reference", case, per_layer=per_layer, touched=touched)
        got = run(backend, case, per_layer=per_layer, touched=touched)
        torch.cuda.synchronize()
        assert_same(got, want, f"{backend} seed {seed} {params} per_layer={per_layer}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_special_cases(backend):
    """Negative maps with zero padding (non-convex bound), subnormal rounding above the map
    max, many label layers (CUDA keeps 8 in registers), stride-0 maps."""
    neg = make_case(3, B=2, U=40, h=3, w=3, H=8, W=8, L=2, M=1, C=4, K=2, geom="affine-zero",
                    negative=True, device="cuda")
    neg["acts"][:, :20] = -1.0
    neg["thresholds"][:20] = -0.8
    many = make_case(11, B=2, U=35, h=7, w=7, H=20, W=24, L=11, M=4, C=3, K=2, device="cuda")
    tiny = torch.tensor(3 * 2.0 ** -149, dtype=torch.float32, device="cuda")
    sub = make_case(4, B=1, U=2, h=2, w=2, H=3, W=2, L=1, M=0, C=3, K=1, device="cuda")
    ytab, xtab = dk.Geometry.affine(0.0, 0.5, 0.0, 0.5).tables((2, 2), (3, 2))
    sub.update(ytab=ytab.to("cuda"), xtab=xtab.to("cuda"), acts=tiny.expand(1, 2, 2, 2),
               thresholds=tiny.repeat(2))
    for name, case in (("negative", neg), ("many-layers", many), ("subnormal", sub)):
        for per_layer in (False, True):
            want = run("reference", case, per_layer=per_layer, touched=True)
            got = run(backend, case, per_layer=per_layer, touched=True)
            assert_same(got, want, f"{backend} {name} per_layer={per_layer}")
    assert run("reference", sub, per_layer=False, touched=False).active.sum() == 12


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_broden_size_batch(backend, dtype):
    """ResNet-18 layer4 at Broden size: B=8, U=512, 7x7 -> 112x112, L=6, C=1197."""
    case = make_case(9, B=8, U=512, h=7, w=7, H=112, W=112, L=6, M=3, C=1197, K=6,
                     dtype=dtype, layout="channels-last", device="cuda")
    want = run("reference", case, per_layer=False, touched=True)
    got = run(backend, case, per_layer=False, touched=True)
    assert_same(got, want, f"{backend} broden batch")
    assert want.active.sum() > 0


@pytest.mark.gpu
def test_auto_picks_cuda_on_cuda_tensors(monkeypatch):
    case = make_case(1, device="cuda")
    picked = []
    import dissect_kernels.ops.tally as ops_tally
    real = ops_tally.tally_into
    monkeypatch.setattr(ops_tally, "tally_into", lambda name, *a: (picked.append(name), real(name, *a)))
    res = dk.tally(case["acts"], case["thresholds"], case["labels"], num_concepts=case["num_concepts"],
                   image_labels=case["image_labels"], backend="auto")
    assert picked == ["cuda"]
    ref = dk.tally(case["acts"], case["thresholds"], case["labels"], num_concepts=case["num_concepts"],
                   image_labels=case["image_labels"], backend="reference")
    assert_same(res, ref, "auto")
