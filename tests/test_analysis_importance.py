"""The importance analysis on small classifiers trained here in seconds (with and without batch
norm and dropout): a unit planted as the only input of the 'red' output must show the largest
'red' accuracy drop; rotating the layer's basis (same function) spreads that importance."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from dissect_kernels.analysis.importance import importance, selectivity, spearman, weight_l1
from dissect_kernels.models.tiny_classifier import TinyClassifier, rotate_basis, train_classifier

NAMES = ["-", "square", "bar", "block", "red", "blue", "green"]
TARGETS = ["red", "blue", "green", "square", "bar", "block"]
SHAPES = {1: (8, 8), 2: (4, 12), 3: (12, 4)}
RGB = {4: (1.0, 0.1, 0.1), 5: (0.1, 0.2, 1.0), 6: (0.1, 0.9, 0.2)}


class ColourShapes:
    """32x32 RGB images with a shape (square, bar, block) in some quadrants, each in a random
    colour (red, blue, green) on a dark noisy background; labels: layer 0 shape, layer 1 colour."""

    category_names = ["object", "color"]
    concept_names = NAMES
    num_concepts, num_categories = len(NAMES), 2
    category_of = torch.tensor([0, 0, 0, 0, 1, 1, 1])

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            lab = np.zeros((2, 32, 32), np.int64)
            img = rng.uniform(0, 0.15, (3, 32, 32)).astype(np.float32)
            for qy, qx in ((0, 0), (0, 16), (16, 0), (16, 16)):
                if rng.random() < 0.55:
                    continue
                shape, colour = int(rng.integers(1, 4)), int(rng.integers(4, 7))
                h, w = SHAPES[shape]
                y, x = qy + rng.integers(0, 17 - h), qx + rng.integers(0, 17 - w)
                lab[0, y:y + h, x:x + w], lab[1, y:y + h, x:x + w] = shape, colour
                img[:, y:y + h, x:x + w] = np.array(RGB[colour], np.float32)[:, None, None]
            self.items.append((torch.from_numpy(img), torch.from_numpy(lab)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, lab = self.items[i]
        return dict(image=img, labels=lab.clone(), image_labels=torch.zeros(0, dtype=torch.int64), index=i)

    def tensors(self):
        """Images [N, 3, 32, 32] and multi-hot targets [N, len(TARGETS)]."""
        x = torch.stack([img for img, _ in self.items])
        y = torch.stack([torch.tensor([bool((lab == NAMES.index(t)).any()) for t in TARGETS]) for _, lab in self.items])
        return x, y


@pytest.fixture(scope="module")
def data():
    return ColourShapes(240, seed=0), ColourShapes(120, seed=1)


_TRAINED = {}


def trained(data, **kw):
    """A TinyClassifier trained on data[0] with 'red' planted on one conv2 unit (cached per variant)."""
    key = tuple(sorted(kw.items()))
    if key not in _TRAINED:
        _TRAINED[key] = _train(data, **kw)
    return _TRAINED[key]


def _train(data, **kw):
    train, _ = data
    torch.manual_seed(0)
    model = TinyClassifier(len(TARGETS), width=12, **kw)
    return train_classifier(model, *train.tensors(), epochs=12, lr=0.01, seed=0, plant=TARGETS.index("red"))


@pytest.mark.parametrize("kw", [{}, {"batch_norm": True}, {"dropout": 0.2}], ids=["plain", "batchnorm", "dropout"])
def test_the_planted_necessary_unit_has_the_largest_drop(data, kw, tmp_path):
    model = trained(data, **kw)
    rec = importance(model, ["conv2"], data[1], TARGETS, batch_size=40, device="cpu", progress=False,
                     out_dir=tmp_path)
    lr = rec["layers"]["conv2"]
    red = lr["classes"]["red"]
    assert red["baseline_balanced_accuracy"] > 0.9, red
    planted = model.planted_unit
    assert red["top_unit"] == planted and red["top_drop"] > 0.3, red
    drops = [x["drops"]["red"] for x in lr["units"]]
    assert sorted(drops)[-2] < 0.02 and min(drops) > -0.02     # nothing else reaches the red output
    x = lr["units"][planted]
    assert (x["layer"], x["unit"]) == ("conv2", planted) and set(lr["spearman"]) == \
        {"selectivity", "weight_l1", "best_iou", "mean_activation"}
    assert json.loads((tmp_path / "importance.json").read_text())["layers"]["conv2"]["classes"]["red"]["top_unit"] \
        == planted
    assert "Unit importance" in (tmp_path / "importance.html").read_text()


def test_rotating_the_basis_spreads_importance(data):
    model = trained(data)
    rotated = rotate_basis(model, "conv2", seed=3)
    x = data[1].tensors()[0]
    with torch.no_grad():
        torch.testing.assert_close(rotated(x), model(x), atol=1e-4, rtol=1e-4)   # the same function
    plain = importance(model, ["conv2"], data[1], TARGETS, batch_size=40, device="cpu", progress=False)
    rot = importance(rotated, ["conv2.rot"], data[1], TARGETS, batch_size=40, device="cpu", progress=False)
    before, after = plain["layers"]["conv2"], rot["layers"]["conv2.rot"]
    spread = lambda lr: sum(u["drops"]["red"] > 0.01 for u in lr["units"])  # noqa: E731
    share = lambda lr: lr["classes"]["red"]["top_share"]  # noqa: E731
    assert (spread(before), spread(after)) > (0, 1) and spread(after) > spread(before) == 1, (before, after)
    assert share(before) > 0.9 > 0.6 > share(after), (share(before), share(after))


def test_attribute_helpers():
    means = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert selectivity(means).tolist() == [1.0, 0.0, 0.0]
    bn = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU())
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([1.0, -2.0, 0.5]).reshape(3, 1, 1, 1).expand(3, 2, 1, 1))
        bn[1].weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn[1].running_var.fill_(4.0 - bn[1].eps)
    assert weight_l1(nn.Sequential(bn), "0", 3).tolist() == pytest.approx([2.0, 2.0, 0.5])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None


def test_cli_on_the_default_model(tmp_path, capsys):
    from dissect_kernels.cli import main
    out = tmp_path / "run"
    assert main(["analyze", "importance", "--dataset", "synthetic:24", "--layers", "conv4", "--out", str(out),
                 "--quiet"]) == 0
    rec = json.loads((out / "importance.json").read_text())
    lr = rec["layers"]["conv4"]
    assert lr["units_total"] == 128 and len(lr["classes"]) == 36 and lr["units"][7]["unit"] == 7
    assert "Spearman with the mean accuracy drop" in capsys.readouterr().out
    assert main(["analyze", "importance", "--dataset", "synthetic:24", "--rotate", "0", "--out", str(out),
                 "--quiet"]) == 0
    assert list(json.loads((out / "importance.json").read_text())["layers"]) == ["conv4.rot"]
    with pytest.raises(SystemExit, match="--targets"):
        main(["analyze", "importance", "--model", "torch.nn:Identity", "--layers", "x", "--out", str(out)])
