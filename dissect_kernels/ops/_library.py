"""The torch.library namespace `dissect_kernels`: each op (tally, label_stats, upsample, edit)
registers a functional schema with one CompositeExplicitAutograd implementation (it picks the
backend at run time from the tensors' device) and a fake (meta) kernel that gives output
shapes. torch.compile(fullgraph=True) and torch.export then see torch.ops.dissect_kernels.<op>
as one opaque node, and the public wrappers (dk.tally, ...) call these ops, so a model and its
dissection statistics compile and export together.

The low-level Library API is used rather than torch.library.custom_op: custom_op guards every
call with torch.compile's disable, which imports torch._dynamo on first use (~1.5 s per
process); here a call costs a few microseconds and importing costs milliseconds.

Still to come: the quantile sketch's update (after QuantileSketch is split into ExactQuantile /
TailSketch) will register here the same way, as a functional op returning the new state."""
from __future__ import annotations

import torch

NAMESPACE = "dissect_kernels"
LIB = torch.library.Library(NAMESPACE, "DEF")


def define(schema: str, impl, fake) -> None:
    """Register `schema` (e.g. "upsample(Tensor acts, int height) -> Tensor") with its
    implementation for every device and its fake kernel."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIB)
