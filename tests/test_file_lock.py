"""One writer per run file (issue #18 A): a file a collector is writing is refused to every other
collector, with or without --overwrite or --resume, naming the pid that holds it; the live run
loses nothing; and a collector that died leaves nothing that stops --resume.

SWMR lets a second writer open a file being written (HDF5 drops its own file lock once the
writer is in SWMR mode), so without a lock of stream-node's own a second collector with
--overwrite truncated a live run's file under its writer.
"""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

from conftest import finish, free_tcp_endpoint, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run
from stream_node.model.errors import OutputExistsError
from stream_node.storage.writer import RunWriter

SHAPE = (64, 128)
TIMING = ("--peer-timeout", "2", "--ready-timeout", "20")


def start_run(node, path, frames, rate, collector_flags=(), source_flags=()):
    """A source, one worker and a collector writing `path`, on endpoints of their own."""
    control, fanout, fanin = (free_tcp_endpoint() for _ in range(3))
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "3", *TIMING, *collector_flags)
    node("worker", "--control", control, "--input", fanout, "--output", fanin, *TIMING)
    source = node("source", "--control", control, "--data", fanout, "--frames", str(frames),
                  "--shape", "x".join(map(str, SHAPE)), "--rate", str(rate), *TIMING,
                  *source_flags)
    return source, collector


def assert_every_frame(path, frames=None):
    """Every frame of the run is in the file, byte-equal to what the source made."""
    run = read_run(path)
    count = len(run.frame_ids)
    if frames is not None:
        assert count == frames
    assert run.complete and run.missing == {} and run.received.all()
    det = SyntheticDetector(SHAPE, "uint16")
    for i in range(count):
        assert run.frames[i].tobytes() == det.frame(i).tobytes(), f"frame {i} differs"
    return count


@pytest.mark.timeout(150)
@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--resume",)],
                         ids=["plain", "overwrite", "resume"])
def test_a_file_being_written_is_refused_to_a_second_collector(node, tmp_path, flags):
    path = tmp_path / "run.h5"
    status = free_tcp_endpoint()
    source, first = start_run(node, path, 100000, 200,
                              ("--flush-interval", "0.1", "--status", status))
    wait_run_started(source)
    wait_written(status, 40)

    other_source, second = start_run(node, path, 10, 100, flags)
    code, _, err = finish(second)
    assert code == ExitCode.CONFIG, err
    assert f"{path} is being written by another collector (pid {first.pid}" in err, err
    assert finish(other_source)[0] == ExitCode.CONFIG

    # The first run goes on untouched: stopped now, every frame it sent is in its file.
    source.send_signal(signal.SIGINT)
    code, _, err = finish(source)
    assert code == ExitCode.OK, err
    code, _, err = finish(first)
    assert code == ExitCode.OK, err
    assert assert_every_frame(path) >= 40
    assert not (tmp_path / "run.h5.lock").exists(), "a clean close leaves no lock file"


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("h5clear") is None,
                    reason="resuming a file a dead collector left needs h5clear (apt install "
                           "hdf5-tools; .ci/run installs it)")
def test_resume_after_a_killed_collector_takes_the_lock_it_left(node, tmp_path):
    """The kernel drops a dead process's flock: the lock file it leaves names a dead pid and
    stops nobody."""
    path = tmp_path / "run.h5"
    status = free_tcp_endpoint()
    control, fanout, fanin = (free_tcp_endpoint() for _ in range(3))

    def collector(*extra):
        return node("collector", "--control", control, "--input", fanin, "--file", str(path),
                    "--drain-timeout", "3", "--flush-interval", "0.1", "--status", status,
                    *TIMING, *extra)

    first = collector()
    node("worker", "--control", control, "--input", fanout, "--output", fanin, *TIMING)
    source = node("source", "--control", control, "--data", fanout, "--frames", "300",
                  "--shape", "x".join(map(str, SHAPE)), "--rate", "150",
                  "--collector-restart", "30", *TIMING)
    wait_run_started(source)
    wait_written(status, 40)
    first.kill()
    first.communicate()
    lock = tmp_path / "run.h5.lock"
    assert lock.read_bytes().split(b"\n", 1)[0] == str(first.pid).encode()

    second = collector("--resume")
    code, _, err = finish(source)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    assert finish(second)[0] in (ExitCode.OK, ExitCode.FRAMES_MISSING)
    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(300)) and not written & set(run.missing)
    assert not lock.exists()


def test_a_second_writer_in_any_mode_is_refused_until_the_first_closes(tmp_path):
    """The lock is per open file, so it holds within one process too: a library user gets the
    same refusal, and the first writer's file is not touched."""
    path = tmp_path / "run.h5"
    first = RunWriter(path, SHAPE, "uint16", 2, metadata={"run_id": 3})
    frame = SyntheticDetector(SHAPE, "uint16").frame(0)
    first.write(0, frame, 0, 0)
    first.flush()
    for mode in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OutputExistsError, match=f"being written by another collector "
                                                    f"\\(pid {os.getpid()}"):
            RunWriter(path, SHAPE, "uint16", 2, metadata={"run_id": 3}, **mode)
    first.write(1, frame, 0, 0)
    first.finalize(2, {}, {})
    first.close()
    assert not (tmp_path / "run.h5.lock").exists()
    with read_run(path) as run:
        assert run.complete and run.received.all()
    again = RunWriter(path, SHAPE, "uint16", 1, overwrite=True)
    again.close()
