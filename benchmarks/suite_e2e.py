"""End-to-end part of the GPU suite: a Broden-size dissection of ResNet-18 layer4 on synthetic
data generated on the device, as the two streaming passes (quantiles, then IoU tally), with
the model forward, data generation and statistics timed separately."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from suite_cases import Sizes, make_labels, sync


@dataclass
class E2EConfig:
    images: int = 63305
    batch: int = 256
    image_size: int = 224
    width: int = 64          # ResNet-18 width (64 = standard: layer4 has 512 units)
    amp: str = "bf16"        # autocast dtype of the forward pass on CUDA ("none" = fp32)
    quantile: float = 0.995
    labels: Sizes = field(default_factory=Sizes)  # H, L, M, C, K used


@dataclass
class E2EResult:
    """Seconds per phase summed over both passes; wall = host time of both passes."""
    wall: float = 0.0
    generate: float = 0.0
    forward: float = 0.0
    quantile: float = 0.0
    tally: float = 0.0
    forward_flops: float = 0.0
    units: int = 0
    notes: list = field(default_factory=list)

    @property
    def stats(self) -> float:
        return self.quantile + self.tally


class _Phases:
    """Accumulates per-phase device time: CUDA events on a GPU (read once at the end), else
    the host clock with the work done synchronously."""

    def __init__(self, device: torch.device):
        self.device, self.marks, self.host = device, [], {}

    def mark(self, phase: str | None):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append((phase, e))
        else:
            self.marks.append((phase, time.perf_counter()))

    def totals(self) -> dict:
        sync(self.device)
        out = {}
        for (phase, a), (_, b) in zip(self.marks, self.marks[1:]):
            if phase is None:
                continue
            dt = a.elapsed_time(b) / 1e3 if self.device.type == "cuda" else b - a
            out[phase] = out.get(phase, 0.0) + dt
        return out


def run(cfg: E2EConfig, device: torch.device) -> E2EResult:
    """Pass 1: forward + QuantileSketch.update; thresholds = quantile(cfg.quantile).
    Pass 2: forward + IoUTally.update (tally + label_stats). Same images in both passes."""
    import dissect_kernels as dk
    from dissect_kernels.models.resnet import conv_flops, resnet18

    z, res = cfg.labels, E2EResult()
    model = resnet18(width=cfg.width).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp == "bf16"
           else contextlib.nullcontext())
    U = res.units = 8 * cfg.width
    res.forward_flops = 2 * conv_flops(model, torch.zeros(1, 3, cfg.image_size, cfg.image_size,
                                                          device=device), model.features) * cfg.images
    cat = torch.randint(0, z.K, (z.C,), generator=torch.Generator().manual_seed(5))
    nbatch = -(-cfg.images // cfg.batch)

    def images(i: int):
        B = min(cfg.batch, cfg.images - i * cfg.batch)
        g = torch.Generator(device=device).manual_seed(10_000 + i)
        x = torch.randn(B, 3, cfg.image_size, cfg.image_size, device=device, generator=g)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x, g

    def forward(x):
        with torch.no_grad(), amp:
            return model.features(x)

    # warm-up outside the timed passes: cuDNN autotuning for the full and the last batch shape
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for i in sorted({0, nbatch - 1}):
        forward(images(i)[0])
    sync(device)

    have_sketch = hasattr(dk, "QuantileSketch")
    phases = _Phases(device)
    t0 = time.perf_counter()
    if have_sketch:  # exact mode: every value that can still be in the top tail is kept
        side = -(-cfg.image_size // 32)
        sketch = dk.QuantileSketch(U, mode="exact", min_quantile=min(0.99, cfg.quantile), device=device,
                                   expected_count=cfg.images * side * side)
    else:
        res.notes.append("dk.QuantileSketch not available: pass 1 ran the forward only; "
                         "thresholds from torch.quantile of the first batch")
    thr = None
    for i in range(nbatch):
        phases.mark("generate")
        x, _ = images(i)
        phases.mark("forward")
        acts = forward(x)
        phases.mark("quantile")
        if have_sketch:
            sketch.update(acts.float())
        elif thr is None:
            thr = torch.quantile(acts.float().transpose(0, 1).reshape(U, -1)[:, :1 << 14],
                                 cfg.quantile, dim=1)
    phases.mark(None)
    if have_sketch:
        thr = sketch.quantile(cfg.quantile).float()
    tally = dk.IoUTally(U, z.C, cat, num_categories=z.K, device=device)
    for i in range(nbatch):
        phases.mark("generate")
        x, g = images(i)
        labels = make_labels(z, device, g, x.shape[0])
        img = torch.randint(0, z.C, (x.shape[0], z.M), device=device, generator=g, dtype=torch.int32)
        phases.mark("forward")
        acts = forward(x)
        phases.mark("tally")
        tally.update(acts, thr, labels, img)
    phases.mark(None)
    label, iou = tally.best()
    sync(device)
    res.wall = time.perf_counter() - t0
    for k, v in phases.totals().items():
        setattr(res, k, v)
    if not torch.isfinite(iou).all() or label.shape[0] != U:
        raise AssertionError("end-to-end: IoUTally.best() returned non-finite IoUs")
    return res


def floor_s(res: E2EResult, cfg: E2EConfig, fwd_rate: float, tally_floor_per_image: float,
            quantile_floor_per_image: float) -> float:
    """Arithmetic floor of both passes: 2 forwards at the measured matrix rate plus the
    statistics' floors (tally, quantile reading each activation once)."""
    if math.isnan(fwd_rate):
        return math.nan
    return 2 * res.forward_flops / fwd_rate + cfg.images * (tally_floor_per_image + quantile_floor_per_image)
