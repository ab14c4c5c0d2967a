"""One command for the lent GPU: build the CUDA module, run the GPU tests, compute-sanitizer
(memcheck, racecheck) on every CUDA kernel, time every op and a Broden-size ResNet-18 layer4
dissection against floors and materialising torch versions, write benchmarks/RESULTS.md.

    python3 benchmarks/gpu_suite.py                 # on the lent GPU (writes logs to $OUT)
    python3 benchmarks/gpu_suite.py --skip-build --skip-tests --skip-sanitizer   # timings only
    python benchmarks/gpu_suite.py --smoke          # same code paths, tiny, CPU (no build/sanitizer)
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
HEADING = "## GPU suite"
TARGETS = {"tally_s": 1.0, "e2e_s": 30.0, "stats_fraction": 0.10}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (cpu + Triton interpreter)")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-sanitizer", action="store_true")
    p.add_argument("--skip-tally-pass", action="store_true", help="skip the full-pass gpu_bench.py run")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--images", type=int, default=63305, help="end-to-end and full tally pass")
    p.add_argument("--e2e-batch", type=int, default=256)
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"],
                   help="forward pass under bf16 autocast (default) or in fp32")
    p.add_argument("--reps", type=int, default=20, help="timed repeats per op (median)")
    p.add_argument("--clock-ghz", type=float, default=1.98, help="nominal SM clock (FP32 floor)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "build" / "gpu_suite"),
                   help="folder for logs and the table (default $OUT)")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                   help="insert the table into benchmarks/RESULTS.md (default: yes, not with --smoke)")
    a = p.parse_args(argv)
    if a.smoke:
        a.skip_build = a.skip_tests = a.skip_sanitizer = True
        a.images, a.e2e_batch, a.reps = 6, 3, 2
    if a.record is None:
        a.record = not a.smoke
    return a


def sh(cmd: list[str], log: Path, timeout: int, env=None) -> tuple[int, str, float]:
    """Run cmd, append its output to `log`, return (status, output, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}"
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}\n[exit {rc}]\n\n")
    return rc, text, time.perf_counter() - t0


def last_line(text: str, pattern: str) -> str:
    hits = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln)]
    return hits[-1] if hits else ""


def step_build(args, out: Path) -> str:
    if args.skip_build:
        return "skipped"
    rc, text, s = sh([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                      "-e", "."], out / "build.log", 900, env={"DK_BUILD_JOBS": str(os.cpu_count() or 4)})
    if rc != 0:
        return f"FAILED (exit {rc}, see build.log)"
    probe = "from dissect_kernels import _native; print(_native.native('_cuda') is not None)"
    _, text, _ = sh([sys.executable, "-c", probe], out / "build.log", 300)
    cuda = "True" in text.split()
    return f"ok ({s:.0f} s); _cuda {'imports' if cuda else 'NOT importable (see build.log)'}"


def step_tests(args, out: Path) -> str:
    if args.skip_tests:
        return "skipped"
    rc, text, s = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                     out / "pytest_gpu.log", 1200)
    summary = last_line(text, r"passed|failed|error|no tests ran") or f"exit {rc}"
    return f"{'ok' if rc == 0 else 'FAILED'}: {summary} ({s:.0f} s)"


def step_sanitizer(args, out: Path) -> list[tuple[str, str, str]]:
    """(kernel, memcheck, racecheck) per kernel of _cuda, via cuda_kernel_driver.py."""
    import cuda_kernel_driver as drv

    driver = str(BENCH / "cuda_kernel_driver.py")
    built_here = drv.cuda_kernels()
    kernels = [(k, "built" if k in built_here else "not built", "case" if k in drv.CASES else "no case")
               for k in sorted(set(built_here) | set(drv.CASES))]
    if args.skip_sanitizer:
        return [(k, "skipped", "skipped") for k, built, _ in kernels if built == "built"]
    tool = shutil.which("compute-sanitizer") or next(
        (str(p) for p in (Path("/usr/local/cuda/bin/compute-sanitizer"),) if p.exists()), None)
    rows = []
    for name, built, case in kernels:
        if built != "built" or case != "case":
            rows.append((name, f"not available ({built}, {case})", "-"))
            continue
        if tool is None:
            rows.append((name, "compute-sanitizer not found", "-"))
            continue
        cells = []
        for mode, extra in (("memcheck", ["--leak-check", "no"]), ("racecheck", ["--racecheck-report", "hazard"])):
            rc, text, s = sh([tool, "--tool", mode, "--error-exitcode", "99", *extra, sys.executable, driver, name],
                             out / "sanitizer.log", 600)
            summary = last_line(text, r"(ERROR|RACECHECK) SUMMARY") or f"exit {rc}"
            verdict = {0: "clean", 99: "ERRORS", 3: "not available"}.get(rc, f"FAILED (exit {rc})")
            cells.append(f"{verdict}: {summary} ({s:.0f} s)")
        rows.append((name, *cells))
    return rows


def measure_machine(device, clock_ghz: float):
    """Copy bandwidth and bf16 matrix rate measured here; FP32 lane rate from SMs x 128 x clock."""
    import torch

    from suite_cases import Machine, median_time

    if device.type != "cuda":
        return Machine("CPU (smoke)", device)
    props = torch.cuda.get_device_properties(device)
    src = torch.randn(1 << 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    copy = median_time(lambda i: dst.copy_(src), device, 10)
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    mm = median_time(lambda i: a @ b, device, 10)
    del src, dst, a, b
    return Machine(props.name, device, bandwidth=2 * (1 << 30) / copy,
                   fp32_rate=props.multi_processor_count * 128 * clock_ghz * 1e9, bf16_rate=2 * 8192 ** 3 / mm)


def step_tally_pass(args, out: Path) -> tuple[str, float]:
    """The whole-dataset tally through benchmarks/gpu_bench.py (reused, not duplicated):
    its table, and the cuda (cpu under --smoke) kernel seconds."""
    if args.skip_tally_pass:
        return "skipped", math.nan
    cmd = [sys.executable, str(BENCH / "gpu_bench.py")] + (["--smoke"] if args.smoke else ["--images", str(args.images)])
    rc, text, s = sh(cmd, out / "gpu_bench.log", 900)
    if rc != 0:
        return f"gpu_bench.py FAILED (exit {rc}, see gpu_bench.log)", math.nan
    table = text[text.index("### tally"):] if "### tally" in text else text
    row = [ln for ln in table.splitlines() if ln.startswith("| cuda |" if not args.smoke else "| cpu |")]
    secs = float(row[0].split("|")[2]) if row else math.nan
    return "#" + table.strip(), secs


def fmt(x: float, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x * scale:.{digits}g}"


class Report:
    """The markdown table, printed and written to <out>/gpu_suite.md section by section (so a
    run cut short still leaves what it measured); `failed` collects what went wrong."""

    def __init__(self, out: Path):
        self.path, self.lines, self.failed = out / "gpu_suite.md", [], []

    def emit(self, *lines: str) -> None:
        self.lines += lines
        print("\n".join(lines), flush=True)
        self.path.write_text("\n".join(self.lines) + "\n")

    def guard(self, what: str, fn, *a):
        """fn(*a), or None with the error reported (the suite goes on)."""
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - one broken part must not lose the others
            self.failed.append(what)
            self.emit(f"- **{what} FAILED**: {type(e).__name__}: {e}", "")
            traceback.print_exc()
            return None


def e2e_section(rep: Report, args, z, machine, rows, device):
    """Run the end-to-end pass and emit its table; returns the E2EResult."""
    import suite_e2e as e2e

    cfg = e2e.E2EConfig(images=args.images, batch=args.e2e_batch, amp=args.amp, labels=z)
    if args.smoke:
        cfg.image_size, cfg.width = 64, 4
    res = e2e.run(cfg, device)
    per_image = {}  # op -> its fastest timed row (floors and baselines are per op)
    for r in sorted((r for r in rows if r.time_s is not None), key=lambda r: -r.time_s):
        per_image[r.op] = r
    tf = per_image["tally"].floor_s / z.B if "tally" in per_image else 0.0
    qf = per_image["quantile"].floor_s / z.B if "quantile" in per_image else 0.0
    # fp32 convolutions run on TF32 tensor cores (cuDNN's default): half the bf16 rate
    floor = e2e.floor_s(res, cfg, machine.bf16_rate / (1 if cfg.amp == "bf16" else 2), tf, qf)
    base_stats = sum(per_image[k].baseline_s / z.B * cfg.images
                     for k in ("tally", "quantile", "label_stats") if k in per_image)
    rep.emit(f"End-to-end: ResNet-18 (width {cfg.width}, random init, forward {cfg.amp} autocast on CUDA) "
             f"layer4 ({res.units} units), {cfg.images} synthetic images {cfg.image_size}² generated on the "
             f"device, batch {cfg.batch}; labels {z.L}x{z.H}², M={z.M}, C={z.C}. Two passes: forward + "
             f"QuantileSketch.update, then forward + IoUTally.update. Forward: "
             f"{fmt(res.forward_flops * 2 / 1e12)} TFLOP over both passes.", "",
             *[f"- note: {n}" for n in res.notes],
             "", "| phase | time (s) | note |", "|---|---|---|",
             f"| wall, both passes | {fmt(res.wall)} | floor {fmt(floor)} s (forward at the measured "
             f"matrix rate + statistics floors); x floor {fmt(res.wall / floor)} |",
             f"| data generation | {fmt(res.generate)} | stands in for image decoding |",
             f"| forward (x2) | {fmt(res.forward)} | |",
             f"| quantile updates | {fmt(res.quantile)} | |",
             f"| tally + label_stats | {fmt(res.tally)} | |",
             f"| statistics total | {fmt(res.stats)} | materialising torch statistics (per-op "
             f"baselines scaled): {fmt(base_stats)} s |", "")
    return res


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(ROOT), str(BENCH)]
    build = step_build(args, out)  # before dissect_kernels is imported here
    import torch

    import suite_cases as cases

    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; use --smoke on a CPU machine", file=sys.stderr)
        return 2
    rep = Report(out)
    tests = step_tests(args, out)
    machine = measure_machine(device, args.clock_ghz)
    rep.emit(f"### GPU suite, {machine.name}, {datetime.date.today().isoformat()}", "",
             f"`python3 benchmarks/gpu_suite.py{' --smoke' if args.smoke else ''}`; torch {torch.__version__}"
             f"{', CUDA ' + torch.version.cuda if torch.version.cuda else ''}. Measured here: copy "
             f"{fmt(machine.bandwidth, 1e-12)} TB/s (read + write), bf16 matmul {fmt(machine.bf16_rate, 1e-12)} "
             f"TFLOP/s; FP32 lane rate {fmt(machine.fp32_rate, 1e-12)} T/s at nominal {args.clock_ghz} GHz.", "",
             f"- build (`pip install --no-build-isolation -e .`): {build}",
             f"- `pytest -m gpu`: {tests}", "")
    rep.failed += [w for w, v in (("build", build), ("pytest -m gpu", tests)) if "FAILED" in v or "NOT" in v]
    sanitizer = rep.guard("compute-sanitizer", step_sanitizer, args, out) or []
    rep.failed += [f"compute-sanitizer {k}" for k, m, r in sanitizer if "ERRORS" in m + r or "FAILED" in m + r]
    rep.emit("| CUDA kernel | compute-sanitizer memcheck | racecheck |", "|---|---|---|",
             *([f"| {k} | {m} | {r} |" for k, m, r in sanitizer] or ["| (none built) | - | - |"]), "")

    z = cases.SMOKE if args.smoke else cases.BRODEN
    backends = {"tally": ["cpu", "triton"] if args.smoke else ["cuda", "triton"],
                "label_stats": ["torch"], "segment_stats": ["torch"],
                "edit": ["cpu", "triton"] if args.smoke else ["triton"],
                "quantile": ["cpu", "triton"] if args.smoke else ["cuda", "triton"]}
    ctx = rep.guard("per-op inputs", cases.Context, z, machine, backends, args.reps, 1 if args.smoke else 4)
    rows = cases.run_all(ctx, rep.guard) if ctx is not None else []
    rep.emit(f"Per-op, one Broden batch (median of {args.reps}, inputs rotated):", "",
             "| op | backend | size | time (ms) | floor (ms) | x floor | torch materialising (ms) | speed-up | note |",
             "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.time_s is None:
            rep.emit(f"| {r.op} | {r.backend} | {r.size} | - | - | - | - | - | {r.note} |")
        else:
            rep.emit(f"| {r.op} | {r.backend} | {r.size} | {fmt(r.time_s, 1e3)} | {fmt(r.floor_s, 1e3)} | "
                     f"{fmt(r.time_s / r.floor_s)} | {fmt(r.baseline_s, 1e3)} | "
                     f"{fmt(r.baseline_s / r.time_s)} | {r.note} |")
    del ctx
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to gpu_bench.py's process
    tally_table, tally_s = step_tally_pass(args, out)
    if "FAILED" in tally_table:
        rep.failed.append("gpu_bench.py")
    rep.emit("", "Whole-dataset tally (`benchmarks/gpu_bench.py`):", "", tally_table, "")

    res = None if args.skip_e2e else rep.guard("end-to-end", e2e_section, rep, args, z, machine, rows, device)
    frac = res.stats / res.forward if res else math.nan
    checks = [("tally kernel time, whole dataset (cuda)", tally_s, TARGETS["tally_s"], "s"),
              ("end-to-end wall time", res.wall if res else math.nan, TARGETS["e2e_s"], "s"),
              ("statistics / forward time", frac, TARGETS["stats_fraction"], "")]
    rep.emit("| target | measured | limit | verdict |", "|---|---|---|---|")
    for name, value, limit, unit in checks:
        verdict = "n/a" if math.isnan(value) else ("PASS" if value <= limit else "FAIL")
        if args.smoke:
            verdict += " (smoke sizes: not meaningful)"
        rep.emit(f"| {name} | {fmt(value)} {unit} | {limit} {unit} | {verdict} |")
    if rep.failed:
        rep.emit("", f"Failed parts: {', '.join(rep.failed)} (logs in {out}).")
    if args.record:
        from gpu_bench import record

        record("\n".join(rep.lines), HEADING)
        shutil.copy(BENCH / "RESULTS.md", out / "RESULTS.md")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
