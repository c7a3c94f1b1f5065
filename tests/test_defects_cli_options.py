"""Issue #18 item 7.3: frame options that cannot work are usage errors, not tracebacks.

A `--shape` whose frame would be gigabytes ran into numpy's allocation failure deep in the
synthetic detector; a negative `--rate` was taken as given. Both must stop at parsing, with
the flag named in one line (exit code 2), before any socket or ring is made.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_node.cli import main
from stream_node.model.errors import ExitCode


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """In `cwd`: a demo the bug let run writes its file there, not in the checkout."""
    return subprocess.run([sys.executable, "-m", "stream_node", *args], capture_output=True,
                          text=True, timeout=50, cwd=cwd)


def assert_usage_error(proc: subprocess.CompletedProcess, flag: str, *words: str) -> None:
    assert proc.returncode == ExitCode.USAGE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error: argument " + flag in last, last
    for word in words:
        assert word in last, last


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [
    ("source", "--control", "ipc:///nonexistent/c", "--data", "ipc:///nonexistent/d"),
    ("demo", "--quiet", "--frames", "20"),
])
def test_an_absurd_frame_shape_is_a_usage_error_naming_shape(command, tmp_path):
    proc = cli(*command, "--shape", "100000x100000", cwd=tmp_path)
    assert_usage_error(proc, "--shape", "100000x100000", "pixels")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rate", ["-1", "nan"])
@pytest.mark.parametrize("command", [
    ("source", "--control", "ipc:///nonexistent/c", "--data", "ipc:///nonexistent/d"),
    ("demo", "--quiet", "--frames", "20"),
])
def test_a_negative_rate_is_a_usage_error(command, rate, tmp_path):
    proc = cli(*command, "--rate", rate, cwd=tmp_path)
    assert_usage_error(proc, "--rate", rate)


def test_the_cap_leaves_real_detectors_alone_and_the_topology_check_applies_it(
        tmp_path, capsys):
    """An EIGER2 16M frame passes; a topology's shape and rate go through the same flags."""
    from stream_node.cli.options import shape_arg

    assert shape_arg("4362x4148") == (4362, 4148)
    topo = tmp_path / "t.toml"
    topo.write_text(
        'name = "t"\n[nodes.a]\nhost = "127.0.0.1"\n[nodes.a.source]\n'
        'control = "ipc:///tmp/x-c"\ndata = "ring://x"\nshape = [100000, 100000]\nrate = -1\n'
        '[nodes.a.workers]\ncount = 1\n[nodes.a.collector]\ninput = "ipc:///tmp/x-f"\n'
        'file = "/tmp/x.h5"\n')
    assert main(["check", str(topo)]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "shape = " in err and "pixels" in err, err
    assert "rate = -1" in err, err
