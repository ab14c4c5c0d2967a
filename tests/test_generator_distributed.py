"""GAN dissection under torch.distributed: two gloo processes on CPU each take a shard of the
sample indices, accumulators merge after every pass, rank 0 writes; the result is bit-identical
to a single-process run (z depends only on the sample index; exact quantiles)."""
import torch
from gloo import assert_same_results, run_gloo

from dissect_kernels.generator import dissect_generator
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator

KW = dict(num_samples=10, batch_size=4, progress=False, top_k=3)


def _job(out: str) -> None:
    dissect_generator(load_default_generator(), "layer3", default_segmenter(), out_dir=out, **KW)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _job(tmp_path / "single")
    finally:
        torch.set_num_threads(n)
    run_gloo(_job, str(tmp_path / "multi"))
    assert_same_results(tmp_path / "single", tmp_path / "multi")
    assert (tmp_path / "single" / "units.csv").read_text() == (tmp_path / "multi" / "units.csv").read_text()
