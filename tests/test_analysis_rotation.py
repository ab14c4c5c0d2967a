"""analysis.rotation on planted unit-aligned detectors: alpha = 0 reproduces the unrotated
dissection exactly, random rotations (and alpha = 1) destroy the planted alignment; the partial
rotation path is a rotation at every alpha."""
import json

import pytest
import torch

from planted import Planted, PlantedDataset

import dissect_kernels as dk
from torch import nn
from dissect_kernels.rotation import proper_rotation, random_rotation, rotation_power


def test_partial_rotation_is_a_rotation_between_identity_and_r():
    r = proper_rotation(12, 3).double()
    assert torch.equal(rotation_power(r, 0.0), torch.eye(12, dtype=torch.float64))
    assert torch.equal(rotation_power(r, 1.0), r)
    half = rotation_power(r, 0.5)
    assert torch.allclose(half @ half, r, atol=1e-6)                 # a geodesic: two halves make R
    assert torch.allclose(half @ half.T, torch.eye(12, dtype=torch.float64), atol=1e-10)
    assert torch.linalg.det(half) == pytest.approx(1.0)
    assert torch.equal(proper_rotation(12, 3).abs(), random_rotation(12, 3).abs())


class Sparse(nn.Module):
    """Units 0-3: planted detectors of concepts 1-4 (0/1 squares); units 4-31: unit-variance noise
    (seeded per image). Interpretable only in its own basis: a random direction is mostly noise."""

    def __init__(self, noise_units: int = 28):
        super().__init__()
        self.units, self.n = nn.Identity(), noise_units

    def forward(self, x):
        planted = nn.functional.avg_pool2d(torch.stack([(x[:, 0] == c).float() for c in (1, 2, 3, 4)], 1), 4)
        noise = torch.stack([torch.randn(self.n, *planted.shape[-2:], generator=torch.Generator().manual_seed(
            int(img.sum().item() * 7919) % 1_000_003)) for img in x])
        return self.units(torch.cat([planted, noise], 1))


def test_alpha_zero_reproduces_unrotated_and_rotations_destroy_planted_detectors(tmp_path):
    ds = PlantedDataset(32)
    rec = dk.analysis.rotation(Sparse(), ["units"], ds, rotations=3, alphas=[0, 0.25, 1], seed=1,
                               quantile=ds.midgap_quantile(256), batch_size=16, progress=False, out_dir=tmp_path)
    lr = rec["layers"]["units"]
    assert lr["unrotated"] == {"detectors": 4, "unique_concepts": 4}
    zero = next(p for p in lr["partial"] if p["alpha"] == 0)
    assert {k: zero[k] for k in ("detectors", "unique_concepts")} == lr["unrotated"]
    for u in lr["units"]:                                            # per unit, exactly the same
        assert u["partial"]["0"] == {"label": u["label"], "iou": u["iou"], "detector": u["detector"]}
    quarter, one = (next(p for p in lr["partial"] if p["alpha"] == a) for a in (0.25, 1))
    assert quarter["detectors"] == 4 and one["detectors"] <= 1      # near the identity: still aligned
    assert lr["random"]["detectors"]["mean"] <= 1 and len(lr["rotations"]) == 3
    assert [u["unit"] for u in lr["units"]] == list(range(32)) and {u["layer"] for u in lr["units"]} == {"units"}
    assert json.loads((tmp_path / "rotation.json").read_text())["layers"]["units"]["partial"] == lr["partial"]
    assert "rotation.html" in (tmp_path / "index.html").read_text()


def test_random_rotation_matches_dissect_rotation():
    ds = PlantedDataset(16)
    q = ds.midgap_quantile(64)
    rec = dk.analysis.rotation(Planted(), ["units"], ds, rotations=1, alphas=[0], seed=5, quantile=q,
                               batch_size=16, progress=False)
    res = dk.dissect(Planted(), ["units"], ds, rotation=5, quantile=q, batch_size=16, progress=False)
    assert rec["layers"]["units"]["rotations"][0]["detectors"] == res.layers["units@rot5"].num_detectors
