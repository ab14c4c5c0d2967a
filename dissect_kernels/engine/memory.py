"""What a run's accumulators will hold, estimated before the first pass from one probe sample:
per layer the quantile state (exact: the kept tail of every unit; sketch: a fixed summary per
unit), the IoU counts (int64 [U, C], and about six times that while the result is built) and the
activation cache. A budget chooses exact quantiles only where they fit, and refuses up front a
run that cannot fit at all, instead of failing hours later."""
from __future__ import annotations

import torch

from dissect_kernels.engine.step import capture, check_map

RESULT_FACTOR = 6        # peak while the IoU result is built, in units of U x C x 8 bytes (bench_scale)


def probe_shapes(model, source, views, device) -> dict[str, tuple[int, int, int, int]]:
    """{view: (units, height, width, bytes per value)} from one forward pass of one sample."""
    batch = source.probe()
    inputs = batch.inputs.to(device)
    inputs = batch.prepare(inputs) if batch.prepare is not None else inputs
    with torch.inference_mode():
        acts, _ = capture(model, inputs, views, run_to_end=False, check_finite=False)
    for name, a in acts.items():
        check_map(name, a)                 # finiteness is checked on every batch of the passes
    return {k: (a.shape[1], a.shape[2], a.shape[3], a.element_size()) for k, a in acts.items()}


def exact_bytes(units: int, count: int, min_quantile: float) -> int:
    """Bytes of an exact quantile state for `count` values per unit (the C++ core's sizing)."""
    from dissect_kernels.stats.quantile import core
    cfg = dict(num_units=units, min_quantile=float(min_quantile), expected_count=int(count), slack=-1,
               max_bytes=1 << 62)
    mod = core()
    return int(mod.exact_state_bytes(units, mod.exact_capacity(cfg, int(count))))


def sketch_bytes(units: int, min_quantile: float) -> int:
    """Bytes of a TailSketch state (fixed per unit, whatever the count)."""
    from dissect_kernels.stats.tail_sketch import TailSketch
    one = TailSketch(1, min_quantile=min_quantile)
    one.update(torch.zeros(1, 1))
    return units * sum(t.numel() * t.element_size() for t in one.state_dict().values())


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.0f} MiB"
