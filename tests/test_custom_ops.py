"""The ops as torch.library custom ops (torch.ops.dissect_kernels.*): schemas and fake kernels
pass torch.library.opcheck; torch.compile(fullgraph=True) of a model plus its dissection
statistics equals eager; torch.export captures it with the ops as single nodes."""
from __future__ import annotations

import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.geometry import Geometry

OPS = ("tally", "label_stats", "upsample", "upsample_out", "edit")
C, K = 6, 3


class ConvDissect(torch.nn.Module):
    """A small conv layer and the statistics of its output for one batch. Weights, bias and
    images are small integers, so the convolution is exact in fp32 in any summation order
    (inductor's kernels included) and compiled and eager activations are identical."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randint(-2, 3, self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randint(-4, 5, (8,), generator=g) * 0.5)

    def forward(self, images, thresholds, labels, category_of, alpha):
        acts = torch.relu(self.conv(images))
        counts = dk.tally(acts, thresholds, labels, num_concepts=C, category_of=category_of,
                          num_categories=K, geometry="zero-pad")
        truth = dk.label_stats(labels, num_concepts=C, category_of=category_of, num_categories=K)
        masks = dk.upsample(acts, labels.shape[-2:], convention="dissect") > thresholds[:, None, None]
        ablated = dk.edit(acts, alpha, 0.0)
        return (counts.intersection, counts.active, counts.max, counts.touched, truth.pixels,
                truth.present, masks, ablated)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-3, 4, (2, 3, 12, 10), generator=g).float()
    labels = torch.randint(0, C, (2, 1, 24, 20), generator=g)
    thresholds = torch.randint(0, 12, (8,), generator=g) * 0.75  # ties with the maps' values
    category_of = torch.randint(0, K, (C,), generator=g)
    alpha = (torch.rand(8, generator=g) > 0.5).float()
    return images, thresholds, labels, category_of, alpha


def assert_equal(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_ops_are_registered_with_schemas():
    for name in OPS:
        assert hasattr(torch.ops.dissect_kernels, name), name
    schema = str(torch.ops.dissect_kernels.upsample_out.default._schema)
    assert "Tensor(a!) out" in schema  # the only op that writes an argument


def _op_cases():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(2, 4, 3, 5, generator=g)
    labels = torch.randint(0, C, (2, 2, 7, 9), generator=g)
    cat = torch.randint(0, K, (C,), generator=g)
    maps = tuple(Geometry.named("half-pixel").affine_maps((3, 5), (7, 9)))
    return {
        "tally": (acts, torch.rand(4, generator=g), labels, None, cat, C, K, False, *maps, "auto"),
        "label_stats": (labels, torch.randint(0, C, (2, 2), generator=g), cat, C, K, True, "auto"),
        "upsample": (acts, 7, 9, *maps, "auto"),
        "upsample_out": (acts, torch.empty(2, 4, 7, 9), *maps, "auto"),
        "edit": (acts, torch.rand(1, 4, 1, 1, generator=g), torch.tensor(2.0), "auto"),
    }


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    """Schema, fake kernel against the real one, and AOT dispatch with dynamic shapes."""
    op = getattr(torch.ops.dissect_kernels, name).default
    torch.library.opcheck(op, _op_cases()[name],
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_equals_eager(backend):
    """aot_eager: dynamo capture, fake kernels, functionalisation; inductor (the default
    backend, ~10-30 s of compiling here) also generates code for the conv around the ops."""
    torch._dynamo.reset()
    model = ConvDissect().eval()
    args = inputs()
    with torch.no_grad():
        want = model(*args)
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        assert_equal(compiled(*args), want)
        assert_equal(compiled(*inputs(1)), model(*inputs(1)))  # same graph, new data
    assert int(want[1].sum()) > 0 and int(want[0].sum()) > 0  # the case really counts something


def test_export_captures_the_ops():
    """(Frozen weights: with activations that require grad, dk.edit runs its differentiable
    torch expression instead of the op.)"""
    model = ConvDissect().eval().requires_grad_(False)
    args = inputs()
    exported = torch.export.export(model, args)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    for name in ("tally", "label_stats", "upsample", "edit"):
        assert f"dissect_kernels.{name}.default" in targets, (name, targets)
    with torch.no_grad():
        assert_equal(exported.module()(*args), model(*args))


def test_validation_still_raises_from_compiled_code():
    """Value checks run inside the op, so compiled code reports bad labels as eager does."""
    torch._dynamo.reset()
    model = ConvDissect().eval()
    images, thresholds, labels, category_of, alpha = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), pytest.raises(ValueError, match=r"labels holds ids in \[0, 9\]"):
        compiled(images, thresholds, labels.clamp_max(C - 1).index_fill(3, torch.tensor([0]), 9),
                 category_of, alpha)


def test_num_categories_is_needed_under_compile():
    torch._dynamo.reset()

    def f(acts, labels, category_of):
        return dk.tally(acts, torch.zeros(acts.shape[1]), labels, num_concepts=C,
                        category_of=category_of).touched

    acts, labels = torch.rand(1, 2, 3, 3), torch.randint(0, C, (1, 5, 5))
    cat = torch.randint(0, K, (C,))
    assert f(acts, labels, cat).shape[-1] == int(cat.max()) + 1  # eager infers it
    with pytest.raises(Exception, match="pass num_categories with category_of"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(acts, labels, cat)
