"""segment_stats: per-sample class pixel counts (class 0 included) equal the loop oracle."""
import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.ops.segment_stats import segment_stats_into
from conftest import poison_like


def random_segmentation(seed, shape=(4, 7, 5), classes=6, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, shape, generator=g).to(dtype)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_single_layer_matches_reference(seed, dtype):
    seg = random_segmentation(seed, dtype=dtype)
    got = dk.segment_stats(seg, 6)
    assert torch.equal(got, dk.segment_stats(seg, 6, backend="reference"))
    assert got.dtype == torch.int64
    assert bool((got.sum(1) == 35).all())        # every pixel counted once, class 0 included
    assert int(got[:, 0].sum()) == int((seg == 0).sum()) > 0


@pytest.mark.parametrize("seed", range(3))
def test_multi_layer_any_semantics(seed):
    seg = random_segmentation(seed, shape=(3, 3, 4, 5), classes=7)
    seg[:, 1] = torch.where(seg[:, 2] > 3, seg[:, 0], seg[:, 1])      # repeats across layers
    got = dk.segment_stats(seg, 7)
    assert torch.equal(got, dk.segment_stats(seg, 7, backend="reference"))
    per_entry = torch.stack([torch.bincount(s.reshape(-1), minlength=7) for s in seg])
    assert bool((got <= per_entry).all()) and bool((got < per_entry).any())
    assert bool((got <= 20).all())


def test_output_is_overwritten():
    seg = random_segmentation(5, shape=(2, 2, 3, 3))
    out = poison_like(torch.empty(2, 6, dtype=torch.int64))
    segment_stats_into("torch", seg, 6, out)
    assert torch.equal(out, dk.segment_stats(seg, 6, backend="reference"))


def test_bad_inputs():
    seg = random_segmentation(0)
    with pytest.raises(ValueError, match=r"segmentation holds ids in \[0, 5\].*num_classes=5"):
        dk.segment_stats(seg, 5)
    with pytest.raises(TypeError, match="segmentation must have dtype"):
        dk.segment_stats(seg.float(), 6)
    with pytest.raises(ValueError, match="segmentation must have 3 or 4 dimensions"):
        dk.segment_stats(seg[0], 6)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        dk.segment_stats(seg, 0)


@pytest.mark.gpu
def test_cuda_matches_reference():
    seg = random_segmentation(9, shape=(3, 2, 6, 5))
    got = dk.segment_stats(seg.cuda(), 6)
    assert got.is_cuda and torch.equal(got.cpu(), dk.segment_stats(seg, 6, backend="reference"))
