"""The pass engine on a GPU: dissection and GAN dissection on CUDA give the CPU's results bit for
bit when the layer's activations are the same bits on both devices (exact quantiles, integer
counts), through every default backend choice."""
import pytest
import torch
from torch import nn

import dissect_kernels as dk
from planted import PlantedDataset

DATA = PlantedDataset()
Q = DATA.midgap_quantile(16 * 16)


class ExactPlanted(nn.Module):
    """Units 0..3: the fraction of each 4x4 cell holding concepts 1..4, plus a small pattern made
    of integers and powers of two (the same bits on every device); units 4..5: that pattern."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        maps = torch.stack([(x[:, 0] == c).float() for c in (1, 2, 3, 4)], 1)
        planted = nn.functional.avg_pool2d(maps, 4)                          # multiples of 1/16
        B, _, h, w = planted.shape
        i = torch.arange(h * w, device=x.device).view(1, 1, h, w)
        img = x[:, :1, ::4, ::4].round()
        pattern = ((i * 7919 + img * 104729 + torch.arange(6, device=x.device).view(1, 6, 1, 1) * 31) % 1024) / 2 ** 20
        return self.units(torch.cat([planted, torch.zeros(B, 2, h, w, device=x.device)], 1) + pattern)


@pytest.mark.gpu
def test_dissect_on_cuda_equals_cpu():
    kw = dict(quantile=Q, batch_size=16, progress=False, rotation=2)
    cpu = dk.dissect(ExactPlanted(), "units", DATA, device="cpu", **kw)
    gpu = dk.dissect(ExactPlanted(), "units", DATA, device="cuda", **kw)
    for name, a in cpu.layers.items():
        b = gpu.layers[name]
        if a.rotation is None:                       # a rotation mixes units in float32 matmuls
            assert torch.equal(a.thresholds, b.thresholds), name
            assert torch.equal(a.counts["intersection"], b.counts["intersection"]), name
            assert torch.equal(a.iou, b.iou) and torch.equal(a.topk_indices, b.topk_indices), name
        assert torch.equal(a.best_label[:4], b.best_label[:4]), name


@pytest.mark.gpu
def test_gan_dissection_on_cuda_runs_and_finds_the_planted_units():
    from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator, tiny_gan_info
    info = tiny_gan_info()
    gen = load_default_generator().cuda()
    res = dk.dissect_generator(gen, info["layer"], default_segmenter(), num_samples=64, batch_size=16,
                               progress=False, device="cuda")
    cpu = dk.dissect_generator(load_default_generator(), info["layer"], default_segmenter(), num_samples=64,
                               batch_size=16, progress=False)
    agree = (res.layers[info["layer"]].best_label == cpu.layers[info["layer"]].best_label).float().mean()
    assert agree > 0.9
