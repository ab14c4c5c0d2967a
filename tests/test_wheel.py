"""The wheel: scripts/check_wheel.sh builds the sdist and wheel, installs the wheel into a fresh
venv (the package only from the wheel) and runs a tiny dissection there. ~2.5 minutes on 2 cores,
so it is marked slow (pytest -m slow); run the script by hand before a release."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_dissects():
    run = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable), timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "wheel smoke test passed" in run.stdout
