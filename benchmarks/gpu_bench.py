"""Broden-size tally on a GPU: ResNet-18 layer4 (63,305 images x 512 units, 7x7 -> 112x112,
up to 6 label layers, 1197 concepts) through the cuda and triton kernels, timed with CUDA
events against the arithmetic/bandwidth floor and a materialising torch baseline.

    python benchmarks/gpu_bench.py [--images N] [--record]   # on the lent GPU
    python benchmarks/gpu_bench.py --smoke                   # tiny, CPU: interpreter + cpu
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
FP_OPS_PER_UNIT_PIXEL = 10  # 6 mul + 3 add + 1 compare, no FMA


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (Triton interpreter + cpu)")
    p.add_argument("--images", type=int, default=63305)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--src", type=int, default=7, help="source map side (layer4: 7)")
    p.add_argument("--dst", type=int, default=112, help="label map side (Broden: 112)")
    p.add_argument("--layers", type=int, default=6, help="label layers L")
    p.add_argument("--image-labels", type=int, default=2, help="image-level labels M per image")
    p.add_argument("--concepts", type=int, default=1197)
    p.add_argument("--quantile", type=float, default=0.99, help="per-unit threshold quantile")
    p.add_argument("--baseline-images", type=int, default=16, help="subset for the torch baseline")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--clock-ghz", type=float, default=1.98, help="nominal SM clock for the floor")
    p.add_argument("--triton-blocks", default="16x128,32x128",
                   help="Triton BLOCK_UxBLOCK_P configurations to time (first = the default)")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.smoke:
        a.images, a.batch, a.units, a.src, a.dst, a.layers = 3, 3, 12, 3, 10, 3
        a.concepts, a.baseline_images, a.image_labels = 40, 3, 2
        a.triton_blocks = "8x32"
    return a


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    sys.path.insert(0, str(ROOT))
    import torch

    from dissect_kernels import _native
    from dissect_kernels.geometry import Geometry
    from dissect_kernels.ops.tally import TallyResult, tally_into
    from dissect_kernels.reference.tally import concept_planes, upsample

    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    backends = ["cpu", "triton"] if args.smoke else ["cuda", "triton"]
    backends = [b for b in backends if _native.available(b, device)]
    blocks = {}  # "triton 16x128" -> dict(block_u=16, block_p=128)
    if "triton" in backends:
        backends.remove("triton")
        for cfg in args.triton_blocks.split(","):
            bu, bp = (int(v) for v in cfg.lower().split("x"))
            blocks[f"triton {bu}x{bp}"] = dict(block_u=bu, block_p=bp)
            backends.append(f"triton {bu}x{bp}")
    dtype = getattr(torch, args.dtype)
    U, h, H, L, M, C = args.units, args.src, args.dst, args.layers, args.image_labels, args.concepts
    ytab, xtab = (t.to(device) for t in Geometry.named("half-pixel").tables((h, h), (H, H)))

    def generate(i: int, B: int):
        """Synthetic batch on the device: ReLU maps with a smooth blob per unit, blocky label
        layers (8x8 regions, later layers sparser), a few image-level labels."""
        g = torch.Generator(device=device).manual_seed(1234 + i)
        acts = torch.randn(B, U, h, h, device=device, generator=g)
        acts = torch.relu(acts + 2.0 * torch.randn(B, U, 1, 1, device=device, generator=g) - 1.0)
        cell = max(1, H // 14)
        low = torch.randint(1, C, (B, L, -(-H // cell), -(-H // cell)), device=device, generator=g,
                            dtype=torch.int32)
        keep = torch.rand(B, L, low.shape[2], low.shape[3], device=device, generator=g)
        low[keep > torch.linspace(0.9, 0.3, L, device=device)[None, :, None, None]] = 0
        labels = low.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :H, :H].contiguous()
        img = torch.randint(0, C, (B, M), device=device, generator=g, dtype=torch.int32) if M else None
        return acts.to(dtype), labels, img

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Thresholds: the per-unit quantile of the upsampled values on a calibration batch.
    cal, _, _ = generate(-1, min(args.batch, 16))
    up = upsample(cal, ytab, xtab).transpose(0, 1).reshape(U, -1)
    thr = torch.stack([torch.quantile(r.double()[::max(1, r.numel() // 100000)], args.quantile)
                       for r in up]).float().contiguous()
    del up, cal

    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None
    results = {b: TallyResult.empty(args.batch, U, C, None, device) for b in backends}
    elapsed = {b: 0.0 for b in backends}
    pending = {b: [] for b in backends}

    def call(name: str, acts, labels, img, out):
        if name in blocks:
            from dissect_kernels.triton.tally import tally_into as triton_into
            triton_into(acts, thr, labels, img, ytab, xtab, C, False, None, None, out, **blocks[name])
        else:
            tally_into(name, acts, thr, labels, img, ytab, xtab, C, False, None, None, out)

    # Warm-up (Triton compiles here), then the timed pass over every image.
    acts, labels, img = generate(0, args.batch)
    for b in backends:
        call(b, acts, labels, img, TallyResult.empty(args.batch, U, C, None, device))
    sync()
    active = {b: 0 for b in backends}
    n_done = 0
    t_wall = time.perf_counter()
    for i in range(-(-args.images // args.batch)):
        B = min(args.batch, args.images - n_done)
        acts, labels, img = generate(i, B)
        for b in backends:
            out = results[b] if B == args.batch else TallyResult(
                results[b].intersection, results[b].active[:B], results[b].max[:B])
            if device.type == "cuda":
                flush.zero_()  # labels just generated would otherwise sit in L2
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call(b, acts, labels, img, out)
                end.record()
                pending[b].append((start, end))
            else:
                t0 = time.perf_counter()
                call(b, acts, labels, img, out)
                elapsed[b] += time.perf_counter() - t0
            active[b] += out.active.sum()
        n_done += B
    sync()
    t_wall = time.perf_counter() - t_wall
    for b in backends:
        elapsed[b] += sum(s.elapsed_time(e) for s, e in pending[b]) / 1e3
        active[b] = int(active[b])

    # Every backend saw the same batches: counts must agree exactly.
    first = backends[0]
    for b in backends[1:]:
        assert torch.equal(results[b].intersection, results[first].intersection), f"{b} != {first}"
        assert active[b] == active[first], f"{b} active {active[b]} != {active[first]}"

    # Materialising torch baseline on a subset, extrapolated (and checked on that subset).
    nb = min(args.baseline_images, args.images)
    acts, labels, img = generate(10_000, nb)

    def baseline():
        upv = upsample(acts, ytab, xtab)
        mask = (upv > thr[None, :, None, None]).reshape(nb, U, -1).float()
        planes = concept_planes(labels, img, C, False).float()
        return torch.einsum("bup,bcp->uc", mask, planes).round().long()

    inter = baseline()  # warm-up
    check = TallyResult.empty(nb, U, C, None, device)
    call(first, acts, labels, img, check)
    assert torch.equal(inter, check.intersection), "torch baseline disagrees with the kernels"
    sync()
    t0 = time.perf_counter()
    baseline()
    sync()
    base_s = (time.perf_counter() - t0) * args.images / nb

    # Floors: arithmetic (unit-pixels x ops / FP32 lane rate) and bytes (inputs read once).
    unit_px = args.images * U * H * H
    acts_bytes = args.images * U * h * h * torch.finfo(dtype).bits // 8
    label_bytes = args.images * (L * H * H + M) * 4
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        lanes = props.multi_processor_count * 128
        rate = lanes * args.clock_ghz * 1e9
        big = torch.empty(1 << 30, dtype=torch.uint8, device=device)
        other = torch.empty_like(big)
        other.copy_(big)
        sync()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(5):
            other.copy_(big)
        e.record()
        sync()
        bandwidth = 5 * 2 * big.numel() / (s.elapsed_time(e) / 1e3)
        del big, other
    else:
        name, rate, bandwidth = "CPU (smoke)", float("nan"), float("nan")
    floor_arith = unit_px * FP_OPS_PER_UNIT_PIXEL / rate
    floor_bytes = (acts_bytes + label_bytes) / bandwidth
    floor = max(floor_arith, floor_bytes)

    date = datetime.date.today().isoformat()
    lines = [
        f"### tally, {name}, {date}",
        "",
        f"{args.images} images x {U} units, {h}x{h} -> {H}x{H}, L={L}, M={M}, C={C}, acts {args.dtype}, "
        f"batch {args.batch}; {unit_px:.3g} unit-pixels, active fraction "
        f"{active[first] / unit_px:.4f}. Floors: arithmetic {floor_arith:.3g} s "
        f"({FP_OPS_PER_UNIT_PIXEL} FP32 ops/unit-pixel at {rate / 1e12:.3g} T lane-ops/s, "
        f"nominal {args.clock_ghz} GHz), bytes {floor_bytes:.3g} s "
        f"({(acts_bytes + label_bytes) / 1e9:.3g} GB at measured {bandwidth / 1e12:.3g} TB/s copy).",
        "",
        "| backend | time (s) | unit-pixels/s | x floor | speed-up vs torch |",
        "|---|---|---|---|---|",
    ]
    for b in backends:
        lines.append(f"| {b} | {elapsed[b]:.3f} | {unit_px / elapsed[b]:.3g} | {elapsed[b] / floor:.2f} | "
                     f"{base_s / elapsed[b]:.1f} |")
    lines.append(f"| torch materialising ({nb} images, extrapolated) | {base_s:.3f} | "
                 f"{unit_px / base_s:.3g} | {base_s / floor:.2f} | 1.0 |")
    lines.append("")
    lines.append(f"wall time of the timed loop incl. generation: {t_wall:.1f} s")
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(table)
    return 0


def record(table: str, heading: str = "## tally (GPU)") -> None:
    """Insert the table at the end of the `heading` section of RESULTS.md (created if absent)."""
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    if heading not in lines:
        lines += ["", heading]
    end = lines.index(heading) + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    head, rest = lines[:end], lines[end:]
    while head[-1] == "":
        head.pop()
    while rest and rest[0] == "":
        rest.pop(0)
    lines = head + ["", *table.splitlines(), ""] + rest
    RESULTS.write_text("\n".join(lines).strip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
