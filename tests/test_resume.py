"""A dissection killed with SIGKILL at any point resumes from its checkpoint and ends with
results bit-identical to an uninterrupted run; a changed input does not reuse the checkpoint."""
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
Q = 0.9375


def _job(out: Path, q: float = Q, delay: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(HERE / "resume_job.py"), str(out), str(q), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return int(out.split("forward-calls")[1].split()[0])


def _kill_when(out: Path, phase: int, batches: int, proc: subprocess.Popen) -> None:
    manifest = out / ".checkpoint" / "rank0" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            progress = json.loads(manifest.read_text())["progress"]
            if (progress["phase"], progress["batches"]) >= (phase, batches):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    pytest.fail("the job finished or stalled before it could be killed")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    calls = _finish(_job(out))
    return load_file(str(out / "results.safetensors")), calls


@pytest.mark.parametrize("phase,batches", [(1, 3), (2, 5)])
def test_killed_run_resumes_bit_identical(tmp_path, uninterrupted, phase, batches):
    full, full_calls = uninterrupted
    proc = _job(tmp_path, delay=0.15)
    _kill_when(tmp_path, phase, batches, proc)
    assert not (tmp_path / "results.safetensors").exists()
    calls = _finish(_job(tmp_path))
    assert calls < full_calls, "the rerun did not resume from the checkpoint"
    resumed = load_file(str(tmp_path / "results.safetensors"))
    assert resumed.keys() == full.keys()
    for key in full:
        assert resumed[key].equal(full[key]), key
    assert not (tmp_path / ".checkpoint" / "rank0" / "manifest.json").exists()


def test_changed_input_does_not_reuse_checkpoint(tmp_path, uninterrupted):
    _, full_calls = uninterrupted
    proc = _job(tmp_path, delay=0.15)
    _kill_when(tmp_path, 1, 3, proc)
    assert _finish(_job(tmp_path, q=0.95)) == full_calls
