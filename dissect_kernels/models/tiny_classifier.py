"""Small multi-label classifiers for the unit-importance analysis, trainable on a CPU in
seconds: with or without batch norm and dropout, with an optional planted dependency (class k
reads only unit j of the last conv layer, so that unit is necessary for it), and the same model
in a randomly rotated basis of a layer (same function, units = rotated directions)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class TinyClassifier(nn.Module):
    """conv1 -> pool -> conv2 -> global max pool -> fc; each convN is conv3x3 (+ BN) + ReLU
    (+ dropout). head_mask [outputs, width] multiplies the fc weights (a planted dependency)."""

    def __init__(self, num_outputs: int, width: int = 16, *, batch_norm: bool = False, dropout: float = 0.0,
                 in_channels: int = 3):
        super().__init__()
        self.conv1, self.pool1 = self._block(in_channels, width, batch_norm, dropout), nn.MaxPool2d(2)
        self.conv2 = self._block(width, width, batch_norm, dropout)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(width, num_outputs)
        self.register_buffer("head_mask", torch.ones(num_outputs, width))

    @staticmethod
    def _block(cin: int, cout: int, batch_norm: bool, dropout: float) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(cout)] if batch_norm else []
        layers += [nn.ReLU()] + ([nn.Dropout2d(dropout)] if dropout else [])
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.pool1(self.conv1(x)))).flatten(1)
        return nn.functional.linear(x, self.fc.weight * self.head_mask, self.fc.bias)

    def plant(self, output: int, unit: int) -> "TinyClassifier":
        """Make output `output` read only unit `unit` of conv2 (before and during training)."""
        self.head_mask[output] = 0.0
        self.head_mask[output, unit] = 1.0
        return self


def train_classifier(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, epochs: int = 30,
                     lr: float = 0.01, batch_size: int = 32, seed: int = 0, plant: int | None = None) -> nn.Module:
    """Fit a multi-label classifier (BCE on logits) to images [N, 3, H, W] and multi-hot
    targets [N, K] with Adam; deterministic for a seed. Returns the model in eval mode.
    plant=k (a TinyClassifier): after half the epochs, output k is made to read only the unit
    it weighs most (kept as model.planted_unit), and the rest of the training adapts to that."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if plant is None:
        return _fit(model, images, targets, epochs, lr, batch_size, g)
    _fit(model, images, targets, epochs // 2, lr, batch_size, g)
    model.planted_unit = int((model.fc.weight[plant] * model.head_mask[plant]).argmax())
    model.plant(plant, model.planted_unit)
    return _fit(model, images, targets, epochs - epochs // 2, lr, batch_size, g)


def _fit(model, images, targets, epochs, lr, batch_size, g) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(model(images[idx]), targets[idx].float())
            loss.backward()
            opt.step()
    return model.eval()


class RotatedBasis(nn.Module):
    """`inner` followed by a rotation of its channels (submodule `rot`: the units a dissection
    or an ablation of `<layer>.rot` sees) and its inverse (`unrot`), so the network computes the
    same function while its units become random orthogonal mixtures of the original ones."""

    def __init__(self, inner: nn.Module, rotation: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.rot, self.unrot = _ChannelMix(rotation), _ChannelMix(rotation.t().contiguous())

    def forward(self, x):
        return self.unrot(self.rot(self.inner(x)))


class _ChannelMix(nn.Module):
    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix.float())

    def forward(self, x):
        return torch.einsum("uv,bv...->bu...", self.matrix, x)


def rotate_basis(model: nn.Module, layer: str, seed: int = 0) -> nn.Module:
    """A copy of `model` whose module `layer` ([B, U, ...] output) is wrapped in RotatedBasis
    with a random orthogonal matrix (seeded); its units are then at f"{layer}.rot"."""
    from dissect_kernels import hooks
    from dissect_kernels.rotation import random_rotation
    out = copy.deepcopy(model)
    parent_name, _, child = layer.rpartition(".")
    parent = hooks.get_module(out, parent_name) if parent_name else out
    inner = getattr(parent, child)
    last = next((m for m in reversed(list(inner.modules())) if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if last is None:
        raise ValueError(f"layer {layer!r} holds no conv or linear module: its width is unknown")
    U = last.out_channels if isinstance(last, nn.Conv2d) else last.out_features
    setattr(parent, child, RotatedBasis(inner, random_rotation(U, seed)))
    return out
