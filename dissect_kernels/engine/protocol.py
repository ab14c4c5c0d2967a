"""What the pass engine streams batches into: accumulators, grouped into passes.

An accumulator is any object with the five methods of `Accumulator` (nothing to subclass). It
may also say which captured layers it reads (`layers`, default none), whether the model must
run to its end for it (`needs_output`, default False: the forward pass stops after the last
captured layer), and whether it reads the labels (`needs_labels`, default True; a pass whose
accumulators all say False does not decode them). Its `finalize()` returns plain tensors (a tensor or a flat dict of tensors):
results are data, so the engine can checkpoint them and a later pass can read them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Union, runtime_checkable

import torch

if TYPE_CHECKING:
    from dissect_kernels.engine.step import Step

Tensors = Union[torch.Tensor, dict[str, torch.Tensor]]
Results = dict[str, dict[str, Tensors]]        # pass name -> accumulator name -> finalize()


@runtime_checkable
class Accumulator(Protocol):
    """A mergeable streaming statistic: updated per batch, merged across shards (ranks) exactly,
    saved to and restored from plain tensors, finalised once at the end of its pass."""

    def update(self, step: "Step") -> None:
        """Add one batch (captured activations, labels, indices, model output) to the state."""

    def merge(self, other) -> None:
        """Fold another shard's accumulator of the same configuration into this one."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as plain tensors ({} before the first update)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict() returned (tensors may be on any device)."""

    def finalize(self) -> Tensors:
        """The pass's result: a tensor or a flat dict of tensors."""


class IntegerCounts:
    """The merge, checkpoint and result of an accumulator whose state is `self.counts`, a dict
    of int64 tensors that only ever add up (so shards merge exactly): a statistic defines its
    counts and update() and inherits the rest."""

    counts: dict[str, torch.Tensor]

    def merge(self, other) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.counts.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = {k: state[k].to(torch.int64).cpu().clone() for k in self.counts}

    def finalize(self) -> dict[str, torch.Tensor]:
        return self.state_dict()


@dataclass(frozen=True)
class Pass:
    """One streaming pass over the data: `build(results)` makes its accumulators (name ->
    accumulator) from the results of the passes before it (e.g. pass 2's tallies read pass 1's
    thresholds). It is called again on resume, so it must be a pure function of `results`.
    `source(results)`, when given, replaces the run's source for this pass (e.g. only the
    exemplar images that pass 1 found); it too must be a pure function of `results`."""

    name: str
    build: Callable[[Results], Mapping[str, Accumulator]]
    source: Callable[[Results], object] | None = None


def layers_of(acc) -> tuple[str, ...]:
    """The captured layers an accumulator reads (its `layers` attribute, default none)."""
    return tuple(getattr(acc, "layers", ()) or ())


def needs_output(acc) -> bool:
    """Whether the model must run to its end for this accumulator."""
    return bool(getattr(acc, "needs_output", False))


def needs_labels(acc) -> bool:
    """Whether the accumulator reads the batch's labels (default True: a pass whose every
    accumulator says needs_labels = False skips decoding them)."""
    return bool(getattr(acc, "needs_labels", True))


def check_accumulator(name: str, acc) -> None:
    """A clear TypeError when `acc` lacks a method of the protocol."""
    missing = [m for m in ("update", "merge", "state_dict", "load_state_dict", "finalize")
               if not callable(getattr(acc, m, None))]
    if missing:
        raise TypeError(f"accumulator {name!r} ({type(acc).__name__}) lacks {missing}: see "
                        "dissect_kernels.engine.Accumulator")
