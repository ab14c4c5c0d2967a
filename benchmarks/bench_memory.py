"""Peak memory vs number of samples for the GAN driver (dissect_generator, quantile_mode="sketch"):
each N runs in a fresh subprocess that reports its peak RSS, (on CUDA) torch.cuda.max_memory_allocated
and samples/s, so the peaks are comparable; flat memory means the peaks do not grow with N.
  PYTHONPATH=. python benchmarks/bench_memory.py [--n 1000 4000 12000] [--record]   # CPU, scaled down
  PYTHONPATH=. python benchmarks/bench_memory.py --device cuda --n 1000000 --progress # the 10^6 run"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## memory vs N (generator)"


def child(args) -> None:
    """One run in this process; prints one JSON line (peaks measured after the run)."""
    import torch

    from dissect_kernels.generator import dissect_generator
    from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g, seg = load_default_generator(dev), default_segmenter()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # MiB, after imports + model
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    res = dissect_generator(g, args.layer, seg, num_samples=args.child, batch_size=args.batch_size,
                            device=dev, progress=args.progress, quantile_mode=args.quantile_mode)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t
    out = {"n": args.child, "seconds": dt, "samples_per_s": args.child / dt,
           "rss_base_mib": base, "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "timing": res.timing}
    if dev.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        out["cuda_name"] = torch.cuda.get_device_name(dev)
    print("RESULT " + json.dumps(out), flush=True)


def run_one(n: int, args) -> dict:
    """dissect_generator on n samples in a fresh interpreter; its JSON result."""
    cmd = [sys.executable, __file__, "--child", str(n), "--device", args.device, "--layer", args.layer,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--quantile-mode", args.quantile_mode] + (["--progress"] if args.progress else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def table(rows: list[dict], device: str) -> str:
    """Markdown table of the runs."""
    cuda = any("cuda_peak_mib" in r for r in rows)
    head = "| N | samples/s | peak RSS (MiB) | RSS after setup (MiB) | peak - setup (MiB) |" + \
        (" cuda max_memory_allocated (MiB) |" if cuda else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['n']:,} | {r['samples_per_s']:.1f} | {r['rss_peak_mib']:.0f} | {r['rss_base_mib']:.0f} | "
                f"{r['rss_peak_mib'] - r['rss_base_mib']:.0f} |")
        lines.append(line + (f" {r['cuda_peak_mib']:.1f} |" if cuda else ""))
    return "\n".join(lines)


def heading(mode: str) -> str:
    """RESULTS.md heading: HEADING for the sketch, a contrast section for other modes."""
    return HEADING if mode == "sketch" else f"{HEADING[:-1]}, quantile_mode={mode!r})"


def record(text: str) -> None:
    """Replace (or append) the section of RESULTS.md whose heading is text's first line."""
    doc = RESULTS.read_text()
    pat = re.compile(re.escape(text.splitlines()[0]) + r"\n.*?(?=\n## |\Z)", re.S)
    doc = pat.sub(lambda _: text.rstrip("\n"), doc) if pat.search(doc) else doc.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(doc.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 12000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layer", default="layer3")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the child (0: torch's default)")
    ap.add_argument("--quantile-mode", default="sketch", choices=["auto", "exact", "sketch"])
    ap.add_argument("--progress", action="store_true", help="show the driver's progress bars (stderr)")
    ap.add_argument("--record", action="store_true", help=f"write '{HEADING}' into {RESULTS.name}")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = []
    for n in args.n:
        rows.append(run_one(n, args))
        print(json.dumps(rows[-1]), flush=True)
    tab = table(rows, args.device)
    print(tab)
    if args.record:
        try:
            import torch
            machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
                f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch threads={args.threads}"
        except Exception:    # noqa: BLE001 - only for the label
            machine = args.device
        ratio = rows[-1]["n"] / rows[0]["n"]
        grow = rows[-1]["rss_peak_mib"] - rows[0]["rss_peak_mib"]
        record(f"{heading(args.quantile_mode)}\n\n`benchmarks/bench_memory.py` ({' '.join(sys.argv[1:])}), "
               f"{datetime.date.today().isoformat()}, {machine}; shared machine under load, so "
               f"samples/s is indicative only. dissect_generator(tiny generator, {args.layer}, "
               f"quantile_mode={args.quantile_mode!r}, batch_size={args.batch_size}), each N in a fresh "
               f"process; peak RSS = ru_maxrss of that process (torch + model included: see the setup column).\n\n"
               f"{tab}\n\nN grows {ratio:.0f}x; peak RSS changes by {grow:+.0f} MiB.\n")


if __name__ == "__main__":
    main()
