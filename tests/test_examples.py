"""The scripts in examples/ are what users copy: they must keep running."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", ["ring_handoff.py", "read_a_run.py"])
def test_example_runs(script, tmp_path):
    args = [str(tmp_path / "run.h5")] if script == "read_a_run.py" else []
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=100, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exactly once: True" in proc.stdout or "missing none" in proc.stdout
