"""End-to-end dissection on planted truth: known unit <-> concept pairs must be recovered."""
import json

import pytest
import torch

import dissect_kernels as dk
from planted import Planted, PlantedDataset

Q = PlantedDataset().midgap_quantile(16 * 16)


@pytest.fixture(scope="module")
def planted():
    return Planted(), PlantedDataset()


def test_planted_units_are_recovered(planted, tmp_path):
    model, data = planted
    result = dk.dissect(model, "units", data, quantile=Q, batch_size=16, out_dir=tmp_path,
                        progress=False, backend="cpu")
    layer = result.layers["units"]
    for j, c in enumerate(model.concepts):
        assert int(layer.best_label[j]) == c
        assert float(layer.best_iou[j]) > 0.95
        assert bool(layer.detector[j])
    noise = torch.arange(len(model.concepts), len(model.concepts) + model.noise_units)
    assert not bool(layer.detector[noise].any())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "units.csv").read_text().count("\n") >= 1 + len(layer.best_iou)


def test_sketch_thresholds_recover_the_same_units(planted):
    """quantile_mode="sketch" (TailSketch): the same labels and detectors as exact thresholds.
    The IoUs differ: the planted quantile sits mid-gap, where numpy interpolates, while the sketch
    answers with a stored value (the gap's upper end), so `> threshold` drops that tie run."""
    model, data = planted
    kw = dict(quantile=Q, batch_size=16, progress=False, backend="cpu")
    exact = dk.dissect(model, "units", data, quantile_mode="exact", **kw).layers["units"]
    sketch = dk.dissect(model, "units", data, quantile_mode="sketch", **kw).layers["units"]
    assert torch.equal(exact.best_label, sketch.best_label)
    assert torch.equal(exact.detector, sketch.detector)
    assert (sketch.thresholds >= exact.thresholds).all()
    assert (sketch.best_iou[exact.detector] > 0.5).all()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backends_agree_end_to_end(planted, backend):
    model, data = planted
    kw = dict(quantile=Q, batch_size=16, progress=False)
    base = dk.dissect(model, "units", data, backend="cpu", **kw).layers["units"]
    other = dk.dissect(model, "units", data, backend=backend, **kw).layers["units"]
    assert torch.equal(base.iou, other.iou)
    assert torch.equal(base.thresholds, other.thresholds)
    assert torch.equal(base.topk_indices, other.topk_indices)
    assert base.counts.keys() == other.counts.keys() and "intersection" in base.counts
    for key, count in base.counts.items():       # every integer count, not just the IoU
        assert count.dtype == other.counts[key].dtype and torch.equal(count, other.counts[key]), key
    assert int(base.counts["intersection"].sum()) > 0


@pytest.mark.parametrize("convention", ["netdissect-lite", "dissect", "gandissect"])
def test_presets_run_and_recover(planted, convention):
    model, data = planted
    layer = dk.dissect(model, "units", data, convention=convention, quantile=Q, batch_size=16,
                       progress=False).layers["units"]
    assert [int(layer.best_label[j]) for j in range(len(model.concepts))] == model.concepts


def test_rotation_equals_an_explicitly_rotated_layer(planted):
    """rotation=seed dissects Q @ units; the same as inserting a fixed 1x1 conv holding Q."""
    model, data = planted
    kw = dict(quantile=Q, batch_size=16, progress=False)
    result = dk.dissect(model, "units", data, rotation=3, **kw)
    rot = result.layers["units@rot3"]
    q = rot.rotation
    assert torch.allclose(q @ q.T, torch.eye(q.shape[0]), atol=1e-5)
    turn = torch.nn.Conv2d(q.shape[1], q.shape[0], 1, bias=False)
    turn.weight.data = q[:, :, None, None].clone()
    rotated = Planted()
    rotated.units = torch.nn.Sequential(torch.nn.Identity(), turn)
    explicit = dk.dissect(rotated, "units.1", data, **kw).layers["units.1"]
    assert torch.equal(explicit.best_label, rot.best_label)
    assert torch.allclose(explicit.iou, rot.iou, atol=1e-3)
    assert torch.equal(result.layers["units"].iou, dk.dissect(model, "units", data, **kw).layers["units"].iou)


def test_bad_layer_and_empty_dataset(planted):
    model, data = planted
    with pytest.raises(LookupError, match="unitz"):
        dk.dissect(model, "unitz", data, progress=False)
    empty = PlantedDataset(n_images=0)
    with pytest.raises(ValueError, match="empty"):
        dk.dissect(model, "units", empty, progress=False)
