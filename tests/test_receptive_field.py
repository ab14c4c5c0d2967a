"""Receptive fields traced from the model itself (the "netdissect" convention's geometry):
hand-computed values for the shipped ResNet-18 and a Caffe-style AlexNet, per-axis fields,
branches (the largest field wins, as NetDissect's graph walk), clear errors, and the CLI's
--convention netdissect with and without --receptive-fields."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import dissect_kernels as dk
from dissect_kernels.cli import main
from dissect_kernels.models.resnet import resnet18
from dissect_kernels.receptive_field import FieldMap, parse_receptive_fields, trace_receptive_fields


class CaffeAlexNet(nn.Module):
    """The Caffe reference AlexNet's geometry (conv1 without padding, grouped conv2/4/5)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(3, 8, 11, stride=4), nn.MaxPool2d(3, stride=2)
        self.conv2, self.pool2 = nn.Conv2d(8, 8, 5, padding=2, groups=2), nn.MaxPool2d(3, stride=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv5, self.pool5 = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.MaxPool2d(3, stride=2)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv5(torch.relu(self.conv4(torch.relu(self.conv3(x))))))
        return self.fc(self.pool5(x).flatten(1))


def square(offset, size, stride):
    return FieldMap(offset, size, stride), FieldMap(offset, size, stride)


def test_resnet18_fields_by_hand():
    # conv1 7x7/2 pad 3: (-3, 7, 2); maxpool 3/2 pad 1: (-3 - 2, 7 + 2*2, 4); every 3x3 pad-1
    # conv then adds (-pad*stride, 2*stride); each stage's first conv doubles the stride. The
    # 1x1 shortcut convs give smaller fields and lose where the branches are summed.
    want = {"conv1": square(-3, 7, 2), "maxpool": square(-5, 11, 4), "layer1": square(-21, 43, 4),
            "layer2": square(-49, 99, 8), "layer3": square(-105, 211, 16), "layer4": square(-217, 435, 32),
            "layer4.0.downsample": square(-105, 211, 32)}
    got = trace_receptive_fields(resnet18().eval(), list(want), torch.randn(1, 3, 224, 224))
    assert got == want


def test_caffe_alexnet_fields_by_hand():
    want = {"conv1": square(0, 11, 4), "pool1": square(0, 19, 8), "conv2": square(-16, 51, 8),
            "pool2": square(-16, 67, 16), "conv3": square(-32, 99, 16), "conv4": square(-48, 131, 16),
            "conv5": square(-64, 163, 16), "pool5": square(-64, 195, 32)}
    assert trace_receptive_fields(CaffeAlexNet().eval(), list(want), torch.randn(1, 3, 227, 227)) == want


def test_axes_separately_and_padding_modes():
    m = nn.Sequential(nn.Conv2d(1, 2, (3, 5), stride=(1, 2), padding=(1, 0)),
                      nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.AvgPool2d(2))
    got = trace_receptive_fields(m, ["0", "1", "2"], torch.randn(1, 1, 20, 30))
    assert got["0"] == (FieldMap(-1, 3, 1), FieldMap(0, 5, 2))
    assert got["1"] == (FieldMap(-2, 5, 1), FieldMap(-2, 9, 2))    # F.pad then an unpadded conv
    assert got["2"] == (FieldMap(-2, 6, 2), FieldMap(-2, 11, 4))


def test_layers_not_made_by_convolutions_are_refused():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match=r"\['1', '2'\].*--receptive-fields"):
        trace_receptive_fields(m, ["0", "1", "2"], torch.randn(1, 1, 8, 8))


def test_parse_receptive_fields():
    assert parse_receptive_fields("layer4:-217,435,32") == {"layer4": square(-217, 435, 32)}
    assert parse_receptive_fields("a:1,2,3,4,5,6; b.c:0,1,1") == {
        "a": (FieldMap(1, 2, 3), FieldMap(4, 5, 6)), "b.c": square(0, 1, 1)}
    for bad in ("layer4:1,2", "layer4", ":1,2,3", "x:1,a,3"):
        with pytest.raises(ValueError, match="OFFSET,SIZE,STRIDE"):
            parse_receptive_fields(bad)


def test_traced_geometry_equals_the_given_one(tmp_path):
    """dk.dissect under "netdissect": fields traced from the model give the same counts as the
    same fields given by hand, and different fields give different counts."""
    from dissect_kernels.data import BrodenDataset, make_synthetic_broden
    from dissect_kernels.models import load_default_model
    ds = BrodenDataset(make_synthetic_broden(tmp_path / "data", n_images=12, seed=0))
    model = load_default_model()
    traced = trace_receptive_fields(model, ["conv4"], ds[0]["image"][None])["conv4"]
    run = lambda rf: dk.dissect(model, ["conv4"], ds, convention="netdissect", receptive_fields=rf,  # noqa: E731
                                progress=False, batch_size=12).layers["conv4"].counts["intersection"]
    auto = run(None)
    assert torch.equal(auto, run({"conv4": tuple(traced[0])}))
    assert not torch.equal(auto, run({"conv4": (traced[0].offset + 24, traced[0].size, traced[0].stride)}))


def test_cli_convention_netdissect_runs_on_any_model(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dissect", "--dataset", "synthetic:16", "--out", str(out), "--quiet", "--layers", "conv4",
                 "--convention", "netdissect", "--batch-size", "16"]) == 0
    assert json.loads((out / "summary.json").read_text())["convention"] == "netdissect"
    with pytest.raises(SystemExit, match="receptive-fields"):
        main(["dissect", "--dataset", "synthetic:16", "--out", str(tmp_path / "o2"), "--layers", "conv4",
              "--convention", "netdissect", "--receptive-fields", "conv4:1,2"])
