"""Two gloo processes on CPU: each dissects its shard, accumulators merge across ranks, rank 0
writes; the result is bit-identical to a single-process run (exact quantile mode)."""
from gloo import assert_same_results, run_gloo
from planted import Planted, PlantedDataset

import dissect_kernels as dk
from dissect_kernels import distributed as ddp

KW = dict(quantile=0.9375, batch_size=8, progress=False, rotation=2, quantile_mode="exact")


def _job(out: str) -> None:
    dk.dissect(Planted(), "units", PlantedDataset(n_images=40), out_dir=out, **KW)


def test_shard_indices_cover_everything_once():
    for n in (0, 1, 7, 40):
        for world in (1, 2, 3, 5):
            parts = [ddp.shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))


def test_two_gloo_ranks_equal_one_process(tmp_path):
    _job(tmp_path / "single")
    run_gloo(_job, str(tmp_path / "multi"))
    assert_same_results(tmp_path / "single", tmp_path / "multi")
    assert (tmp_path / "single" / "units.csv").read_text() == (tmp_path / "multi" / "units.csv").read_text()
