"""A small conv net for 112x112 images whose named layers conv1..conv4 are dissected by the
embedded default job; trained on the synthetic Broden dataset by scripts/train_default_model.py."""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv1 (112^2) -> pool -> conv2 (56^2) -> pool -> conv3 (28^2) -> pool -> conv4 (14^2)
    -> global max pool -> fc. Each convN is conv3x3 + BN + ReLU, so its output is rectified."""

    def __init__(self, num_outputs: int, widths=(24, 48, 96, 128)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.widths = tuple(widths)
        self.conv1, self.pool1 = _block(3, w1), nn.MaxPool2d(2)
        self.conv2, self.pool2 = _block(w1, w2), nn.MaxPool2d(2)
        self.conv3, self.pool3 = _block(w2, w3), nn.MaxPool2d(2)
        self.conv4 = _block(w3, w4)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w4, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.conv4(x)
        return self.fc(self.pool(x).flatten(1))
