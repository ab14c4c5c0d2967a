"""Benchmark parts of benchmarks/gpu_check.sh, one per call so each gets its own time budget:

    python benchmarks/suite_ops.py machine --out-dir $OUT   # copy bandwidth, bf16 matmul rate
    python benchmarks/suite_ops.py ops --out-dir $OUT       # every op on one Broden batch vs floors
    python benchmarks/suite_ops.py e2e --out-dir $OUT       # Broden-size two-pass dissection
    ... --dry-run                                           # tiny sizes on CPU (CI)

Each part appends its markdown to <out-dir>/bench.md and one JSON line per result to
<out-dir>/bench.jsonl as soon as it has it (a part cut short keeps what it measured); later
parts read the machine line that `machine` wrote (or measure it again).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TARGETS = {"e2e_s": 30.0, "stats_fraction": 0.10}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["machine", "ops", "e2e"])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (cpu + Triton interpreter)")
    p.add_argument("--images", type=int, default=63305, help="end-to-end images")
    p.add_argument("--e2e-batch", type=int, default=256)
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"], help="forward under bf16 autocast or fp32")
    p.add_argument("--reps", type=int, default=20, help="timed repeats per op (median)")
    p.add_argument("--clock-ghz", type=float, default=1.98, help="nominal SM clock (FP32 lane floor)")
    a = p.parse_args(argv)
    if a.dry_run:
        a.images, a.e2e_batch, a.reps = 6, 3, 2
    return a


class Output:
    """Appends markdown to bench.md and JSON lines to bench.jsonl, flushing each time."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.md, self.jsonl = out_dir / "bench.md", out_dir / "bench.jsonl"

    def text(self, *lines: str) -> None:
        print("\n".join(lines), flush=True)
        with self.md.open("a") as f:
            f.write("\n".join(lines) + "\n")

    def record(self, **fields) -> None:
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(clean, default=str, allow_nan=False) + "\n")

    def machine(self):
        """The Machine the `machine` part recorded, or None."""
        if not self.jsonl.exists():
            return None
        lines = [json.loads(x) for x in self.jsonl.read_text().splitlines() if x.strip()]
        found = [x for x in lines if x.get("part") == "machine"]
        return found[-1] if found else None


def fmt(x, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}g}"


def measure_machine(device, clock_ghz: float):
    """Copy bandwidth (bytes read + written per second) and bf16 matmul rate measured here;
    FP32 lane rate from SMs x 128 x the nominal clock. NaN on a CPU dry run."""
    import torch

    from suite_cases import Machine, median_time

    if device.type != "cuda":
        return Machine("CPU (dry run)", device)
    props = torch.cuda.get_device_properties(device)
    src = torch.randn(1 << 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    copy = median_time(lambda i: dst.copy_(src), device, 10)
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    mm = median_time(lambda i: a @ b, device, 10)
    del src, dst, a, b
    return Machine(props.name, device, bandwidth=2 * (1 << 30) / copy,
                   fp32_rate=props.multi_processor_count * 128 * clock_ghz * 1e9, bf16_rate=2 * 8192 ** 3 / mm)


def machine_for(out: Output, device, args):
    """The recorded Machine when the `machine` part ran on this device, else measured now."""
    from suite_cases import Machine

    rec = out.machine()
    if rec is not None and rec["device"] == device.type:
        nan = lambda k: math.nan if rec.get(k) is None else rec[k]  # noqa: E731
        return Machine(rec["name"], device, nan("bandwidth"), nan("fp32_rate"), nan("bf16_rate"))
    return measure_machine(device, args.clock_ghz)


def part_machine(out: Output, device, args) -> int:
    import torch

    m = measure_machine(device, args.clock_ghz)
    out.record(part="machine", device=device.type, name=m.name, bandwidth=m.bandwidth,
               fp32_rate=m.fp32_rate, bf16_rate=m.bf16_rate, torch=torch.__version__,
               cuda=torch.version.cuda, date=datetime.date.today().isoformat())
    out.text(f"### {m.name}, {datetime.date.today().isoformat()}", "",
             f"torch {torch.__version__}{', CUDA ' + torch.version.cuda if torch.version.cuda else ''}. "
             f"Measured here: copy {fmt(m.bandwidth, 1e-12)} TB/s (read + write), bf16 matmul "
             f"{fmt(m.bf16_rate, 1e-12)} TFLOP/s; FP32 lane rate {fmt(m.fp32_rate, 1e-12)} T/s at "
             f"nominal {args.clock_ghz} GHz.", "")
    return 0


def part_ops(out: Output, device, args) -> int:
    """Every op of dissect_kernels.ops on one Broden batch: time, floor, materialising torch."""
    import suite_cases as cases

    dry = device.type != "cuda"
    machine = machine_for(out, device, args)
    z = cases.SMOKE if dry else cases.BRODEN
    backends = {"tally": ["cpu", "triton"] if dry else ["cuda", "triton"],
                "label_stats": ["torch"], "segment_stats": ["torch"],
                "edit": ["cpu", "triton"] if dry else ["triton"],
                "quantile": ["cpu", "triton"] if dry else ["cuda", "triton"],
                "upsample": ["cpu", "triton"] if dry else ["cuda", "triton"]}
    failed = []

    def guard(what, fn, *a):
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - one broken op must not lose the others
            failed.append(what)
            out.text(f"- **{what} FAILED**: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            return None

    ctx = cases.Context(z, machine, backends, args.reps, 1 if dry else 4)
    out.text(f"Per-op, one Broden batch (median of {args.reps}, inputs rotated):", "",
             "| op | backend | size | time (ms) | floor (ms) | x floor | torch materialising (ms) | speed-up | note |",
             "|---|---|---|---|---|---|---|---|---|")
    for r in cases.run_all(ctx, guard):
        out.record(part="ops", **dataclasses.asdict(r))
        if r.time_s is None:
            out.text(f"| {r.op} | {r.backend} | {r.size} | - | - | - | - | - | {r.note} |")
        else:
            out.text(f"| {r.op} | {r.backend} | {r.size} | {fmt(r.time_s, 1e3)} | {fmt(r.floor_s, 1e3)} | "
                     f"{fmt(r.time_s / r.floor_s)} | {fmt(r.baseline_s, 1e3)} | "
                     f"{fmt(r.baseline_s / r.time_s)} | {r.note} |")
    out.text("")
    return 1 if failed else 0


def part_e2e(out: Output, device, args) -> int:
    """Broden-size dissection of ResNet-18 layer4 (synthetic data on the device): both passes,
    forward / quantile / tally timed apart, against the forward's matrix-rate floor."""
    import suite_cases as cases
    import suite_e2e as e2e

    dry = device.type != "cuda"
    machine = machine_for(out, device, args)
    z = cases.SMOKE if dry else cases.BRODEN
    cfg = e2e.E2EConfig(images=args.images, batch=args.e2e_batch, amp=args.amp, labels=z)
    if dry:
        cfg.image_size, cfg.width = 64, 4
    res = e2e.run(cfg, device)
    floor = e2e.floor_s(res, cfg, machine.bf16_rate / (1 if cfg.amp == "bf16" else 2), 0.0, 0.0)
    frac = res.stats / res.forward if res.forward else math.nan
    out.record(part="e2e", images=cfg.images, batch=cfg.batch, amp=cfg.amp, wall_s=res.wall,
               generate_s=res.generate, forward_s=res.forward, quantile_s=res.quantile,
               tally_s=res.tally, stats_over_forward=frac, forward_floor_s=floor)
    verdict = lambda v, lim: "n/a" if math.isnan(v) else ("PASS" if v <= lim else "FAIL")  # noqa: E731
    out.text(f"End-to-end: ResNet-18 (width {cfg.width}, random init, forward {cfg.amp} autocast on CUDA) "
             f"layer4 ({res.units} units), {cfg.images} synthetic images {cfg.image_size}² generated on the "
             f"device, batch {cfg.batch}; labels {z.L}x{z.H}², M={z.M}, C={z.C}. Pass 1: forward + "
             f"QuantileSketch.update; pass 2: forward + IoUTally.update.", "",
             *[f"- note: {n}" for n in res.notes],
             "| phase | time (s) | note |", "|---|---|---|",
             f"| wall, both passes | {fmt(res.wall)} | forward floor {fmt(floor)} s at the measured matrix rate; "
             f"target <= {TARGETS['e2e_s']} s: {verdict(res.wall, TARGETS['e2e_s'])} |",
             f"| data generation | {fmt(res.generate)} | stands in for image decoding |",
             f"| forward (x2) | {fmt(res.forward)} | |",
             f"| quantile updates | {fmt(res.quantile)} | |",
             f"| tally + label_stats | {fmt(res.tally)} | |",
             f"| statistics / forward | {fmt(frac)} | target <= {TARGETS['stats_fraction']}: "
             f"{verdict(frac, TARGETS['stats_fraction'])} |", "")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    sys.path[:0] = [str(ROOT), str(BENCH)]
    import torch

    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    part = {"machine": part_machine, "ops": part_ops, "e2e": part_e2e}[args.part]
    return part(Output(Path(args.out_dir)), device, args)


if __name__ == "__main__":
    sys.exit(main())
