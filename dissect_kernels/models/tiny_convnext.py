"""A tiny ConvNeXt-style network whose blocks work channels-last: after the depthwise
convolution each block permutes to [B, H, W, C] and runs LayerNorm and two Linear layers there
(as ConvNeXt does): `stages.N.blocks.M.norm` reads, and `...pwconv2` writes, NHWC maps (dissect
them with LayerSpec(..., layout="nhwc"), e.g. the norm's input with capture="input").
planted_convnext() sets weights so that the stem's channel j < len(concepts) is the fraction of
each 4x4 cell holding concepts[j], every depthwise convolution is the identity and every block
starts as the identity (zero last projection): the planted units reach every block's NHWC
norm input."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x + permute_back(pwconv2(gelu(pwconv1(norm(permute(dwconv(x))))))) with a layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)                  # NHWC from here
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class TinyConvNeXt(nn.Module):
    """Patchify stem (4x4, stride 4) then `stages` stages of `depth` blocks at width dim.
    one_hot_input=K decodes channel 0 (a label map) into K one-hot channels first."""

    def __init__(self, dim: int = 16, stages: int = 2, depth: int = 1, in_chans: int = 3,
                 one_hot_input: int = 0):
        super().__init__()
        self.one_hot_input = one_hot_input
        self.stem = nn.Conv2d(one_hot_input or in_chans, dim, 4, 4)
        self.stages = nn.Sequential(*[Stage(dim, depth) for _ in range(stages)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_hot_input:
            x = F.one_hot(x[:, 0].round().long().clamp(0, self.one_hot_input - 1),
                          self.one_hot_input).permute(0, 3, 1, 2).float()
        return self.stages(self.stem(x)).mean((2, 3))


def planted_convnext(concepts=(1, 2, 3, 4), num_concepts: int = 6, noise_units: int = 4,
                     seed: int = 0) -> TinyConvNeXt:
    """A TinyConvNeXt carrying planted concept units through every block (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    model = TinyConvNeXt(dim=len(concepts) + noise_units, one_hot_input=num_concepts)
    with torch.no_grad():
        w = model.stem.weight
        w.copy_(torch.randn(w.shape, generator=g) * 1e-3)
        for j, c in enumerate(concepts):
            w[j, c] += 1.0 / 16
        model.stem.bias.zero_()
        for stage in model.stages:
            for block in stage.blocks:
                block.dwconv.weight.zero_(), block.dwconv.bias.zero_()
                block.dwconv.weight[:, 0, 3, 3] = 1.0
                block.pwconv2.weight.zero_(), block.pwconv2.bias.zero_()
    return model.eval()
