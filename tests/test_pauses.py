"""A collector paused again and again mid-run (SIGSTOP/SIGCONT: a frozen VM, a swapped-out
process, a debugger), for 0.5x, 0.9x and 2x the peer timeout.

A pause shorter than the peer timeout must cost nothing: every frame written, exit 0. A longer
one ends the run, but it ends by itself: every frame is in the file or recorded missing, and no
process dies inside libzmq (with ZMTP heartbeats on a data link whose receive queue was full, the
collector aborted with `Assertion failed: !_io_error` on waking, libzmq issue 4767).
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from conftest import Endpoints, finish, free_tcp_endpoint, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run

SHAPE = (256, 512)  # 256 KiB frames: the collector's queues fill within a pause
PEER_TIMEOUT = 1.0
FRAMES = 1500
PAUSES = 3


def paused_run(node, tmp_path, factor: float):
    ep = Endpoints(tmp_path, "tcp")
    control, fanout, fanin, status = ep("c"), ep("d"), ep("o"), free_tcp_endpoint()
    timing = ("--peer-timeout", str(PEER_TIMEOUT), "--ready-timeout", "20")
    path = tmp_path / "run.h5"
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--status", status, "--drain-timeout", "3", *timing)
    workers = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                    "--name", f"w{i}", "--index", str(i), *timing) for i in range(2)]
    source = node("source", "--control", control, "--data", fanout, "--workers", "2",
                  "--frames", str(FRAMES), "--shape", "x".join(map(str, SHAPE)), "--rate", "600",
                  *timing)
    wait_run_started(source)
    for k in range(PAUSES):
        if collector.poll() is not None:
            break
        try:  # progress between pauses, asked of the collector itself (not a delay)
            wait_written(status, (k + 1) * 100, timeout_s=20)
        except AssertionError:
            break  # the run has ended (after a 2x pause): nothing more to pause
        os.kill(collector.pid, signal.SIGSTOP)
        try:
            threading.Event().wait(factor * PEER_TIMEOUT)  # the fault's length, not a sync
        finally:
            os.kill(collector.pid, signal.SIGCONT)
    code, _out, err = finish(source, timeout=60)
    ccode, _cout, cerr = finish(collector, timeout=60)
    for w in workers:
        finish(w, timeout=60)
    return code, err, ccode, cerr, path


def ledger(path):
    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(FRAMES)), "frames neither written nor recorded"
    assert not written & set(run.missing)
    det = SyntheticDetector(SHAPE, "uint16")
    for i in sorted(written)[::50]:
        assert run.frames[i].tobytes() == det.frame(i).tobytes(), f"frame {i} differs"
    return run


@pytest.mark.timeout(120)
@pytest.mark.parametrize("factor", [0.5, 0.9])
def test_pauses_shorter_than_the_peer_timeout_cost_nothing(node, tmp_path, factor):
    code, err, ccode, cerr, path = paused_run(node, tmp_path, factor)
    assert "Assertion failed" not in cerr, cerr[-2000:]
    assert code == ExitCode.OK, err[-3000:]
    assert ccode == ExitCode.OK, cerr[-3000:]
    assert ledger(path).missing == {}


@pytest.mark.timeout(120)
def test_a_pause_twice_the_peer_timeout_ends_the_run_with_an_exact_ledger(node, tmp_path):
    _code, _err, ccode, cerr, path = paused_run(node, tmp_path, 2.0)
    assert "Assertion failed" not in cerr, cerr[-2000:]
    assert ccode != -signal.SIGABRT, cerr[-2000:]
    assert path.exists(), cerr[-2000:]
    ledger(path)


@pytest.mark.timeout(60)
def test_a_worker_busy_in_one_call_for_three_peer_timeouts_is_alive(node, tmp_path):
    """A kernel that takes 1.5 s per frame with --peer-timeout 0.5, in reliable mode: the
    worker's stage is busy in one call, its control thread is not. Before, heartbeats left only
    from the stage's loop: the source declared the worker dead and sent its frames again."""
    ep = Endpoints(tmp_path, "ipc")
    control, fanout, fanin = ep("c"), ep("d"), ep("o")
    timing = ("--peer-timeout", "0.5", "--ready-timeout", "20")
    chain = tmp_path / "chain.json"
    chain.write_text('[{"kernel": "python:stream_node.kernels.examples.delay", "seconds": 1.5}]')
    path = tmp_path / "run.h5"
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     *timing)
    worker = node("worker", "--control", control, "--input", fanout, "--output", fanin, *timing)
    source = node("source", "--control", control, "--data", fanout, "--workers", "1",
                  "--frames", "4", "--shape", "64x64", "--kernels", str(chain), "--reliable",
                  *timing)
    code, _out, err = finish(source, timeout=45)
    assert code == ExitCode.OK, err[-3000:]
    assert "silent" not in err and "again" not in err, err[-3000:]
    for proc in (collector, worker):
        assert finish(proc)[0] == ExitCode.OK
    run = read_run(path)
    assert run.missing == {} and run.received.all()
    assert run.counters["duplicates"] == 0, run.counters
