"""Issue #18 item 7.6: Ctrl-C on `stream-node demo` says why the run ended.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the demo and, before
the fix, its worker and collector processes, each getting Python's bare KeyboardInterrupt, so
the collector's ledger reason (and its log) read `run ended early: ` with nothing after it.
The frames the file lacks must say they were lost to the interrupt.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from stream_node import read_run
from stream_node.model.errors import ExitCode


def gone(pid: int) -> bool:
    """No stream-node process has this pid any more (a zombie or a reused pid is gone too)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"stream_node" not in f.read()
    except OSError:
        return True


@pytest.mark.timeout(90)
def test_ctrl_c_on_the_demo_names_the_interrupt_in_the_reason(tmp_path):
    path = tmp_path / "demo.h5"
    # Its own session: the test can signal the group as a terminal's Ctrl-C does.
    demo = subprocess.Popen(
        [sys.executable, "-m", "stream_node", "--log-level", "INFO", "demo", "--rate", "50",
         "--frames", "2000", "--shape", "64x64", "--quiet", "--output", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=tmp_path)
    seen: list[str] = []
    pids: list[int] = []
    try:
        try:
            for line in demo.stderr:
                seen.append(line)
                pids += [int(p) for p in re.findall(r"\(pid (\d+)\) said hello", line)]
                if "workers and the collector ready" in line:
                    break
            else:
                raise AssertionError("the demo ended before its run started:\n" + "".join(seen))
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground group
            _, err = demo.communicate(timeout=60)
        finally:
            demo.kill()  # nothing if it exited
            demo.communicate()
        check(demo.returncode, "".join(seen) + err, path, pids)
    finally:
        for pid in pids:  # a stage the demo left behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def check(code: int, err: str, path, pids: list[int]) -> None:
    assert code == ExitCode.ABORTED, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    assert "interrupted (signal SIGINT)" in err and "interrupted ()" not in err, err[-4000:]
    reasons = re.findall(r"run ended early: (.*)", err)
    assert reasons and all("SIGINT" in r for r in reasons), err[-4000:]
    run = read_run(path)
    assert run.missing and all("SIGINT" in r for r in run.missing.values()), set(
        run.missing.values())
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll interval: the loop checks the processes
    assert len(pids) == 3 and all(gone(pid) for pid in pids), pids  # the demo ended its stages
