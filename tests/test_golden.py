"""The default dissect, gan and ablate runs (small sizes) give bit-identical result tensors and
identical unit tables to the outputs recorded before the pass engine replaced the per-driver
loops (tests/golden, written by tests/golden/make_golden.py)."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from make_golden import GOLDEN_RUNS, HERE, run  # noqa: E402


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaN where NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))
    return bool(torch.equal(a, b))


@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_default_run_matches_golden(tmp_path, name):
    out = run(name, tmp_path / name)
    for f in GOLDEN_RUNS[name][1]:
        golden, now = HERE / name / f, out / f
        if f.endswith(".safetensors"):
            want, got = load_file(str(golden)), load_file(str(now))
            assert got.keys() == want.keys()
            bad = [k for k in want if not _same(got[k], want[k])]
            assert not bad, f"{name}/{f}: tensors differ from the golden run: {bad[:8]}"
        else:
            assert now.read_text() == golden.read_text(), f"{name}/{f} differs from the golden run"
