"""label_stats: the torch backend equals the loop oracle on random labels; errors are clear."""
import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.ops.label_stats import LabelStats, label_stats_into
from conftest import poison_like


def random_labels(seed, B=3, L=3, H=5, W=6, C=9, M=2, dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (B, L, H, W), generator=g)
    labels[:, 1:][torch.rand(B, L - 1, H, W, generator=g) < 0.4] = 0       # sparse upper layers
    dup = torch.rand(B, H, W, generator=g) < 0.3                            # same id in two layers
    labels[:, 1][dup] = labels[:, 0][dup]
    image = torch.randint(0, C, (B, M), generator=g)
    image[0, 0] = image[0, -1] = 3                                         # a repeated image label
    category_of = torch.randint(0, 3, (C,), generator=g)
    return labels.to(dtype), image.to(dtype), category_of


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("with_image", [False, True])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.int16])
def test_torch_matches_reference(seed, per_layer, with_image, dtype):
    labels, image, cat = random_labels(seed, B=2 + seed, L=2 + seed, H=5 + seed, W=6 - seed,
                                       dtype=dtype)
    image = image if with_image else None
    kw = dict(num_concepts=9, category_of=cat, num_categories=4, per_layer=per_layer)
    got = dk.label_stats(labels, image, backend="torch", **kw)
    want = dk.label_stats(labels, image, backend="reference", **kw)
    assert torch.equal(got.pixels, want.pixels)
    assert torch.equal(got.present, want.present)
    assert got.image_pixels == want.image_pixels == labels.shape[2] * labels.shape[3]
    assert got.pixels.dtype == torch.int64 and got.present.dtype == torch.bool
    assert bool((got.pixels[:, 0] == 0).all()) and int(got.pixels.sum()) > 0
    assert not bool(got.present[:, 3].any())          # no concept maps to category 3


def test_auto_picks_torch_and_layers_dedup():
    labels, image, cat = random_labels(7)
    anyl = dk.label_stats(labels, image, num_concepts=9, category_of=cat)
    perl = dk.label_stats(labels, image, num_concepts=9, category_of=cat, per_layer=True)
    assert bool((anyl.pixels <= perl.pixels).all()) and bool((anyl.pixels < perl.pixels).any())
    # per layer: every nonzero entry counts once, every nonzero image label covers H*W pixels
    assert int(perl.pixels.sum()) == int((labels != 0).sum()) + 30 * int((image != 0).sum())
    # any layer: an image-level label covers the whole image exactly once
    b, c = 0, 3
    assert int(anyl.pixels[b, c]) == 30 and int(perl.pixels[b, c]) > 60
    assert torch.equal(anyl.present, perl.present)
    assert dk.label_stats(labels, num_concepts=9).present is None


def test_three_dim_labels_and_presence():
    labels, _, cat = random_labels(3)
    single = labels[:, 0]
    a = dk.label_stats(single, num_concepts=9, category_of=cat)
    b = dk.label_stats(single[:, None], num_concepts=9, category_of=cat, per_layer=True)
    assert torch.equal(a.pixels, b.pixels)
    assert int(a.pixels.sum()) == int((single != 0).sum())
    # presence follows the concepts' categories
    for k in range(int(cat.max()) + 1):
        want = (a.pixels[:, cat == k] > 0).any(1)
        assert torch.equal(a.present[:, k], want)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_outputs_are_overwritten(backend):
    labels, image, cat = random_labels(1)
    labels = labels.long()
    want = dk.label_stats(labels, image, num_concepts=9, category_of=cat, backend="reference")
    out = LabelStats.empty(3, 9, 3, 30, labels.device)
    poison_like(out.pixels)
    out.present.fill_(True)
    label_stats_into(backend, labels, image, 9, False, cat, out)
    assert torch.equal(out.pixels, want.pixels) and torch.equal(out.present, want.present)


def test_bad_inputs():
    labels, image, cat = random_labels(2)
    with pytest.raises(ValueError, match="category_of has 8 entries"):
        dk.label_stats(labels, num_concepts=9, category_of=cat[:8])
    with pytest.raises(ValueError, match=r"labels holds ids in \[0, 8\]"):
        dk.label_stats(labels, num_concepts=8)
    with pytest.raises(ValueError, match="image_labels holds ids"):
        dk.label_stats(labels, image + 20, num_concepts=9)
    with pytest.raises(ValueError, match="image_labels has batch size 2"):
        dk.label_stats(labels, image[:2], num_concepts=9)
    with pytest.raises(ValueError, match="category_of holds ids"):
        dk.label_stats(labels, num_concepts=9, category_of=cat, num_categories=1)
    with pytest.raises(TypeError, match="labels must have dtype"):
        dk.label_stats(labels.float(), num_concepts=9)
    with pytest.raises(ValueError, match="labels must have 3 or 4 dimensions"):
        dk.label_stats(labels[0, 0], num_concepts=9)
    with pytest.raises(ValueError, match="num_categories was given without category_of"):
        dk.label_stats(labels, num_concepts=9, num_categories=3)
    with pytest.raises(ValueError, match="backend 'cpu' is not implemented"):
        dk.label_stats(labels, num_concepts=9, backend="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("per_layer", [False, True])
def test_cuda_matches_reference(per_layer):
    labels, image, cat = random_labels(4)
    kw = dict(num_concepts=9, category_of=cat, per_layer=per_layer)
    got = dk.label_stats(labels.cuda(), image.cuda(), **{**kw, "category_of": cat.cuda()})
    want = dk.label_stats(labels, image, backend="reference", **kw)
    assert got.pixels.is_cuda
    assert torch.equal(got.pixels.cpu(), want.pixels) and torch.equal(got.present.cpu(), want.present)
