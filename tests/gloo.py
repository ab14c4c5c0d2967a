"""Run a job on several gloo ranks on CPU (torch.multiprocessing), and compare result files."""
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, job, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        job(*args)
    finally:
        dist.destroy_process_group()


def run_gloo(job, *args, world: int = 2) -> None:
    """job(*args) on `world` ranks; `job` must be a module-level function (it is pickled)."""
    mp.spawn(_entry, args=(world, free_port(), job, args), nprocs=world, join=True)


def assert_same_results(a_dir, b_dir) -> None:
    """results.safetensors of two runs hold the same keys and bit-identical tensors."""
    a = load_file(str(a_dir / "results.safetensors"))
    b = load_file(str(b_dir / "results.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
