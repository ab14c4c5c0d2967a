"""The causal drivers under torch.distributed: two gloo processes on CPU. ace and
rank_units_by_ace shard the sample indices and sum integer pixel counts, classifier_ablation
sums confusion counts of rank-sharded loaders; every rank returns the single-process result."""
import dataclasses

import pytest
import torch
from gloo import run_gloo

from dissect_kernels import distributed as ddp
from dissect_kernels.ace import ace, rank_units_by_ace
from dissect_kernels.ablation import classifier_ablation
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator
from test_ablation import Planted, planted_data

N = 11              # odd: the two shards differ in size (5 and 6 samples)


def _ace_job(out: str) -> None:
    g, s = load_default_generator(), default_segmenter()
    res = {
        "ranking": rank_units_by_ace(g, "layer3", s, "water", num_samples=N, batch_size=4, value=2.0),
        "quantile": ace(g, "layer3", [0, 14, 20], s, "tree", num_samples=N, batch_size=4),
        "ablate": ace(g, "layer3", [11, 22, 23], s, "water", num_samples=N, mode="ablate", batch_size=3),
        "mean": ace(g, "layer3", [7, 16, 18], s, "sun", num_samples=N, value="mean", batch_size=4),
        "one": ace(g, "layer3", [0, 14, 20], s, "tree", num_samples=1),   # rank 0's shard is empty
    }
    torch.save({k: dataclasses.asdict(v) for k, v in res.items()}, f"{out}/rank{ddp.rank()}.pt")


def _ablation_job(out: str) -> None:
    torch.manual_seed(0)
    model = Planted().eval()
    _, x, y = planted_data()
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ddp.shard_dataset(ds), batch_size=16)
    r = classifier_ablation(model, "feat", loader, num_classes=3, top_n=(1, 2), progress=False)
    # One sample: rank 0's loader is empty and joins with zero counts.
    tiny = torch.utils.data.DataLoader(ddp.shard_dataset(torch.utils.data.Subset(ds, [7])), batch_size=4)
    r1 = classifier_ablation(model, "feat", tiny, num_classes=3, top_n=(1,), progress=False)
    torch.save({"full": r.state_dict(), "one": r1.state_dict()}, f"{out}/rank{ddp.rank()}.pt")


def _single(job, out) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job(str(out))
    finally:
        torch.set_num_threads(n)


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_equal(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and a[key].equal(b[key]), key
        else:
            assert a[key] == b[key], key


def test_ace_and_ranking_two_gloo_ranks_equal_one_process(tmp_path):
    (tmp_path / "single").mkdir(), (tmp_path / "multi").mkdir()
    _single(_ace_job, tmp_path / "single")
    run_gloo(_ace_job, str(tmp_path / "multi"))
    one = torch.load(tmp_path / "single" / "rank0.pt")
    assert one["ranking"]["ace"].max() > 0.3 and one["quantile"]["ace"] > 0.3 and one["mean"]["ace"] > 0.3
    assert one["ablate"]["ace"] > 0.01
    for r in range(2):
        multi = torch.load(tmp_path / "multi" / f"rank{r}.pt")
        # Integer pixel counts and the exact quantile merge bit-identically.
        _assert_equal({k: v for k, v in one.items() if k != "mean"}, {k: v for k, v in multi.items() if k != "mean"})
        # value="mean" sums float64 per rank, added in rank order: equal up to float rounding.
        m1, m2 = one["mean"], multi["mean"]
        assert torch.allclose(m1["value"], m2["value"], rtol=1e-6, atol=0)
        for key in ("ace", "original", "inserted"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-9, abs=1e-12), key


def test_classifier_ablation_sharded_loaders_equal_one_process(tmp_path):
    (tmp_path / "single").mkdir(), (tmp_path / "multi").mkdir()
    _single(_ablation_job, tmp_path / "single")
    run_gloo(_ablation_job, str(tmp_path / "multi"))
    one = torch.load(tmp_path / "single" / "rank0.pt")
    assert int(one["full"]["num_samples"]) == 90 and one["full"]["drop"].max() > 0.2
    assert int(one["one"]["num_samples"]) == 1
    for r in range(2):
        _assert_equal(one, torch.load(tmp_path / "multi" / f"rank{r}.pt"))
