"""GAN dissection under torch.distributed: two gloo processes on CPU each take a shard of the
sample indices, accumulators merge after every pass, rank 0 writes; the result is bit-identical
to a single-process run (z depends only on the sample index; exact quantiles)."""
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dissect_kernels.generator import dissect_generator
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator

KW = dict(num_samples=10, batch_size=4, progress=False, top_k=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dissect_generator(load_default_generator(), "layer3", default_segmenter(), out_dir=out, **KW)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dissect_generator(load_default_generator(), "layer3", default_segmenter(), out_dir=tmp_path / "single", **KW)
    finally:
        torch.set_num_threads(n)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "multi")), nprocs=2, join=True)
    a = load_file(str(tmp_path / "single" / "results.safetensors"))
    b = load_file(str(tmp_path / "multi" / "results.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert (tmp_path / "single" / "units.csv").read_text() == (tmp_path / "multi" / "units.csv").read_text()
