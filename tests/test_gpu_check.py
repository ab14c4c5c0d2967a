"""The lent-GPU suite runs its code paths end to end in CPU smoke mode, reports every op (timed
or why not) and the targets; the compute-sanitizer driver runs a kernel against the oracle."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_suite_smoke(tmp_path):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "gpu_suite.md").read_text()
    assert text.strip() in proc.stdout
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in text.splitlines() if ln.startswith("| ")]
    by_op = {}
    for r in rows:
        if len(r) == 9:  # the per-op table
            by_op.setdefault(r[0], []).append(r)
    import suite_cases

    for op in suite_cases.discover():  # every op appears: timed, or with the reason it was not
        assert op in by_op, f"{op} missing from the suite's table"
        for r in by_op[op]:
            assert r[3] != "-" or r[-1], f"{op}: neither a time nor a reason: {r}"
    timed = {r[1] for r in by_op["tally"]}
    assert {"cpu", "triton"} <= timed and all(float(r[3]) > 0 for r in by_op["tally"])
    assert "#### tally, CPU (smoke)" in text  # the whole-dataset pass came from gpu_bench.py
    for target in ("tally kernel time", "end-to-end wall time", "statistics / forward time"):
        assert any(r[0].startswith(target) and ("PASS" in r[3] or "FAIL" in r[3])
                   for r in rows if len(r) == 4), target
    assert "forward (x2)" in text and "tally + label_stats" in text
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == results  # --smoke does not record


def test_cuda_kernel_driver_runs_tally_against_oracle():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_kernel_driver.py"), "tally",
                           "--device", "cpu", "--backend", "cpu", "--small"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "float32 ok" in proc.stdout and "float16 ok" in proc.stdout
