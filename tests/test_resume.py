"""Kill -9 in every pass of every driver, then rerun: the rerun resumes from the engine's
checkpoint (fewer forward passes) and ends bit-identical to an uninterrupted run, leaving no
checkpoint behind; a changed input does not reuse the checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

HERE = Path(__file__).parent
# driver -> (its checkpoint's name, its passes, batches per pass, the file holding its result)
DRIVERS = {
    "dissect": ("dissect", ["quantiles", "tally"], 8, "results.safetensors"),
    "gan": ("gan", ["quantiles", "level_counts", "tally"], 6, "results.safetensors"),
    "ace-ranking": ("ace-ranking", ["insertion value", "effect"], 4, "result.safetensors"),
    "ablation": ("ablation", ["single", "top-n"], 6, "result.safetensors"),
}
CASES = [(d, p) for d, (_, passes, _, _) in DRIVERS.items() for p in range(len(passes))]


def _job(driver: str, out: Path, delay: float = 0.0, variant: int = 0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent),
                                                       os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    args = [sys.executable, str(HERE / "resume_job.py"), driver, str(out), str(delay), str(variant)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return int(out.split("forward-calls")[1].split()[0])


def _manifest(out: Path, driver: str) -> Path:
    return out / ".checkpoint" / DRIVERS[driver][0] / "rank0" / "manifest.json"


def _kill_in(out: Path, driver: str, pass_index: int, proc: subprocess.Popen) -> None:
    """SIGKILL the job once its checkpoint shows pass `pass_index` half done."""
    batches = DRIVERS[driver][2] // 2
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            progress = json.loads(_manifest(out, driver).read_text())["progress"]
            if (progress["pass"], progress["batches"]) >= (pass_index, batches):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                assert progress["pass"] == pass_index, "killed too late"
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    pytest.fail("the job finished or stalled before it could be killed")


def _result(out: Path, driver: str) -> dict:
    return load_file(str(out / DRIVERS[driver][3]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}
    for driver in DRIVERS:
        out = tmp_path_factory.mktemp(f"full-{driver}")
        calls = _finish(_job(driver, out))
        runs[driver] = (_result(out, driver), calls)
    return runs


@pytest.mark.parametrize("driver,pass_index", CASES)
def test_killed_run_resumes_bit_identical(tmp_path, uninterrupted, driver, pass_index):
    full, full_calls = uninterrupted[driver]
    proc = _job(driver, tmp_path, delay=0.1)
    _kill_in(tmp_path, driver, pass_index, proc)
    assert not (tmp_path / DRIVERS[driver][3]).exists()
    calls = _finish(_job(driver, tmp_path))
    assert calls < full_calls, "the rerun did not resume from the checkpoint"
    resumed = _result(tmp_path, driver)
    assert resumed.keys() == full.keys()
    for key in full:
        assert resumed[key].equal(full[key]), key
    assert not (tmp_path / ".checkpoint").exists(), "a checkpoint was left behind"


@pytest.mark.parametrize("driver", ["dissect", "ace-ranking"])
def test_changed_input_does_not_reuse_checkpoint(tmp_path, uninterrupted, driver):
    proc = _job(driver, tmp_path, delay=0.1)
    _kill_in(tmp_path, driver, 0, proc)
    changed = _finish(_job(driver, tmp_path, variant=1))
    fresh = _finish(_job(driver, tmp_path / "fresh", variant=1))
    assert changed == fresh
