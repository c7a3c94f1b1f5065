"""Issue #18 item 7.5: `stream-node run` names the signal that ended a stage.

A stage killed by SIGKILL (the OOM killer, an operator's kill -9) has no exit code of its own:
Popen gives -9. `run` counted it as an internal error and said "exited with code 1", which sent
the operator looking for a traceback that does not exist; it must say which signal killed it.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from stream_node.model.errors import ExitCode
from test_topology import ended, local_topology, start_run, wait_for


@pytest.mark.timeout(120)
def test_a_stage_killed_by_sigkill_is_reported_as_killed_by_that_signal(tmp_path):
    path = local_topology(tmp_path, frames=100000, rate=200)
    proc = start_run(path)
    try:
        seen = wait_for(proc, "the collector ready")
        hello = next(line for line in seen if "worker here-w1 (pid" in line)
        pid = int(re.search(r"worker here-w1 \(pid (\d+)\)", hello)[1])
        os.kill(pid, signal.SIGKILL)
        line = wait_for(proc, "here/here-w1 ")[-1]  # the launcher's line about that stage
    finally:
        if proc.poll() is None:  # end the run: it ends the stages it started
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGTERM)
    code, _, err = ended(proc)
    assert "run: here/here-w1 was killed by signal SIGKILL" in line, line
    assert "exited with code" not in line, line
    assert "here/here-w1 1 (SIGKILL)" in err, err[-3000:]  # the summary names it too
    assert code == ExitCode.ERROR, err[-3000:]  # a kill nobody here sent is still a failure
    assert "Traceback" not in err
