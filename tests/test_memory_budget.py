"""A memory budget (issue 20): the run estimates its memory from one probe sample before the
first pass, keeps quantiles exact only where they fit, and refuses up front what cannot fit."""
import pytest
import torch
from torch import nn

import dissect_kernels as dk
from dissect_kernels.cli import main
from dissect_kernels.data import TensorSegmentationDataset


class Wide(nn.Module):
    """`units` maps at 7x7 from a seeded 1x1 projection of the pooled image."""

    def __init__(self, units: int):
        super().__init__()
        torch.manual_seed(0)
        self.pool, self.units = nn.AvgPool2d(8), nn.Conv2d(3, units, 1)

    def forward(self, x):
        return self.units(self.pool(x))


def data(n=32, concepts=50):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, concepts, (n, 1, 8, 8), generator=g).repeat_interleave(7, 2).repeat_interleave(7, 3)
    return TensorSegmentationDataset(torch.rand(n, 3, 56, 56, generator=g), labels, num_concepts=concepts)


def counted(model):
    calls = [0]
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return model, calls


def test_a_run_that_cannot_fit_is_refused_before_the_first_pass():
    model, calls = counted(Wide(4096))
    with pytest.raises(ValueError, match=r"needs about .* over the memory budget of"):
        dk.dissect(model, "units", data(concepts=2000), memory_budget=64 << 20, progress=False)
    assert calls[0] == 1                                   # the probe, nothing more


class Big:
    """A dataset of a million images (only its size and labels' metadata are read)."""

    num_concepts, label_size = 1200, 112

    def __len__(self):
        return 1_000_000


def test_quantiles_stay_exact_where_they_fit_else_the_sketch():
    from dissect_kernels.dissect_plan import make_plan
    kw = dict(convention="exact", quantile=None, geometry=None, receptive_fields=None, top_k=None,
              quantile_mode="auto", backend="cpu", device="cpu", exemplars=False, rotation=None,
              batch_size=32, thresholds=None)
    shapes = {"units": (512, 7, 7, 4)}             # 10^6 images x 49 positions per unit
    roomy = make_plan(Wide(512), "units", Big(), **kw)
    assert roomy.size_up(shapes, 64 << 30)["modes"] == {"units": "exact"}
    tight = make_plan(Wide(512), "units", Big(), **kw)
    est = tight.size_up(shapes, 3 << 30)          # the exact tail (1.9 GiB) exceeds half of it
    assert est["modes"] == {"units": "sketch"}
    with pytest.raises(ValueError, match="over the memory budget"):
        make_plan(Wide(512), "units", Big(), **kw).size_up(shapes, 256 << 20)


def test_a_budget_changes_no_result():
    model, ds = Wide(64), data()
    roomy = dk.dissect(model, "units", ds, memory_budget=1 << 30, progress=False)
    assert roomy.parameters["memory_estimate"]["modes"] == {"units": "exact"}
    free = dk.dissect(model, "units", ds, progress=False, cache_bytes=0)
    assert torch.equal(free.layers["units"].iou, roomy.layers["units"].iou)


def test_the_cli_takes_a_budget_and_refuses_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["dissect", "--dataset", "synthetic:8", "--memory-budget", "1M", "--quiet", "--out", str(tmp_path)])
    assert "memory budget" in str(err.value.code) and "\n" not in str(err.value.code)
    with pytest.raises(SystemExit):
        main(["dissect", "--memory-budget", "lots", "--out", str(tmp_path)])
