"""Dead, frozen and stalled workers, and END overtaking data (seed: PUSH/PULL notes, Problem 5).

Every scenario runs real processes over real sockets and ends with the ledger check: each frame
id of the run is in the file exactly once, byte-equal to what the source made, or in the missing
record with a reason; in reliable mode nothing is missing at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading

import numpy as np
import pytest

from conftest import Endpoints, finish, free_tcp_endpoint, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run

SHAPE = (64, 128)


SLOW = '[{"kernel": "python:stream_node.kernels.examples.delay", "seconds": 0.004}]'


def start(node, tmp_path, workers=2, frames=400, rate=200, reliable=False, peer_timeout=1.0,
          drain_timeout=4.0):
    """A run at `rate` frames/s (0: as fast as 4 ms of work per frame per worker allows)."""
    ep = Endpoints(tmp_path, "tcp")
    control, fanout, fanin, status = ep("c"), ep("d"), ep("o"), free_tcp_endpoint()
    timing = ("--peer-timeout", str(peer_timeout), "--ready-timeout", "20")
    path = tmp_path / "run.h5"
    chain = tmp_path / "chain.json"
    chain.write_text(SLOW)
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", str(drain_timeout), "--status", status, *timing)
    procs = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                  "--name", f"w{i}", "--index", str(i), *timing) for i in range(workers)]
    source = node("source", "--control", control, "--data", fanout, "--workers", str(workers),
                  "--frames", str(frames), "--shape", "x".join(map(str, SHAPE)), "--rate",
                  str(rate), "--kernels", str(chain), *(["--reliable"] if reliable else []),
                  *timing)
    wait_run_started(source)
    return source, collector, procs, path, status


def check_ledger(path, frames):
    """Every id once in the file (byte-equal) or missing with a reason; returns the missing."""
    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(frames))
    assert not written & set(run.missing)
    assert all(reason for reason in run.missing.values())
    det = SyntheticDetector(SHAPE, "uint16")
    for i in sorted(written):
        assert run.frames[i].tobytes() == det.frame(i).tobytes(), f"frame {i} differs"
    return run


def finished(source, path, reliable, frames=400):
    """The run ended by itself with an exact ledger; in reliable mode with every frame."""
    code, _out, err = finish(source)
    run = check_ledger(path, frames)
    if reliable:
        assert code == ExitCode.OK, err
        assert run.missing == {}
    else:
        assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    return run


@pytest.mark.timeout(90)
def test_reliable_mode_loses_nothing_when_a_worker_is_killed(node, tmp_path):
    source, collector, procs, path, status = start(node, tmp_path, reliable=True, frames=1000,
                                                   rate=0)
    wait_written(status, 60)
    os.kill(procs[0].pid, signal.SIGKILL)
    code, out, err = finish(source)
    assert code == ExitCode.OK, err
    assert "missing    0" in out
    run = check_ledger(path, 1000)
    assert run.missing == {}
    report = run.counters["reports"]["source"]
    assert report["redispatched"] > 0  # w0 held frames when it died: they were sent again
    assert "sent again" in err
    assert finish(collector)[0] == ExitCode.OK


@pytest.mark.timeout(90)
def test_default_mode_records_a_killed_workers_frames_missing_with_its_name(node, tmp_path):
    source, collector, procs, path, status = start(node, tmp_path)
    wait_written(status, 60)
    os.kill(procs[0].pid, signal.SIGKILL)
    code, _out, err = finish(source)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    run = check_ledger(path, 400)
    assert all("worker w0 ended without a final report" in r for r in run.missing.values())
    assert run.counters["reports"]["workers"]["w0"] == {"error": "no final report"}
    finish(collector)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reliable", [False, True], ids=["default", "reliable"])
def test_a_frozen_worker_that_resumes(node, tmp_path, reliable):
    """SIGSTOP then SIGCONT: its frames come late (default) or were already sent again
    (reliable; the late copies are counted duplicates, written once)."""
    source, collector, procs, path, status = start(node, tmp_path, reliable=reliable,
                                                   drain_timeout=20)
    wait_written(status, 60)
    os.kill(procs[0].pid, signal.SIGSTOP)
    try:  # the other worker carries the run past the frozen one
        if reliable:
            for line in source.stderr:
                if "sent again" in line:
                    break
        else:
            wait_written(status, 150)
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    finished(source, path, reliable)
    finish(collector)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reliable", [False, True], ids=["default", "reliable"])
def test_a_worker_that_stalls_forever(node, tmp_path, reliable):
    """SIGSTOP and never resumed: the run still ends, within its timeouts, with an exact
    ledger; in reliable mode with every frame."""
    source, collector, procs, path, status = start(node, tmp_path, reliable=reliable)
    wait_written(status, 60)
    os.kill(procs[0].pid, signal.SIGSTOP)
    run = finished(source, path, reliable)
    assert all("w0" in reason for reason in run.missing.values())
    assert run.counters["reports"]["workers"]["w0"] == {"error": "no final report"}
    finish(collector)
    procs[0].kill()


def run_with_collector_frozen(node, tmp_path, transport, frames, frozen_until):
    """One worker, --peer-timeout 5; the collector is frozen (SIGSTOP) from the run's start
    until `frozen_until(source)` returns. The run must end OK with every frame written."""
    ep = Endpoints(tmp_path, transport)
    control, fanout, fanin = ep("c"), ep("d"), ep("o")
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "5", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     *timing)
    node("worker", "--control", control, "--input", fanout, "--output", fanin, *timing)
    source = node("source", "--control", control, "--data", fanout, "--workers", "1",
                  "--frames", str(frames), "--shape", "64x128", *timing)
    wait_run_started(source)
    os.kill(collector.pid, signal.SIGSTOP)
    try:
        frozen_until(source)
    finally:
        os.kill(collector.pid, signal.SIGCONT)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err
    run = check_ledger(path, frames)
    assert run.missing == {}


@pytest.mark.timeout(60)
def test_end_overtaking_queued_frames_loses_none(node, tmp_path):
    """The collector is frozen while every frame and then END are sent: on waking it finds END
    on the control channel with the frames still queued on the data socket, and takes them."""

    def until_end_sent(source):
        while line := source.stderr.readline():
            if "END sent" in line:
                return

    # 20 frames fit in what the two ipc links hold (~30 frames of 16 KiB: HWMs plus the unix
    # sockets' default buffers), so END can overtake them while the collector is frozen.
    run_with_collector_frozen(node, tmp_path, "ipc", 20, until_end_sent)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_collector_frozen_past_the_link_heartbeat_loses_nothing(node, tmp_path, transport):
    """A collector frozen for 2.5 s, longer than a data link's own ZMTP heartbeat default
    (1.5 s) but within --peer-timeout 5, is alive to the run. Its links must keep the frames
    queued for it: before the links' heartbeat followed --peer-timeout, the worker's link
    dropped them (the END-overtaking test above failed one run in three that way)."""
    # the fault's length (what is tested), not a synchronisation
    run_with_collector_frozen(node, tmp_path, transport, 300,
                              lambda source: threading.Event().wait(2.5))


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("h5clear") is None,
                    reason="resuming a file a dead collector left needs h5clear (apt install "
                           "hdf5-tools; .ci/run installs it)")
@pytest.mark.parametrize("frames_per_file", [0, 250])
def test_a_killed_collector_resumes_the_same_file(node, tmp_path, frames_per_file):
    """SIGKILL the collector mid-run and start it again with --resume: the run finishes in the
    same file with an exact ledger, and every frame of its last flush is still there."""
    ep = Endpoints(tmp_path, "tcp")
    control, fanout, fanin, status = ep("c"), ep("d"), ep("o"), free_tcp_endpoint()
    timing = ("--peer-timeout", "1", "--ready-timeout", "20")
    path = tmp_path / "run.h5"

    def collector(*extra):
        return node("collector", "--control", control, "--input", fanin, "--file", str(path),
                    "--drain-timeout", "3", "--flush-interval", "0.2", "--status", status,
                    "--frames-per-file", str(frames_per_file), *timing, *extra)

    first = collector()
    for i in range(2):
        node("worker", "--control", control, "--input", fanout, "--output", fanin,
             "--name", f"w{i}", "--index", str(i), *timing)
    source = node("source", "--control", control, "--data", fanout, "--workers", "2",
                  "--frames", "600", "--shape", "64x128", "--rate", "150",
                  "--collector-restart", "30", *timing)
    wait_run_started(source)
    wait_written(status, 150)
    first.kill()
    first.communicate()
    flushed = set(np.flatnonzero(read_run(path).received).tolist())
    assert len(flushed) > 50
    second = collector("--resume")
    code, _out, err = finish(source)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    assert "resumed the run" in err
    assert finish(second)[0] in (ExitCode.OK, ExitCode.FRAMES_MISSING)
    run = check_ledger(path, 600)
    assert flushed <= set(np.flatnonzero(run.received).tolist())
    assert all("restarted mid-run" in reason for reason in run.missing.values())


@pytest.mark.timeout(120)
def test_a_restarted_topology_purges_what_a_killed_run_left(node, tmp_path):
    """Every node of a run SIGKILLed mid-run leaves a ring segment in /dev/shm and socket files;
    the next run on the same names replaces them and holds only its own frames."""
    ep = Endpoints(tmp_path, "ring")
    ring = ep("fanout")
    timing = ("--peer-timeout", "1", "--ready-timeout", "20")

    def run(path, frames, rate):
        col = node("collector", "--control", ep("c"), "--input", ep("o"), "--file", str(path),
                   "--drain-timeout", "3", *timing)
        workers = [node("worker", "--control", ep("c"), "--input", ring, "--output", ep("o"),
                        "--name", f"w{i}", "--index", str(i), *timing) for i in range(2)]
        src = node("source", "--control", ep("c"), "--data", ring, "--workers", "2",
                   "--frames", str(frames), "--shape", "64x128", "--rate", str(rate),
                   "--seed", "0", *timing)
        return src, col, workers

    src, col, workers = run(tmp_path / "killed.h5", 5000, 500)
    wait_run_started(src)
    for proc in (src, col, *workers):
        proc.kill()
        proc.communicate()
    assert f"sn-ring-{ring.removeprefix('ring://')}" in os.listdir("/dev/shm")  # left behind

    src, col, _ = run(tmp_path / "run.h5", 300, 0)
    code, _out, err = finish(src)
    assert code == ExitCode.OK, err
    assert finish(col)[0] == ExitCode.OK
    run_ = check_ledger(tmp_path / "run.h5", 300)
    assert run_.missing == {}
    assert run_.counters["dropped_foreign"] == 0


@pytest.mark.timeout(60)
def test_reliable_mode_refuses_a_ring_fanout_by_name(node, tmp_path):
    source = node("source", "--control", f"ipc://{tmp_path}/c", "--data", "ring://sn-no-such",
                  "--reliable", "--frames", "5")
    code, _, err = finish(source)
    assert code == ExitCode.CONFIG
    assert "reliable mode is for a ZeroMQ fan-out" in err, err


@pytest.mark.timeout(90)
def test_resume_refuses_the_file_of_another_run(node, tmp_path):
    """--resume reopens only the file of the same run: another run's file stays untouched."""
    from test_pipeline import start_roles

    path = tmp_path / "run.h5"
    source, collector, _ = start_roles(node, Endpoints(tmp_path, "ipc"), path, 1, frames=10)
    assert finish(source)[0] == ExitCode.OK
    finish(collector)
    before = path.read_bytes()
    source, collector, _ = start_roles(node, Endpoints(tmp_path, "ipc"), path, 1, frames=10,
                                       extra_collector=("--resume",), ready_timeout=10)
    code, _, err = finish(collector)
    assert code == ExitCode.CONFIG
    assert "resume only the file of the same run" in err, err
    assert finish(source)[0] != ExitCode.OK
    assert path.read_bytes() == before
