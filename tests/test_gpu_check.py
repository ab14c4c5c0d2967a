"""benchmarks/gpu_check.sh, the one GPU check: its dry run on CPU writes a valid summary and
per-step logs, reports every op (timed or why not), cuts a step at its budget while later steps
still run, and respects the deadline; the sanitizer's driver checks kernels against the oracle.
(CI also runs the whole dry run: .ci/run.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))


def gpu_check(out: Path, *args: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=full_env)


def steps(out: Path) -> dict:
    return {s["step"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}


def test_dry_run_writes_summary_logs_and_every_op(tmp_path):
    proc = gpu_check(tmp_path, "--steps", "build,probe,sanitizer,sanitizer_cases,ops")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = steps(tmp_path)
    assert s["build"]["status"] == "skipped" and "dry run" in s["build"]["reason"]
    assert s["sanitizer"]["status"] == "skipped"
    assert all(s[k]["status"] == "ok" for k in ("probe", "sanitizer_cases", "ops")), s
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back
    results = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    probe = next(r for r in results if r["part"] == "probe")
    assert probe["torch_cuda"] is False and "cuda_module" in probe
    log = (tmp_path / "sanitizer.log").read_text()
    assert "tally [cpu]: torch.float32 ok" in log and "upsample [triton]: torch.float32 ok" in log
    import suite_cases

    by_op = {}
    for r in results:
        if r["part"] == "ops":
            by_op.setdefault(r["op"], []).append(r)
    for op in suite_cases.discover():  # every op appears: timed, or with the reason it was not
        assert op in by_op, f"{op} missing from the ops results"
        assert all(r["time_s"] is not None or r["note"] for r in by_op[op]), by_op[op]
    assert {r["backend"] for r in by_op["upsample"]} == {"cpu", "triton"}
    assert all(r["time_s"] > 0 for r in by_op["tally"])
    assert "| upsample | cpu |" in (tmp_path / "bench.md").read_text()


def test_a_step_over_budget_is_cut_and_later_steps_still_run(tmp_path):
    proc = gpu_check(tmp_path, "--steps", "sanitizer_cases,e2e", GPU_CHECK_BUDGET_SANITIZER_CASES="1")
    assert proc.returncode == 1
    s = steps(tmp_path)
    assert s["sanitizer_cases"]["status"] == "timeout" and "cut at 1 s" in s["sanitizer_cases"]["reason"]
    assert s["e2e"]["status"] == "ok"
    assert "== sanitizer_cases (budget 1 s)" in (tmp_path / "sanitizer.log").read_text()
    assert "statistics / forward" in (tmp_path / "bench.md").read_text()


def test_the_deadline_skips_what_no_longer_fits(tmp_path):
    proc = gpu_check(tmp_path, GPU_CHECK_DEADLINE="0")
    assert proc.returncode == 0
    s = steps(tmp_path)
    assert s["env"]["status"] == "skipped" and "no time left" in s["env"]["reason"]
    assert all(v["status"] == "skipped" for v in s.values())


def test_cuda_kernel_driver_runs_cases_against_oracle():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_kernel_driver.py"), "tally",
                           "upsample", "tally:cuda", "--device", "cpu", "--backend", "cpu", "--small"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "tally [cpu]: torch.float32 ok" in proc.stdout and "float16 ok" in proc.stdout
    assert "upsample [cpu]: torch.float32 ok" in proc.stdout
    assert "tally [cuda]: not available (backend 'cuda' cannot run on cpu" in proc.stdout
