"""Two gloo processes on CPU: each dissects its shard, accumulators merge across ranks, rank 0
writes; the result is bit-identical to a single-process run (exact quantile mode)."""
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from planted import Planted, PlantedDataset  # noqa: E402

import dissect_kernels as dk  # noqa: E402
from dissect_kernels import distributed as ddp  # noqa: E402

KW = dict(quantile=0.9375, batch_size=8, progress=False, rotation=2, quantile_mode="exact")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dk.dissect(Planted(), "units", PlantedDataset(n_images=40), out_dir=out, **KW)
    finally:
        dist.destroy_process_group()


def test_shard_indices_cover_everything_once():
    for n in (0, 1, 7, 40):
        for world in (1, 2, 3, 5):
            parts = [ddp.shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))


def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = tmp_path / "single"
    dk.dissect(Planted(), "units", PlantedDataset(n_images=40), out_dir=single, **KW)
    multi = tmp_path / "multi"
    mp.spawn(_worker, args=(2, _free_port(), str(multi)), nprocs=2, join=True)
    a = load_file(str(single / "results.safetensors"))
    b = load_file(str(multi / "results.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert (single / "units.csv").read_text() == (multi / "units.csv").read_text()
