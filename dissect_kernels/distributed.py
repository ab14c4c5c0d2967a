"""torch.distributed helpers for the pass engine: this rank's shard of the samples, gathering
Python objects from every rank, and a barrier. Without torchrun every helper is the
single-process identity (rank 0 of 1)."""
from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """Contiguous block of range(n) for this rank (blocks differ in size by at most one), as a
    range: O(1) memory however large n is."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return range(n * r // w, n * (r + 1) // w)


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """shard_range(n, rank_, world) as a list."""
    return list(shard_range(n, rank_, world))


def shard_dataset(dataset):
    """This rank's contiguous shard of a map-style dataset (a Subset; the whole dataset without
    torchrun). Unlike DistributedSampler it never pads, so every sample is counted once."""
    from torch.utils.data import Subset
    return Subset(dataset, shard_indices(len(dataset)))


def all_gather(obj) -> list:
    """Every rank's `obj` (picklable; CPU tensors work on gloo and NCCL alike), in rank order."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()
