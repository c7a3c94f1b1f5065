"""Reliable fan-out (links/credit.py) over real ipc sockets: frames leave only against credit,
stay held until acknowledged, and a lost worker's frames go to another."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq

from stream_node.links.credit import CreditInput, CreditOutput
from stream_node.links.transport import LinkLimits
from stream_node.model.frame import FrameHeader, MsgType, control_message, frame_header

RUN = 0xC0FFEE
SHAPE = (8, 8)
LIMITS = LinkLimits(linger_ms=0)


def pixels(frame_id: int) -> np.ndarray:
    return np.full(SHAPE, frame_id, np.uint16)


class Rig:
    """A source's CreditOutput with its control socket, and the workers a test adds."""

    def __init__(self, ctx: zmq.Context, tmp_path, window: int) -> None:
        self.ctx = ctx
        self.endpoint = f"ipc://{tmp_path}/data"
        self.closing: list = []
        self.out = CreditOutput(ctx, self.endpoint, LIMITS, SHAPE[0] * SHAPE[1] * 2, window)
        self.closing.append(self.out)
        self.control = ctx.socket(zmq.PULL)  # the hub's socket in a run; here nobody sends
        self.closing.append(self.control)
        self.control.bind(f"ipc://{tmp_path}/control")
        self.control_calls = 0
        self.out.attach_control(RUN, self.control, self._on_control)

    def _on_control(self) -> None:
        self.control_calls += 1

    def worker(self, identity: bytes, credit: int) -> CreditInput:
        inp = CreditInput(self.ctx, [self.endpoint], LIMITS, identity, RUN, credit)
        self.closing.append(inp)
        inp.wait_ready(5.0, lambda: None)  # the handshake, then the first grant
        return inp

    def commit(self, *frame_ids: int) -> None:
        for frame_id in frame_ids:
            buffer = self.out.reserve(SHAPE, np.dtype(np.uint16), 1000)
            assert buffer is not None, f"no room for frame {frame_id}"
            buffer[:] = pixels(frame_id)
            assert self.out.commit(frame_header(buffer, RUN, frame_id), buffer)

    def pump(self, done: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        """Let the source take credits and dispatch until `done()` (a poll with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.out.wait(20)

    def held_by(self, identity: bytes) -> list[int]:
        return sorted(i for i, (w, _, _) in self.out.held.items() if w == identity)

    def close(self) -> None:
        for item in reversed(self.closing):
            if isinstance(item, zmq.Socket):
                item.close(linger=0)
            else:
                item.close()


@pytest.fixture
def rig(ctx, tmp_path):
    made: list[Rig] = []

    def make(window: int = 16) -> Rig:
        made.append(Rig(ctx, tmp_path, window))
        return made[-1]

    yield make
    for r in made:
        r.close()


def received(batch: list) -> list[tuple[int, bytes]]:
    return [(FrameHeader.parse(h.buffer).frame_id, p.bytes) for h, p in batch]


def test_a_worker_is_known_by_its_identity_once_it_grants_credit(rig):
    r = rig()
    r.worker(b"w0", 3)
    r.pump(lambda: r.out.credit.get(b"w0") == 3, "w0's first credit")
    assert r.control_calls > 0  # the control channel is served while credit is awaited


def test_frames_are_dispatched_only_against_credit(rig):
    r = rig(window=16)
    w0 = r.worker(b"w0", 2)
    r.commit(*range(6))
    r.pump(lambda: len(r.out.held) == 2, "two frames against two credits")
    assert len(r.out.pending) == 4 and r.out.in_window() == 6 and r.out.credit[b"w0"] == 0
    got: list[tuple[int, bytes]] = []
    while len(got) < 6:
        r.out.wait(20)
        # Sent but not yet passed on by the worker: never more than its credit.
        assert len(r.out.held) - len(got) <= 2
        batch = w0.take(20)
        got.extend(received(batch))
        w0.release()  # one credit back per frame passed on
    assert got == [(i, pixels(i).tobytes()) for i in range(6)]
    assert not r.out.pending and r.held_by(b"w0") == list(range(6))


def test_acknowledged_frames_leave_the_window_and_make_room(rig):
    r = rig(window=3)
    r.worker(b"w0", 8)
    r.commit(0, 1, 2)
    r.pump(lambda: len(r.out.held) == 3, "three frames sent")
    assert r.out.reserve(SHAPE, np.dtype(np.uint16), 30) is None  # the window is full
    assert r.out.put(frame_header(pixels(3), RUN, 3), pixels(3), 30) is False
    r.out.acked([0, 2, 99])  # an id it never held is ignored
    assert sorted(r.out.held) == [1] and r.out.in_window() == 1
    r.commit(3, 4)
    assert r.out.in_window() == 3
    r.out.acked(np.array([1, 3, 4], np.uint64))
    r.pump(lambda: not r.out.held, "every frame acknowledged")
    assert r.out.in_window() == 0


def test_a_lost_workers_frames_are_sent_again_to_another(rig):
    r = rig()
    w0 = r.worker(b"w0", 3)
    r.commit(0, 1, 2)
    r.pump(lambda: r.held_by(b"w0") == [0, 1, 2], "three frames held by w0")
    first = w0.take(2000)
    assert first  # w0 has them, but never passes them on (it froze)
    w1 = r.worker(b"w1", 3)
    r.pump(lambda: r.out.credit.get(b"w1") == 3, "w1's credit")
    r.out.acked([1])  # the collector wrote frame 1 (w0 passed it on before freezing)
    r.out.workers_lost([b"w0"])
    assert r.out.redispatched == 2
    r.pump(lambda: r.held_by(b"w1") == [0, 2], "w0's un-acked frames held by w1")
    again: list[tuple[int, bytes]] = []
    while len(again) < 2:
        again.extend(received(w1.take(2000)))
        w1.release()
    assert again == [(0, pixels(0).tobytes()), (2, pixels(2).tobytes())]
    assert r.held_by(b"w0") == []


def freeze_and_lose(r: Rig, w0: CreditInput) -> None:
    """w0 (credit 1) takes frame 0 and freezes; its heartbeat expires; it wakes up and passes
    the frame on (one credit), and the source takes that credit while w0 still counts as lost."""
    r.commit(0)
    r.pump(lambda: r.held_by(b"w0") == [0], "frame 0 held by w0")
    assert len(w0.take(2000)) == 1
    r.out.workers_lost([b"w0"])
    assert r.out.redispatched == 1 and b"w0" not in r.out.credit
    w0.release()  # it passed the frame on: one credit
    # A message after the credits on the same pipe: once it is rejected, they were taken.
    w0.sock.send_multipart(control_message(MsgType.HEARTBEAT, RUN))
    r.pump(lambda: r.out.rejected == 1, "the marker behind w0's credits")


def test_a_lost_workers_credit_is_ignored_while_it_counts_as_lost(rig):
    r = rig()
    w0 = r.worker(b"w0", 1)
    freeze_and_lose(r, w0)
    assert b"w0" not in r.out.credit
    assert [frame_id for frame_id, _, _ in r.out.pending] == [0]


def test_a_worker_that_comes_back_takes_work_again(rig):
    r = rig()
    w0 = r.worker(b"w0", 1)
    freeze_and_lose(r, w0)
    r.out.workers_lost([])  # its heartbeats came back
    r.pump(lambda: r.held_by(b"w0") == [0], "frame 0 sent again to the returned w0",
           timeout_s=1.0)


def test_messages_that_are_not_a_credit_of_this_run_are_rejected(rig, ctx):
    r = rig()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.ROUTING_ID, b"rogue")
    try:
        rogue.connect(r.endpoint)
        rogue.send_multipart(control_message(MsgType.CREDIT, RUN + 1, frame_id=5))  # other run
        rogue.send_multipart(control_message(MsgType.HEARTBEAT, RUN))  # not a credit
        rogue.send_multipart([b"junk", b""])  # no header at all
        r.pump(lambda: r.out.rejected == 3, "three rejected messages")
        assert b"rogue" not in r.out.credit
        rogue.send_multipart(control_message(MsgType.CREDIT, RUN, frame_id=2))
        r.pump(lambda: r.out.credit.get(b"rogue") == 2, "a credit of this run")
    finally:
        rogue.close(linger=0)


def test_the_description_names_the_window_and_its_memory(rig):
    r = rig(window=64)
    text = r.out.describe()
    assert text.startswith("reliable fan-out (credit), window 64 frames (~0 MiB); link memory")


def test_a_frame_not_acknowledged_in_time_is_sent_again_though_its_worker_lives(rig, ctx, tmp_path):
    """The worker is alive and took the frame, but it never reached the collector (a partition
    between them, a link queue dropped): no ACK comes. Before, only a worker lost on control
    had its frames sent again, so such frames were lost in reliable mode."""
    r = rig()
    r.out.resend_after_s = 0.3
    w0 = r.worker(b"w0", 1)
    r.commit(0)
    r.pump(lambda: r.held_by(b"w0") == [0], "frame 0 held by w0")
    assert [h for h, _ in received(w0.take(1000))] == [0]  # w0 got it... and it goes no further
    w1 = r.worker(b"w1", 1)
    r.pump(lambda: r.held_by(b"w1") == [0], "frame 0 sent again, to whoever has credit",
           timeout_s=5.0)
    assert r.out.resent == 1
    r.out.acked([0])  # the copy got through
    assert r.out.in_window() == 0 and not r.out.sent_at
    w1.release()
