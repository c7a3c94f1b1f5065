"""Bad input, missing and dead peers: each ends in a clear message and an exit code, no hang."""

from __future__ import annotations

import os
import random
import signal
import time

import h5py
import numpy as np
import pytest
import zmq

from conftest import finish, wait_run_started
from stream_node import ExitCode, FrameHeader, MsgType, SyntheticDetector, frame_header, read_run
from stream_node.links.control import ControlHub, Liveness
from test_pipeline import assert_ledger, start_roles


@pytest.mark.timeout(60)
def test_worker_that_never_starts_makes_source_time_out_clearly(node, ipc, tmp_path):
    control, fanout, fanin = ipc("control"), ipc("fanout"), ipc("fanin")
    collector = node("collector", "--control", control, "--input", fanin,
                     "--file", str(tmp_path / "x.h5"), "--peer-timeout", "3")
    source = node("source", "--control", control, "--data", fanout, "--workers", "2",
                  "--frames", "10", "--shape", "64x64", "--ready-timeout", "2")
    t0 = time.monotonic()
    code, _, err = finish(source, timeout=30)
    assert code == ExitCode.PEER_TIMEOUT
    assert "timed out after 2.0 s" in err and "workers ready 0/2" in err, err
    assert "collector ready" in err
    assert time.monotonic() - t0 < 20
    # The collector was told the run is off and ends by itself, recording nothing as written.
    assert finish(collector, timeout=30)[0] == ExitCode.ABORTED


@pytest.mark.timeout(60)
def test_source_without_any_peer_times_out(node, ipc):
    source = node("source", "--control", ipc("c"), "--data", ipc("d"), "--frames", "5",
                  "--ready-timeout", "1")
    code, _, err = finish(source, timeout=30)
    assert code == ExitCode.PEER_TIMEOUT and "collector never connected" in err, err


@pytest.mark.timeout(60)
def test_worker_without_source_times_out(node, ipc):
    worker = node("worker", "--control", ipc("c"), "--input", ipc("d"), "--output", ipc("o"),
                  "--ready-timeout", "1")
    code, _, err = finish(worker, timeout=30)
    assert code == ExitCode.PEER_TIMEOUT and "no START from the source" in err, err


@pytest.mark.timeout(60)
def test_existing_output_file_is_refused_and_left_untouched(node, ipc, tmp_path):
    path = tmp_path / "taken.h5"
    path.write_bytes(b"precious")
    source, collector, procs = start_roles(node, ipc, path, 1, frames=10, ready_timeout=5)
    code, _, err = finish(source)
    assert code == ExitCode.CONFIG and "exists" in err and "--overwrite" in err, err
    assert finish(collector)[0] == ExitCode.CONFIG
    assert path.read_bytes() == b"precious"
    for proc in procs:  # told ABORT, or (if it came after the source left) no START in time
        assert finish(proc)[0] in (ExitCode.ABORTED, ExitCode.PEER_TIMEOUT)


@pytest.mark.timeout(90)
def test_overwrite_replaces_an_existing_file(node, ipc, tmp_path):
    path = tmp_path / "taken.h5"
    path.write_bytes(b"old")
    source, *_ = start_roles(node, ipc, path, 1, frames=10, extra_collector=("--overwrite",))
    assert finish(source)[0] == ExitCode.OK
    assert_ledger(read_run(path), 10)


@pytest.mark.timeout(90)
def test_malformed_messages_to_a_worker_are_counted_and_good_frames_arrive(node, ipc, tmp_path):
    """A stray sender on a worker's input: its junk is counted, the run's frames all arrive."""
    rogue_endpoint = ipc("rogue")
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.PUSH)
    rogue.setsockopt(zmq.SNDTIMEO, 20000)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.bind(rogue_endpoint)
    path = tmp_path / "run.h5"
    try:
        source, _collector, _procs = start_roles(
            node, ipc, path, 1, frames=200, extra_worker=("--input", rogue_endpoint))
        foreign = frame_header(np.zeros((128, 256), np.uint16), run_id=12345, frame_id=3)
        junk = [[b"garbage"], [b"\x00" * 96, b"x"], [b"SNFR" + b"\x00" * 92, b""],
                [foreign.pack(), np.zeros((128, 256), np.uint16).tobytes()],
                [b"one", b"two", b"three"]]
        for parts in junk:
            rogue.send_multipart(parts)
        code, out, err = finish(source)
    finally:
        rogue.close()
    assert code == ExitCode.OK, err
    run = read_run(path)
    assert_ledger(run, 200)
    dropped = run.counters["reports"]["workers"]["w0"]["dropped"]
    assert dropped == {"malformed": 4, "foreign": 1}, dropped
    assert "malformed" in out  # the summary shows the worker's drops


class HubPlayingSource:
    """The test plays the source with the package's real hub and a real PUSH socket."""

    def __init__(self, control: str, data: str, frames: int, shape=(32, 64)) -> None:
        self.ctx = zmq.Context.instance()
        self.run_id = 0xABCDEF
        start = {"shape": list(shape), "dtype": "uint16", "frames": frames, "first_frame_id": 0}
        self.hub = ControlHub(self.ctx, control, self.run_id, start, Liveness(0.2, 5.0))
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDTIMEO, 10000)
        self.push.setsockopt(zmq.LINGER, 2000)
        self.push.connect(data)
        self.det = SyntheticDetector(shape, "uint16")

    def wait_for(self, msg_type: MsgType, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.hub.poll(100):
                if msg.msg_type == msg_type:
                    return msg.body
        raise AssertionError(f"no {msg_type.name} within {timeout} s")

    def send(self, frame_id: int, run_id: int | None = None) -> None:
        frame = self.det.frame(frame_id)
        header = frame_header(frame, self.run_id if run_id is None else run_id, frame_id)
        self.push.send_multipart([header.pack(), frame])

    def close(self) -> None:
        self.push.close()
        self.hub.close()


@pytest.mark.timeout(90)
def test_collector_writes_shuffled_frames_at_their_index_once_and_rejects_bad_input(
        node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    control, data = ipc("control"), ipc("data")
    collector = node("collector", "--control", control, "--input", data, "--file", str(path))
    src = HubPlayingSource(control, data, frames=60)
    try:
        src.wait_for(MsgType.READY)
        # Bad input first: the collector reads the socket in order, so all of it is judged.
        src.send(5, run_id=999)  # foreign run
        src.push.send_multipart([b"\x00" * 10, b"x"])  # truncated header
        src.push.send_multipart([b"not a frame"])  # wrong part count
        wrong_shape = np.zeros((8, 8), np.uint16)
        src.push.send_multipart([frame_header(wrong_shape, src.run_id, 7).pack(), wrong_shape])
        end = FrameHeader(MsgType.END, run_id=src.run_id).pack()
        src.push.send_multipart([end, b"\x80"])  # control type on the data socket
        order = list(range(60))
        random.Random(1).shuffle(order)
        for i, frame_id in enumerate(order):
            src.send(frame_id)
            if i % 15 == 0:
                src.send(frame_id)  # a duplicate
        src.hub.broadcast(MsgType.END, {"last_frame_id": 59, "frame_count": 60}, frame_id=59)
        drained = src.wait_for(MsgType.DRAINED)
        assert drained["frames_written"] == 60 and drained["missing"] == 0
        src.hub.broadcast(MsgType.FINISH, {"workers": {}, "source": {}})
        done = src.wait_for(MsgType.DONE)
    finally:
        src.close()
    assert finish(collector)[0] == ExitCode.OK
    assert done["duplicates"] == 4
    assert done["dropped"] == {"foreign": 1, "malformed": 2, "invalid": 1, "unexpected": 1}
    run = read_run(path)
    det = SyntheticDetector((32, 64), "uint16")
    assert [run.frames[i].tobytes() for i in range(60)] == [det.frame(i).tobytes()
                                                            for i in range(60)]
    with h5py.File(path) as f:
        arrival = f["entry/frames/arrival_ns"][()]
        assert np.argsort(arrival, kind="stable").tolist() == sorted(
            range(60), key=lambda i: order.index(i))
        assert f["entry/data/data"].chunks == (1, 32, 64)
    assert run.counters["dropped_foreign"] == 1 and run.counters["duplicates"] == 4


@pytest.mark.timeout(90)
def test_frames_never_sent_are_recorded_missing_with_reason(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    control, data = ipc("control"), ipc("data")
    collector = node("collector", "--control", control, "--input", data, "--file", str(path),
                     "--drain-timeout", "1")
    src = HubPlayingSource(control, data, frames=20)
    try:
        src.wait_for(MsgType.READY)
        for frame_id in range(20):
            if frame_id not in (3, 11):
                src.send(frame_id)
        src.hub.broadcast(MsgType.END, {"last_frame_id": 19, "frame_count": 20}, frame_id=19)
        drained = src.wait_for(MsgType.DRAINED)
        src.hub.broadcast(MsgType.FINISH, {})
        src.wait_for(MsgType.DONE)
    finally:
        src.close()
    assert drained["missing"] == 2
    assert finish(collector)[0] == ExitCode.FRAMES_MISSING
    run = read_run(path)
    assert sorted(run.missing) == [3, 11]
    assert "drain timeout" in run.missing[3]
    assert not run.received[3] and run.received[4]
    assert not run.frames[3].any()


@pytest.mark.timeout(90)
def test_collector_killed_mid_run_makes_source_and_workers_stop(node, ipc, tmp_path):
    source, collector, procs = start_roles(node, ipc, tmp_path / "run.h5", 2, frames=100000,
                                           extra_source=("--rate", "200"))
    # Kill it once the source logged that every peer is ready (a handshake, not a delay).
    wait_run_started(source)
    os.kill(collector.pid, signal.SIGKILL)
    code, _, err = finish(source, timeout=30)
    assert code == ExitCode.PEER_TIMEOUT and "collector" in err, err
    assert "disconnected" in err or "silent" in err, err
    for proc in procs:
        assert finish(proc, timeout=30)[0] in (ExitCode.ABORTED, ExitCode.PEER_TIMEOUT)


@pytest.mark.timeout(90)
def test_a_frame_a_worker_could_not_process_is_recorded_with_its_reason(node, ipc, tmp_path):
    from stream_node.model.frame import failure_record

    path = tmp_path / "run.h5"
    control, data = ipc("control"), ipc("data")
    collector = node("collector", "--control", control, "--input", data, "--file", str(path),
                     "--drain-timeout", "30")
    src = HubPlayingSource(control, data, frames=10)
    try:
        src.wait_for(MsgType.READY)
        for frame_id in range(10):
            if frame_id == 4:
                header = frame_header(src.det.frame(4), src.run_id, 4)
                src.push.send_multipart(failure_record(header, (32, 64), np.dtype("uint16"),
                                                       "kernel 'boom' failed on frame 4", 3))
            else:
                src.send(frame_id)
        src.hub.broadcast(MsgType.END, {"last_frame_id": 9, "frame_count": 10}, frame_id=9)
        drained = src.wait_for(MsgType.DRAINED, timeout=10)  # no drain timeout: accounted for
        src.hub.broadcast(MsgType.FINISH, {})
        src.wait_for(MsgType.DONE)
    finally:
        src.close()
    assert drained["missing"] == 1
    assert finish(collector)[0] == ExitCode.FRAMES_MISSING
    run = read_run(path)
    assert run.missing == {4: "worker 3: kernel 'boom' failed on frame 4"}
