"""analysis.robustness on planted colour detectors: labels follow rotations and shuffled patches
(detectors kept), small noise keeps them, k = 100 noise destroys them; the CLI writes its JSON."""
import json

import torch
from torch import nn

from planted import PlantedDataset

import dissect_kernels as dk

STEP = 40.0      # concept c is painted with pixel value 40 c


class ColourData(PlantedDataset):
    """PlantedDataset whose images are in pixel units (label c -> value 40 c): normalisation
    (0, 1/255) makes one pixel unit of noise one unit of input."""

    normalization = (0.0, 1 / 255)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["image"] = item["image"] * STEP
        return item


class Colour(nn.Module):
    """Unit j fires where the red value is within 20 of concept j+1's colour (a colour detector)."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        maps = [((x[:, 0] - STEP * c).abs() < STEP / 2).float() for c in (1, 2, 3, 4)]
        return self.units(nn.functional.avg_pool2d(torch.stack(maps, 1), 4)).mean((2, 3))


def test_planted_colour_detectors_survive_small_noise_and_geometry_but_not_k100(tmp_path):
    ds = ColourData(32)
    rec = dk.analysis.robustness(Colour(), ["units"], ds, quantile=ds.midgap_quantile(256), batch_size=16, progress=False,
                                 perturbations=["noise-5", "noise-100", "rotate-90", "rotate-10", "shuffle-4"],
                                 out_dir=tmp_path, targets=["thing1", "thing2", "thing3", "thing4"])
    s = rec["layers"]["units"]["summary"]
    assert s["none"]["detectors"] == 4 and s["none"]["unique_concepts"] == 4
    for kept in ("noise-5", "rotate-90", "shuffle-4", "rotate-10"):
        assert s[kept]["retained"] == 4, (kept, s[kept])       # labels moved with the pixels
    assert s["noise-100"]["retained"] <= 1 and s["noise-100"]["retention"] < s["noise-5"]["retention"]
    units = rec["layers"]["units"]["units"]
    assert [u["unit"] for u in units] == list(range(4)) and all(u["layer"] == "units" for u in units)
    assert units[0]["label"] == "thing1" and units[0]["perturbed"]["noise-5"]["retained"]
    assert rec["accuracy"]["none"]["accuracy"] == 1.0          # the planted model predicts presence exactly
    on_disk = json.loads((tmp_path / "robustness.json").read_text())
    assert on_disk["layers"]["units"]["summary"] == s
    assert "Robustness" in (tmp_path / "index.html").read_text()


def test_bad_perturbation_is_one_line():
    import pytest
    with pytest.raises(ValueError, match="noise-K"):
        dk.analysis.robustness(Colour(), ["units"], ColourData(4), perturbations=["blur-3"], progress=False)
