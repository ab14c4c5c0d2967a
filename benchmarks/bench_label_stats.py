"""Benchmark label_stats (torch backend) against a one-hot baseline measured in the same run.

Floor: the op must read the labels once, B*L*H*W int32 = 4 bytes each; at ~10 GB/s (one core of
this 2-core box) the 8x3x112x112 batch (1.2 MB) floors at ~0.12 ms.
"""
import pytest
import torch

import dissect_kernels as dk

B, L, H, W, C, K = 8, 3, 112, 112, 64, 6


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (B, L, H, W), generator=g, dtype=torch.int32)
    labels[:, 1:][torch.rand(B, L - 1, H, W, generator=g) < 0.7] = 0
    image = torch.randint(0, C, (B, 2), generator=g, dtype=torch.int32)
    category_of = torch.randint(0, K, (C,), generator=g)
    return labels, image, category_of


def one_hot_baseline(labels, image, category_of):
    """The obvious vectorised way: one-hot planes [B, L, H, W, C], any over layers, sum."""
    planes = torch.nn.functional.one_hot(labels.long(), C).amax(1)
    pixels = planes.sum((1, 2)).long()
    listed = torch.nn.functional.one_hot(image.long(), C).amax(1).bool()
    pixels = torch.where(listed, H * W, pixels)
    pixels[:, 0] = 0
    present = torch.zeros(B, K, dtype=torch.long).index_add_(1, category_of, (pixels > 0).long()) > 0
    return pixels, present


@pytest.mark.benchmark(group="label_stats")
def test_bench_baseline_one_hot(benchmark, data):
    benchmark(one_hot_baseline, *data)


@pytest.mark.benchmark(group="label_stats")
@pytest.mark.parametrize("per_layer", [False, True])
def test_bench_label_stats_torch(benchmark, data, per_layer):
    labels, image, category_of = data
    out = benchmark(dk.label_stats, labels, image, num_concepts=C, category_of=category_of,
                    per_layer=per_layer, backend="torch")
    if not per_layer:
        pixels, present = one_hot_baseline(*data)
        assert torch.equal(out.pixels, pixels) and torch.equal(out.present, present)
