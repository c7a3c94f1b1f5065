"""The shared-memory fan-in (`ring://` as the collector's input), and the path with no worker.

Workers on the collector's host each write their output into a ring of their own; the collector
writes each frame straight from the slot. With `--workers 0` the collector reads the source's
ring itself. Real processes, real rings in /dev/shm, real files; every run ends with the ledger
check: each id once in the file (byte-equal) or missing with a reason.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import numpy as np
import pytest

import protocol_senders
from conftest import finish, free_tcp_endpoint, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run

SHAPE = (128, 256)
sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


TAGS: list[str] = []


@pytest.fixture(autouse=True)
def remove_rings():
    """A killed worker cannot remove its ring (the next run on its name would): the test does,
    so /dev/shm keeps nothing of it."""
    yield
    from stream_node.links.ring import Ring

    while TAGS:
        tag = TAGS.pop()
        for path in Path("/dev/shm").glob(f"sn-ring-t-*-{tag}*"):
            Ring.unlink(path.name.removeprefix("sn-ring-"))


def rings() -> tuple[str, str]:
    tag = secrets.token_hex(4)
    TAGS.append(tag)
    return f"ring://t-out-{tag}", f"ring://t-in-{tag}"


def roles(node, tmp_path, workers: int, frames: int, *source_args: str, worker_args=(),
          collector_args=(), origin_ring: bool = False):
    """Collector on a ring fan-in, `workers` workers (0: the collector reads the source's
    ring), a synthetic source; returns (source, collector, workers, path)."""
    fanout, fanin = rings()
    control = f"ipc://{tmp_path}/control"
    path = tmp_path / "run.h5"
    data = fanin if workers == 0 else fanout
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", data if workers == 0
                     else fanin, "--file", str(path), "--drain-timeout", "3", *timing,
                     *collector_args)
    procs = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                  "--name", f"w{i}", "--index", str(i), *timing, *worker_args)
             for i in range(workers)]
    source = node("source", "--control", control, "--data", data, "--workers", str(workers),
                  "--frames", str(frames), "--shape", "x".join(map(str, SHAPE)), *timing,
                  *source_args)
    return source, collector, procs, path


def ledger(path, frames):
    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(frames))
    assert not written & set(run.missing)
    assert all(run.missing.values())
    det = SyntheticDetector(SHAPE, "uint16")
    for i in sorted(written)[::7]:
        assert np.array_equal(run.frames[i], det.frame(i)), f"frame {i} differs"
    return run


@pytest.mark.timeout(90)
@pytest.mark.parametrize("extra", [(), ("--compress", "bslz4", "--checksum")],
                         ids=["raw", "bslz4-checksum"])
def test_workers_write_into_rings_the_collector_writes_from(node, tmp_path, extra):
    source, collector, workers, path = roles(node, tmp_path, 2, 600, *extra)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err[-3000:] + finish(collector)[2][-3000:]
    ccode, _, cerr = finish(collector)
    assert ccode == ExitCode.OK, cerr[-2000:]
    assert "shared-memory fan-in from 2 ring(s)" in cerr
    for w in workers:
        code, _, werr = finish(w)
        assert code == ExitCode.OK, werr[-2000:]
        assert "output ring" in werr  # its slots and memory, said at start
    run = ledger(path, 600)
    assert run.missing == {} and run.received.all()
    assert set(np.unique(run.file["entry/frames/worker"][()])) == {0, 1}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("extra", [(), ("--compress", "bslz4", "--checksum")],
                         ids=["raw", "bslz4-checksum"])
def test_kernel_output_and_chunks_are_made_in_the_output_slot(node, tmp_path, extra):
    """The last kernel writes into the worker's output slot (or the chunk is compressed into
    it): the file holds exactly what the numpy reference makes of each frame."""
    from stream_node.kernels import build_chain

    spec = [{"kernel": "bin2x2"}]
    chain = tmp_path / "chain.json"
    chain.write_text('[{"kernel": "bin2x2"}]')
    source, collector, workers, path = roles(node, tmp_path, 2, 300, "--kernels", str(chain),
                                             *extra)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err[-3000:] + finish(collector)[2][-3000:]
    assert finish(collector)[0] == ExitCode.OK
    for w in workers:
        assert finish(w)[0] == ExitCode.OK
    reference = build_chain(spec, SHAPE, "uint16", backend="reference")
    det = SyntheticDetector(SHAPE, "uint16")
    with read_run(path) as run:
        assert run.complete
        for i in range(0, 300, 23):
            assert np.array_equal(run.frames[i], reference.apply(det.frame(i))), i


@pytest.mark.timeout(90)
def test_a_frame_a_kernel_fails_on_takes_its_slot_as_a_failure_record(node, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the workers import it
    chain = tmp_path / "chain.json"
    chain.write_text('[{"kernel": "python:test_kernel_pipeline.fail_on_frame", '
                     '"frame_id": 7}]')
    source, collector, workers, path = roles(node, tmp_path, 1, 30, "--kernels", str(chain))
    code, _out, err = finish(source)
    assert code == ExitCode.FRAMES_MISSING, err[-3000:]
    for proc in (collector, *workers):
        finish(proc)
    with read_run(path) as run:
        assert list(run.missing) == [7] and "cannot handle this frame" in run.missing[7]
        assert run.received.sum() == 29


@pytest.mark.timeout(90)
def test_without_workers_the_collector_reads_the_source_ring(node, tmp_path):
    source, collector, _, path = roles(node, tmp_path, 0, 800)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err[-3000:]
    assert finish(collector)[0] == ExitCode.OK
    run = ledger(path, 800)
    assert run.missing == {} and run.received.all()


@pytest.mark.timeout(90)
def test_a_detector_bslz4_stream_passes_without_workers_and_a_corrupt_chunk_is_recorded(
        node, tmp_path, sender):
    """DECTRIS bslz4 frames written as they came, no worker on the path: the collector walks
    each chunk (a worker would have), so a damaged one is recorded missing with the reason."""
    endpoint = sender("dectris", "--frames", "8", "--encoding", "bs16-lz4<",
                      "--fault", "corrupt_blob")
    _, fanin = rings()
    control = f"ipc://{tmp_path}/control"
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "3", *timing)
    source = node("source", "--control", control, "--data", fanin, "--workers", "0",
                  "--from", f"dectris+{endpoint}?timeout=3", *timing)
    code, _out, err = finish(source)
    assert code == ExitCode.FRAMES_MISSING, err[-3000:]
    assert finish(collector)[0] == ExitCode.FRAMES_MISSING
    run = read_run(path)
    assert set(run.missing) == {3}, (run.missing, err[-2000:])
    assert "frame 3 as it came: corrupt bitshuffle/LZ4 blob" in run.missing[3]
    assert int(run.received.sum()) == 7


@pytest.mark.timeout(120)
def test_a_killed_worker_on_a_ring_fan_in_loses_nothing_unrecorded(node, tmp_path):
    """SIGKILL one of two workers mid-run: what it published in its ring is still written,
    the frames it held are recorded missing naming it, and nothing hangs."""
    status = free_tcp_endpoint()
    source, collector, workers, path = roles(
        node, tmp_path, 2, 600, "--rate", "200", "--kernels", str(slow_chain(tmp_path)),
        collector_args=("--status", status))
    wait_run_started(source)
    wait_written(status, 100)
    os.kill(workers[0].pid, signal.SIGKILL)
    code, _out, err = finish(source)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err[-3000:]
    assert finish(collector)[0] in (ExitCode.OK, ExitCode.FRAMES_MISSING)
    run = ledger(path, 600)
    assert run.received.sum() >= 100


def slow_chain(tmp_path):
    chain = tmp_path / "chain.json"
    chain.write_text('[{"kernel": "python:stream_node.kernels.examples.delay", '
                     '"seconds": 0.002}]')
    return chain


@pytest.mark.timeout(60)
def test_a_worker_index_outside_the_run_is_refused_naming_it(node, tmp_path):
    source, _collector, _workers, path = roles(node, tmp_path, 1, 50,
                                             worker_args=("--index", "3"))
    code, _out, err = finish(source)
    assert code == ExitCode.CONFIG, err[-3000:]
    assert "--index 3 with a ring:// fan-in must be 0..0" in err
    assert not path.exists() or not read_run(path).received.any()


@pytest.mark.timeout(60)
def test_no_workers_needs_the_ring_and_no_kernels(node, tmp_path):
    control = f"ipc://{tmp_path}/control"
    source = node("source", "--control", control, "--data", f"ipc://{tmp_path}/d",
                  "--workers", "0", "--frames", "5", "--ready-timeout", "5")
    code, _out, err = finish(source)
    assert code == ExitCode.CONFIG
    assert "--workers 0" in err and "ring://NAME" in err


@pytest.mark.timeout(90)
def test_a_stale_fan_in_ring_of_a_killed_run_is_replaced_not_read(node, tmp_path):
    """A worker of an earlier run was SIGKILLed and left its output ring in /dev/shm. The next
    run on the same names must not take that dead ring for its worker's: the collector looks
    for a ring that ended again, and the new worker's replaces the stale one."""
    import subprocess
    import sys

    fanout, fanin = rings()
    stale = fanin.removeprefix("ring://") + ".0"
    maker = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stream_node.links.ring import Ring; "
         f"r = Ring.create({stale!r}, 4, 4096, groups={{'collector': 'work'}}); "
         "print('made', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline().strip() == "made"
    finally:
        maker.kill()
        maker.communicate()
    control = f"ipc://{tmp_path}/control"
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "3", *timing)
    worker = node("worker", "--control", control, "--input", fanout, "--output", fanin,
                  *timing)
    source = node("source", "--control", control, "--data", fanout, "--workers", "1",
                  "--frames", "300", "--shape", "x".join(map(str, SHAPE)), *timing)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err[-3000:]
    assert finish(collector)[0] == ExitCode.OK
    assert finish(worker)[0] == ExitCode.OK
    run = ledger(path, 300)
    assert run.missing == {}


@pytest.mark.timeout(120)
def test_reliable_mode_over_a_ring_fan_in_loses_nothing_when_a_worker_is_killed(node,
                                                                               tmp_path):
    """ZeroMQ fan-out with --reliable, ring fan-in: ACKs travel on the control channel, so the
    frames a killed worker held (taken, or in its ring unread) are sent again to the other and
    the file is complete; its ring's published frames are written once (duplicates counted)."""
    _, fanin = rings()
    control, fanout = f"ipc://{tmp_path}/control", f"ipc://{tmp_path}/fanout"
    status = free_tcp_endpoint()
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "1", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--status", status, "--drain-timeout", "4", *timing)
    workers = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                    "--name", f"w{i}", "--index", str(i), *timing) for i in range(2)]
    source = node("source", "--control", control, "--data", fanout, "--workers", "2",
                  "--frames", "800", "--shape", "x".join(map(str, SHAPE)), "--reliable",
                  "--kernels", str(slow_chain(tmp_path)), *timing)
    wait_run_started(source)
    wait_written(status, 100)
    os.kill(workers[0].pid, signal.SIGKILL)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err[-3000:]
    assert finish(collector)[0] == ExitCode.OK
    run = ledger(path, 800)
    assert run.missing == {} and run.received.all()
    assert run.counters["reports"]["source"]["redispatched"] > 0


@pytest.mark.timeout(60)
def test_without_workers_a_collector_on_another_ring_is_refused_naming_it(node, tmp_path):
    """--workers 0, but the collector's --input is not the source's ring: refused at START,
    naming the ring it cannot find, before any frame."""
    fanout, fanin = rings()
    control = f"ipc://{tmp_path}/control"
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     *timing)
    source = node("source", "--control", control, "--data", fanout, "--workers", "0",
                  "--frames", "5", "--shape", "x".join(map(str, SHAPE)), *timing)
    code, _out, err = finish(source)
    assert code == ExitCode.CONFIG, err[-3000:]
    assert f"no ring '{fanin.removeprefix('ring://')}' on this host" in err
    assert finish(collector)[0] == ExitCode.CONFIG
    assert not path.exists()  # refused before the file was made
