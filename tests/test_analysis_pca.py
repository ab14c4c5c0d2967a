"""analysis.pca on planted units: concept 1 is carried by one unit, concept 2 is spread evenly
over two units (each half of the signal), and PCA of the concept's pixels tells them apart."""
import json

import pytest
import torch

from planted import Planted, PlantedDataset

import dissect_kernels as dk
from dissect_kernels.analysis.pca import decompose


def test_one_unit_vs_spread_over_two(tmp_path):
    ds = PlantedDataset(24)
    model = Planted(concepts=(1, 2, 2, 3), noise_units=3)      # units 1 and 2 both carry concept 2
    rec = dk.analysis.pca(model, ["units"], ds, batch_size=12, progress=False, out_dir=tmp_path)
    by = {c["concept"]: c for c in rec["layers"]["units"]["concepts"]}
    assert by["thing1"]["carried_by"] == "one unit" and by["thing1"]["top_unit"] == 0
    assert by["thing1"]["top_share"] > 0.9 and by["thing1"]["effective_units"] < 1.3
    spread = by["thing2"]
    assert spread["carried_by"] == "spread" and spread["top_unit"] in (1, 2)
    load = spread["components"][0]["loadings"]
    assert load[1] ** 2 == pytest.approx(0.5, abs=0.05) and load[2] ** 2 == pytest.approx(0.5, abs=0.05)
    assert 1.8 < spread["effective_units"] < 2.3
    units = rec["layers"]["units"]["units"]
    assert [u["unit"] for u in units] == list(range(7)) and units[0]["concepts"][0]["concept"] == "thing1"
    assert json.loads((tmp_path / "pca.json").read_text())["layers"]["units"]["concepts"][0]["layer"] == "units"
    assert "pca.html" in (tmp_path / "index.html").read_text()


def test_decompose_matches_svd_of_the_rows():
    x = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    explained, load = decompose(x.T @ x, 50, 2)
    s, v = torch.linalg.svd(x, full_matrices=False)[1:]
    assert torch.allclose(explained, s[:2] ** 2 / (s ** 2).sum())
    assert torch.allclose(load.abs(), v[:2].abs(), atol=1e-8)
