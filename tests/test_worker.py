"""The worker stage (stages/worker.py) in-process: a real Worker in a thread, the test playing
the source (a ControlHub and the data fan-out) and the collector (a PULL socket), all over ipc.
START reaches the worker as a RunContract; what it forwards, drops, compresses and reports."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from stream_node.kernels.chain import chain_geometry
from stream_node.kernels.compression import decompress
from stream_node.links.control import ControlHub, Inbound, Liveness
from stream_node.links.credit import CreditOutput
from stream_node.links.endpoints import open_output
from stream_node.links.transport import LinkLimits, bind, data_socket, recv_parts
from stream_node.model.contract import Dispatch, FrameGeometry, RunContract
from stream_node.model.errors import PeerTimeout, ProtocolError, RunAborted
from stream_node.model.frame import (
    FLAG_FAILED,
    Encoding,
    FrameHeader,
    MsgType,
    dtype_code,
    frame_header,
    payload_view,
)
from stream_node.stages.worker import Worker, WorkerConfig

RUN = 0xFACE
SHAPE = (16, 24)
LIVENESS = Liveness(heartbeat_s=0.05, peer_timeout_s=3.0)
LIMITS = LinkLimits(linger_ms=0)
INDEX = 3


def pixels(frame_id: int) -> np.ndarray:
    return np.random.default_rng(frame_id).poisson(3.0, SHAPE).astype(np.uint16)


def start_body(**changes: Any) -> dict:
    geometry = FrameGeometry(SHAPE, np.dtype(np.uint16))
    fields: dict[str, Any] = {"output": geometry, "input": geometry, "frames": 10}
    fields.update(changes)
    return RunContract(**fields).to_wire()


class Rig:
    """The source's and the collector's ends of one worker's run, and the worker's thread."""

    def __init__(self, tmp_path, body: dict | None, reliable: bool = False,
                 ready_timeout_s: float = 5.0) -> None:
        self.ctx = zmq.Context()
        self.control, self.data, self.fanin = (f"ipc://{tmp_path}/{n}"
                                               for n in ("control", "data", "fanin"))
        self.hub: ControlHub | None = None
        self.out: Any = None
        self.inbox: list[Inbound] = []
        self.collector = data_socket(self.ctx, zmq.PULL, LIMITS)
        bind(self.collector, self.fanin, "collector's input")
        if body is not None:
            self.hub = ControlHub(self.ctx, self.control, RUN, body, LIVENESS)
        self.worker = Worker(WorkerConfig(self.control, [self.data], self.fanin, name="w0",
                                          index=INDEX, ready_timeout_s=ready_timeout_s,
                                          liveness=LIVENESS, limits=LIMITS), self.ctx)
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.worker.run()
        except BaseException as exc:
            self.error = exc

    def open_data(self, reliable: bool = False) -> None:
        if reliable:
            self.out = CreditOutput(self.ctx, self.data, LIMITS, 1 << 16, window=16)
            assert self.hub is not None
            self.out.attach_control(RUN, self.hub.sock, self._control)
        else:
            self.out = open_output(self.ctx, self.data, LIMITS, 1 << 16, ring_slots=4)

    def _control(self) -> None:
        assert self.hub is not None
        self.inbox.extend(self.hub.poll(0))

    def serve(self, timeout_ms: int = 20) -> None:
        """One turn of the source's loop: control (and credits), bounded by `timeout_ms`."""
        if isinstance(self.out, CreditOutput):
            self.out.wait(timeout_ms)
        elif self.hub is not None:
            self.inbox.extend(self.hub.poll(timeout_ms))
        else:  # no source at all: only the worker's own time out can end the wait
            self.thread.join(timeout_ms / 1000)

    def until(self, done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert self.thread.is_alive() or done(), f"the worker ended: {self.error!r}"
            self.serve()

    def message(self, msg_type: MsgType) -> Inbound | None:
        return next((m for m in self.inbox if m.msg_type == msg_type), None)

    def ready(self) -> None:
        self.thread.start()
        self.until(lambda: self.message(MsgType.READY) is not None, "the worker's READY")

    def send(self, header: FrameHeader, payload: Any) -> None:
        if isinstance(self.out, CreditOutput):
            assert self.out.commit(header, payload)
        else:
            assert self.out.put(header, payload, 5000)

    def collect(self, n: int) -> list[tuple[FrameHeader, Any]]:
        got: list[tuple[FrameHeader, Any]] = []

        def arrived() -> bool:
            while self.collector.poll(0):
                header, payload = recv_parts(self.collector)
                got.append((FrameHeader.parse(header.buffer), payload.buffer))
            return len(got) >= n

        self.until(arrived, f"{n} frames at the collector")
        return got

    def finish(self) -> dict:
        assert self.hub is not None
        self.hub.broadcast(MsgType.FINISH, role="worker")
        self.until(lambda: self.message(MsgType.DONE) is not None, "the worker's DONE")
        self.thread.join(10)
        assert not self.thread.is_alive() and self.error is None, repr(self.error)
        done = self.message(MsgType.DONE)
        assert done is not None
        return done.body

    def ended(self, timeout_s: float = 10.0) -> BaseException | None:
        self.until(lambda: not self.thread.is_alive(), "the worker to end", timeout_s)
        return self.error

    def close(self) -> None:
        if self.thread.is_alive() and self.hub is not None:
            self.hub.broadcast(MsgType.ABORT, {"reason": "test teardown"})
        if self.thread.ident is not None:
            self.thread.join(15)
        for thing in (self.out, self.hub):
            if thing is not None:
                thing.close()
        self.collector.close(linger=0)
        if not self.thread.is_alive():  # never pull sockets from under a running worker
            self.ctx.destroy(linger=0)


@pytest.fixture
def rig(tmp_path):
    made: list[Rig] = []

    def make(body: dict | None, **kwargs: Any) -> Rig:
        made.append(Rig(tmp_path, body, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_worker_forwards_frames_under_its_index_and_reports_at_finish(rig):
    r = rig(start_body())
    r.open_data()
    r.ready()
    for i in range(3):
        r.send(frame_header(pixels(i), RUN, i, timestamp_ns=1000 + i), pixels(i))
    got = r.collect(3)
    assert sorted(h.frame_id for h, _ in got) == [0, 1, 2]
    for header, payload in got:
        assert header.sender == INDEX and header.run_id == RUN
        assert header.timestamp_ns == 1000 + header.frame_id
        assert np.array_equal(payload_view(header, payload), pixels(header.frame_id))
    report = r.finish()
    assert report["name"] == "w0" and report["frames"] == 3 and report["failed"] == 0
    assert report["bytes"] == 3 * pixels(0).nbytes
    assert r.result == report


def test_a_frame_of_another_run_is_dropped_and_counted_in_the_report(rig):
    r = rig(start_body())
    r.open_data()
    r.ready()
    r.send(frame_header(pixels(0), RUN + 1, 0), pixels(0))  # a frame of another run
    r.send(frame_header(pixels(1), RUN, 1), pixels(1))
    [(header, _)] = r.collect(1)  # same pipe, in order: the foreign one was handled first
    assert header.frame_id == 1
    report = r.finish()
    assert report["dropped"] == {"foreign": 1} and report["frames"] == 1


def test_a_worker_compresses_when_start_says_bslz4(rig):
    r = rig(start_body(compression="bslz4"))
    r.open_data()
    r.ready()
    r.send(frame_header(pixels(7), RUN, 7), pixels(7))
    [(header, payload)] = r.collect(1)
    assert header.encoding == Encoding.BSLZ4 and header.sender == INDEX
    assert header.payload_bytes == memoryview(payload).nbytes < pixels(7).nbytes
    assert decompress(payload, SHAPE, np.uint16).tobytes() == pixels(7).tobytes()
    r.finish()


def test_a_worker_runs_the_kernel_chain_start_names(rig):
    chain = [{"kernel": "bin2x2"}]
    out_shape, out_dtype = chain_geometry(chain, SHAPE, np.uint16)
    r = rig(start_body(kernels=(chain[0],), output=FrameGeometry(out_shape, out_dtype)))
    r.open_data()
    r.ready()
    frame = pixels(2)
    r.send(frame_header(frame, RUN, 2), frame)
    [(header, payload)] = r.collect(1)
    assert header.shape == out_shape and header.dtype_code == dtype_code(out_dtype)
    binned = frame.astype(np.uint64).reshape(8, 2, 12, 2).sum(axis=(1, 3))
    assert np.array_equal(payload_view(header, payload), binned)
    assert r.finish()["kernels"]["bin2x2"]["frames"] == 1


def test_a_frame_the_chain_cannot_take_goes_on_as_a_failure_record(rig):
    chain = [{"kernel": "bin2x2"}]
    out_shape, out_dtype = chain_geometry(chain, SHAPE, np.uint16)
    r = rig(start_body(kernels=(chain[0],), output=FrameGeometry(out_shape, out_dtype)))
    r.open_data()
    r.ready()
    wrong = np.zeros((4, 4), np.uint16)  # not the frame START announced
    r.send(frame_header(wrong, RUN, 5), wrong)
    [(header, payload)] = r.collect(1)
    assert header.flags & FLAG_FAILED and header.encoding == Encoding.MSGPACK
    assert header.frame_id == 5 and header.sender == INDEX
    assert header.shape == out_shape  # the record stands for a frame of the run's output
    reason = msgpack.unpackb(bytes(payload))["reason"]
    assert "chain input" in reason and "frame 5" in reason
    report = r.finish()
    assert (report["failed"], report["frames"]) == (1, 0)


def test_a_failure_record_from_upstream_is_passed_on_under_this_workers_index(rig):
    r = rig(start_body())
    r.open_data()
    r.ready()
    body = msgpack.packb({"reason": "the detector lost it"})
    failed = FrameHeader(MsgType.FRAME, run_id=RUN, frame_id=4, shape=SHAPE,
                         dtype_code=dtype_code(np.uint16), encoding=Encoding.MSGPACK,
                         payload_bytes=len(body), flags=FLAG_FAILED, sender=0)
    r.send(failed, body)
    [(header, payload)] = r.collect(1)
    assert header.flags & FLAG_FAILED and header.sender == INDEX
    assert bytes(payload) == body
    r.finish()


def test_in_reliable_mode_the_worker_grants_credit_under_its_control_identity(rig):
    r = rig(start_body(dispatch=Dispatch("credit", 5)))
    r.open_data(reliable=True)
    r.ready()
    [identity] = [p.identity for p in r.hub.all_peers() if p.role == "worker"]
    assert identity.startswith(f"worker:w0:{os.getpid()}:".encode())
    r.until(lambda: r.out.credit.get(identity) == 5, "the worker's credit of 5")
    for i in range(3):
        r.send(frame_header(pixels(i), RUN, i), pixels(i))
    got = r.collect(3)
    assert sorted(h.frame_id for h, _ in got) == [0, 1, 2]
    r.until(lambda: r.out.credit.get(identity) == 5, "the credit given back")
    r.finish()


def test_a_start_lacking_the_frame_shape_ends_the_worker_naming_it(rig):
    body = start_body()
    del body["shape"]
    r = rig(body)
    r.thread.start()
    error = r.ended()
    assert isinstance(error, ProtocolError) and "no 'shape'" in str(error)
    assert r.message(MsgType.READY) is None


@pytest.mark.parametrize(("msg_type", "said"), [
    (MsgType.ABORT, "source aborted the run: collector refused the run"),
    (MsgType.FINISH, "the run finished before this worker was ready"),
])
def test_the_end_of_the_run_before_the_worker_is_ready_ends_it(rig, msg_type, said):
    r = rig(start_body())  # no data output: the worker waits for its input
    r.thread.start()
    r.until(lambda: bool(r.hub and r.hub.peers), "the worker's HELLO")
    r.hub.broadcast(msg_type, {"reason": "collector refused the run"})
    error = r.ended()
    assert isinstance(error, RunAborted) and said in str(error)
    assert r.message(MsgType.READY) is None


def test_a_worker_without_a_source_times_out_naming_it(rig):
    r = rig(None, ready_timeout_s=0.3)
    r.thread.start()
    error = r.ended()
    assert isinstance(error, PeerTimeout)
    assert f"no START from the source at {r.control}" in str(error)


def test_a_worker_before_its_run_says_it_is_waiting(rig):
    r = rig(start_body())
    status = r.worker.status()
    assert (status["role"], status["name"], status["state"], status["run_id"]) == (
        "worker", "w0", "waiting", 0)
    assert r.worker.report() == {"name": "w0", "frames": 0, "bytes": 0, "stalls": 0,
                                 "failed": 0, "dropped": {}}


def test_a_serving_worker_keeps_its_chain_until_a_map_changes(tmp_path):
    """Run after run, the same chain (compiled, maps loaded) with its counters at 0; a map file
    written again (a new pedestal) builds anew; a chain with state of its own is never kept."""
    from stream_node.stages.worker import kept_chain

    shape = (32, 64)
    np.save(tmp_path / "pedestal.npy", np.zeros((3, *shape), np.float32))
    np.save(tmp_path / "gain.npy", np.ones((3, *shape), np.float32))
    spec = [{"kernel": "gain_correction", "pedestal": str(tmp_path / "pedestal.npy"),
             "gain": str(tmp_path / "gain.npy")}]
    first = kept_chain(spec, shape, np.dtype(np.uint16))
    first.apply(np.zeros(shape, np.uint16))
    assert first.counters["gain_correction"]["frames"] == 1
    again = kept_chain(spec, shape, np.dtype(np.uint16))
    assert again is first and again.counters["gain_correction"]["frames"] == 0
    np.save(tmp_path / "pedestal.npy", np.full((3, *shape), 2.0, np.float32))
    os.utime(tmp_path / "pedestal.npy", ns=(1, 1))  # another time, whatever the clock's grain
    assert kept_chain(spec, shape, np.dtype(np.uint16)) is not first
    dark = [{"kernel": "pedestal_update"}]
    assert kept_chain(dark, shape, np.dtype(np.uint16)) is not \
        kept_chain(dark, shape, np.dtype(np.uint16))
