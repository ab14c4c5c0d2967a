"""Per-op cases of the GPU check (benchmarks/gpu_check.sh -> suite_ops.py ops): Broden-batch inputs, each op on its
backends, its bandwidth/arithmetic floor and a materialising torch implementation."""
from __future__ import annotations

import math
import pkgutil
import statistics
import time
from dataclasses import dataclass

import torch

FP_OPS_PER_UNIT_PIXEL = 10  # tally: 6 mul + 3 add + 1 compare per unit-pixel (no FMA)


@dataclass
class Sizes:
    """One batch of the Broden-size ResNet-18 layer4 dissection."""
    B: int = 64      # images per batch
    U: int = 512     # units
    h: int = 7       # activation map side
    H: int = 112     # label map side
    L: int = 6       # label layers
    M: int = 2       # image-level labels per image
    C: int = 1197    # concepts
    K: int = 6       # categories
    S: int = 256     # edit: intervention sets x images


BRODEN = Sizes()
SMOKE = Sizes(B=3, U=12, h=3, H=10, L=3, M=2, C=40, K=4, S=6)


@dataclass
class Machine:
    """What the floors are computed from: measured copy bandwidth (bytes read + written per
    second), nominal FP32 lane rate, measured bf16 matrix rate. NaN on the CPU smoke run."""
    name: str
    device: torch.device
    bandwidth: float = math.nan
    fp32_rate: float = math.nan
    bf16_rate: float = math.nan


@dataclass
class Row:
    """One timed variant: seconds per call (median), its floor and the torch baseline's time."""
    op: str
    backend: str
    size: str
    time_s: float | None = None
    floor_s: float = math.nan
    baseline_s: float = math.nan
    note: str = ""


class NotAvailable(Exception):
    """The op's Python API is not in this tree (yet)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median seconds of fn(i) over `reps` calls after `warmup` calls; CUDA events on a GPU
    (fn(i) should rotate among input sets so repeats do not time the L2 cache)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            times.append((start, end))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    sync(device)
    if device.type == "cuda":
        times = [s.elapsed_time(e) / 1e3 for s, e in times]
    return statistics.median(times)


def make_batch(z: Sizes, device: torch.device, seed: int, B: int | None = None):
    """Synthetic Broden-like batch on `device`: ReLU maps with a per-unit offset, blocky label
    layers (8x8-pixel regions at 112, later layers sparser), image-level labels."""
    B = B or z.B
    g = torch.Generator(device=device).manual_seed(seed)
    acts = torch.randn(B, z.U, z.h, z.h, device=device, generator=g)
    acts = torch.relu(acts + 2.0 * torch.randn(B, z.U, 1, 1, device=device, generator=g) - 1.0)
    labels = make_labels(z, device, g, B)
    img = torch.randint(0, z.C, (B, z.M), device=device, generator=g, dtype=torch.int32)
    return acts, labels, img


def make_labels(z: Sizes, device: torch.device, g: torch.Generator, B: int) -> torch.Tensor:
    """int32 [B, L, H, H] blocky concept ids in [0, C), about 10-70 % labelled per layer."""
    cell = max(1, z.H // 14)
    n = -(-z.H // cell)
    low = torch.randint(1, z.C, (B, z.L, n, n), device=device, generator=g, dtype=torch.int32)
    keep = torch.rand(B, z.L, n, n, device=device, generator=g)
    low[keep > torch.linspace(0.9, 0.3, z.L, device=device)[None, :, None, None]] = 0
    return low.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :z.H, :z.H].contiguous()


def category_of(z: Sizes, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, z.K, (z.C,), generator=g).to(device)


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


class Context:
    """Inputs shared by the cases: `nrot` batches to rotate through, the backends to try."""

    def __init__(self, z: Sizes, machine: Machine, backends: dict, reps: int, nrot: int):
        self.z, self.m, self.backends, self.reps = z, machine, backends, reps
        self.device = machine.device
        self.sets = [make_batch(z, self.device, 100 + i) for i in range(nrot)]
        self.cat = category_of(z, self.device)

    def time(self, fn) -> float:
        return median_time(fn, self.device, self.reps)

    def pick(self, i: int):
        return self.sets[i % len(self.sets)]


def case_tally(ctx: Context) -> list[Row]:
    from dissect_kernels import _native
    from dissect_kernels.geometry import Geometry
    from dissect_kernels.ops.tally import TallyResult, tally_into
    from dissect_kernels.reference.tally import concept_planes, upsample

    z, dev = ctx.z, ctx.device
    ytab, xtab = (t.to(dev) for t in Geometry.named("half-pixel").tables((z.h, z.h), (z.H, z.H)))
    acts0 = ctx.sets[0][0]
    thr = torch.quantile(acts0.transpose(0, 1).reshape(z.U, -1), 0.99, dim=1).contiguous()
    size = f"B={z.B} U={z.U} {z.h}²→{z.H}² L={z.L} M={z.M} C={z.C}"
    floor = max(z.B * z.U * z.H * z.H * FP_OPS_PER_UNIT_PIXEL / ctx.m.fp32_rate,
                nbytes(*ctx.sets[0]) / ctx.m.bandwidth)
    nb = min(z.B, 8)  # materialising baseline on a sub-batch (memory), scaled to B
    a_b, l_b, i_b = (t[:nb] for t in ctx.sets[0])

    def baseline(_):
        mask = (upsample(a_b, ytab, xtab) > thr[None, :, None, None]).reshape(nb, z.U, -1).float()
        planes = concept_planes(l_b, i_b, z.C, False).float()
        return torch.einsum("bup,bcp->uc", mask, planes)

    base = ctx.time(baseline) * z.B / nb
    rows = []
    for b in ctx.backends["tally"]:
        if not _native.available(b, dev):
            rows.append(Row("tally", b, size, note="backend not available here"))
            continue
        out = TallyResult.empty(z.B, z.U, z.C, None, dev)

        def run(i, b=b, out=out):
            acts, labels, img = ctx.pick(i)
            tally_into(b, acts, thr, labels, img, ytab, xtab, z.C, False, None, None, out)

        t = ctx.time(run)
        rows.append(Row("tally", b, size, t, floor, base))
    return rows


def case_label_stats(ctx: Context) -> list[Row]:
    import dissect_kernels as dk

    z = ctx.z
    size = f"B={z.B} L={z.L} {z.H}² M={z.M} C={z.C} K={z.K}"
    floor = nbytes(*ctx.sets[0][1:]) / ctx.m.bandwidth
    nb = min(z.B, 2)
    l_b, i_b = ctx.sets[0][1][:nb].long(), ctx.sets[0][2][:nb].long()

    def baseline(_):  # one-hot [b, L, H, W, C] -> any over layers -> sum over pixels
        px = torch.nn.functional.one_hot(l_b, z.C).amax(1).sum((1, 2))
        return px + torch.nn.functional.one_hot(i_b, z.C).amax(1) * z.H * z.H

    base = ctx.time(baseline) * z.B / nb
    rows = []
    for b in ctx.backends["label_stats"]:
        t = ctx.time(lambda i: dk.label_stats(ctx.pick(i)[1], ctx.pick(i)[2], num_concepts=z.C,
                                              category_of=ctx.cat, num_categories=z.K, backend=b))
        rows.append(Row("label_stats", b, size, t, floor, base))
    return rows


def case_segment_stats(ctx: Context) -> list[Row]:
    import dissect_kernels as dk

    z = ctx.z
    segs = [s[1][:, 0].contiguous() for s in ctx.sets]  # [B, H, W] class maps
    size = f"B={z.B} {z.H}² classes={z.C}"
    floor = nbytes(segs[0]) / ctx.m.bandwidth
    nb = min(z.B, 4)
    s_b = segs[0][:nb].long()
    base = ctx.time(lambda _: torch.nn.functional.one_hot(s_b, z.C).sum((1, 2))) * z.B / nb
    rows = []
    for b in ctx.backends["segment_stats"]:
        t = ctx.time(lambda i: dk.segment_stats(segs[i % len(segs)], z.C, backend=b))
        rows.append(Row("segment_stats", b, size, t, floor, base))
    return rows


def case_edit(ctx: Context) -> list[Row]:
    import dissect_kernels as dk
    from dissect_kernels import _native

    z, dev = ctx.z, ctx.device
    reps = -(-z.S // z.B)
    xs = [s[0].repeat(reps, 1, 1, 1)[:z.S].contiguous() for s in ctx.sets]
    alpha = torch.zeros(z.U, device=dev)
    alpha[::7] = 1.0
    size = f"x [{z.S}, {z.U}, {z.h}, {z.h}] fp32, per-unit alpha"
    floor = 2 * nbytes(xs[0]) / ctx.m.bandwidth
    a4 = alpha[None, :, None, None]
    base = ctx.time(lambda i: xs[i % len(xs)] * (1 - a4) + 0.0 * a4)
    rows = []
    for b in ctx.backends["edit"]:
        if b != "cpu" and not _native.available(b, dev):
            rows.append(Row("edit", b, size, note="backend not available here"))
            continue
        t = ctx.time(lambda i: dk.edit(xs[i % len(xs)], alpha, 0.0, backend=b))
        rows.append(Row("edit", b, size, t, floor, base))
    return rows


def case_quantile(ctx: Context) -> list[Row]:
    import dissect_kernels as dk
    from dissect_kernels import _native

    if not hasattr(dk, "QuantileSketch"):
        raise NotAvailable("dk.QuantileSketch")
    from dissect_kernels.ops import quantile as op

    z = ctx.z
    size = f"update [{z.B}, {z.U}, {z.h}, {z.h}] fp32, exact mode q >= 0.99"
    floor = nbytes(ctx.sets[0][0]) / ctx.m.bandwidth
    # Materialising baseline: keep the batch as [U, N] and sort every unit's values.
    base = ctx.time(lambda i: torch.sort(ctx.pick(i)[0].transpose(0, 1).reshape(z.U, -1), dim=1))
    rows = []
    for b in ctx.backends["quantile"]:
        if b not in op.BACKENDS or not _native.available(b, ctx.device):
            rows.append(Row("quantile", b, size, note="backend not available here"))
            continue
        calls = ctx.reps + 3  # median_time's warm-up + repeats
        sketch = dk.QuantileSketch(z.U, mode="exact", min_quantile=0.99, backend=b, device=ctx.device,
                                   expected_count=calls * z.B * z.h * z.h)
        t = ctx.time(lambda i: sketch.update(ctx.pick(i)[0]))
        sketch.quantile(0.99)  # the state is consistent after the timed updates
        rows.append(Row("quantile", b, size, t, floor, base))
    return rows


def case_upsample(ctx: Context) -> list[Row]:
    """The upsampled maps of one batch materialised (fp32 [B, U, H, H]) into a reused buffer:
    floor = writing the output once (+ reading the small maps) at the copy bandwidth."""
    import torch.nn.functional as F

    import dissect_kernels as dk
    from dissect_kernels import _native

    z, dev = ctx.z, ctx.device
    B = min(z.B, 16)  # 16 x 512 x 112^2 fp32 = 411 MB per call
    acts = [s[0][:B] for s in ctx.sets]
    out = torch.empty(B, z.U, z.H, z.H, device=dev)
    size = f"B={B} U={z.U} {z.h}²→{z.H}² fp32, out= reused"
    floor = (nbytes(out) + nbytes(acts[0])) / ctx.m.bandwidth  # bytes moved / (read + write) bandwidth
    base = ctx.time(lambda i: F.interpolate(acts[i % len(acts)], (z.H, z.H), mode="bilinear"))
    rows = []
    for b in ctx.backends["upsample"]:
        if not _native.available(b, dev):
            rows.append(Row("upsample", b, size, note="backend not available here"))
            continue
        t = ctx.time(lambda i, b=b: dk.upsample(acts[i % len(acts)], z.H, out=out, backend=b))
        rows.append(Row("upsample", b, size, t, floor, base, note="baseline: F.interpolate (fresh output)"))
    return rows


def case_topk(ctx: Context) -> list[Row]:
    import dissect_kernels as dk

    if not hasattr(dk, "TopK"):
        raise NotAvailable("dk.TopK")
    z, dev, k = ctx.z, ctx.device, 16
    scores = [s[0].amax((2, 3)).contiguous() for s in ctx.sets]  # [B, U]
    idx = torch.arange(z.B, device=dev)
    size = f"update [{z.B}, {z.U}] k={k}"
    floor = nbytes(scores[0]) / ctx.m.bandwidth
    kept = torch.randn(k, z.U, device=dev)
    base = ctx.time(lambda i: torch.cat([kept, scores[i % len(scores)]]).topk(k, dim=0))
    top = dk.TopK(z.U, k, device=dev)
    t = ctx.time(lambda i: top.update(scores[i % len(scores)], idx + i * z.B))
    return [Row("topk", "auto", size, t, floor, base)]


CASES = {"tally": case_tally, "label_stats": case_label_stats, "segment_stats": case_segment_stats,
         "edit": case_edit, "quantile": case_quantile, "topk": case_topk, "upsample": case_upsample}
COVERED_ELSEWHERE = {"iou_tally": "timed inside the end-to-end pass (tally + label_stats)"}


def discover() -> list[str]:
    """Op names: the public modules of dissect_kernels.ops, plus the streaming statistics."""
    import dissect_kernels.ops as ops

    names = [m.name for m in pkgutil.iter_modules(ops.__path__) if not m.name.startswith("_")]
    return sorted(set(names) | set(CASES))


def _case_or_missing(name: str, ctx: Context) -> list[Row]:
    try:
        return CASES[name](ctx)
    except NotAvailable as e:
        return [Row(name, "-", "-", note=f"not available ({e} missing)")]


def run_all(ctx: Context, guard=None) -> list[Row]:
    """Every discovered op: its rows, or one row saying why it was not timed. `guard(what, fn,
    *a)` (suite_ops.part_ops's guard) turns an op's crash into a reported failure."""
    rows = []
    for name in discover():
        if name in COVERED_ELSEWHERE:
            rows.append(Row(name, "-", "-", note=COVERED_ELSEWHERE[name]))
        elif name not in CASES:
            rows.append(Row(name, "-", "-", note="no benchmark case in benchmarks/suite_cases.py"))
        else:
            got = guard(name, _case_or_missing, name, ctx) if guard else _case_or_missing(name, ctx)
            rows += got if got is not None else [Row(name, "-", "-", note="FAILED (see above)")]
    return rows
