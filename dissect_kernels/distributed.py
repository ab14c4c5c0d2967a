"""torch.distributed glue: shard samples by rank and merge accumulators across ranks.

Every accumulator (IoUTally, QuantileSketch, TopK, ...) has state_dict / load_state_dict /
merge, so merging is generic: all-gather each rank's state (as a pickled dict of CPU tensors,
which works on gloo and NCCL alike), rebuild it into a fresh copy and merge in rank order. Every
rank ends with the same merged state; merging in rank order keeps results deterministic."""
from __future__ import annotations

import copy

import torch
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


def merge_across_ranks(acc):
    """Merge `acc` (in place) with its peers on every rank; returns acc."""
    if not is_distributed() or world_size() == 1:
        return acc
    state = {k: v.detach().cpu() for k, v in acc.state_dict().items()}
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, state)
    merged = None
    for peer_state in gathered:
        peer = copy.deepcopy(acc)
        peer.load_state_dict({k: v.to(_device_of(acc)) for k, v in peer_state.items()})
        if merged is None:
            merged = peer
        else:
            merged.merge(peer)
    acc.load_state_dict(merged.state_dict())
    return acc


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum of every rank's `t` (same shape on all ranks), added in rank order on every rank:
    exact for integers, deterministic for floats (gathered as CPU tensors: gloo and NCCL)."""
    if not is_distributed() or world_size() == 1:
        return t
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, t.detach().cpu())
    total = gathered[0].clone()
    for peer in gathered[1:]:
        total += peer
    return total.to(t.device)


def shard_dataset(dataset):
    """This rank's contiguous shard of a map-style dataset (a Subset; the whole dataset without
    torchrun). Unlike DistributedSampler it never pads, so every sample is counted once."""
    from torch.utils.data import Subset
    return Subset(dataset, shard_indices(len(dataset)))


def _device_of(acc) -> torch.device:
    for v in acc.state_dict().values():
        return v.device
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()
