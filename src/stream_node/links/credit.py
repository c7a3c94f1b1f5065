"""Reliable fan-out: credit-based dispatch on ROUTER/DEALER (the zguide's credit pattern).

PUSH round-robin hands frames to a worker that cannot take them and forgets them once sent, so
a worker that dies takes its frames with it. Here each worker says how many frames it can take
(CREDIT), the source sends only to a worker with credit, and keeps every frame until the
collector says it is written (ACK). The frames a lost worker held are sent again to the others;
the collector writes each id once, so a late copy from a worker that was only frozen is counted
as a duplicate and dropped. Credit also sends each frame to whichever worker is free, so one
slow worker holds at most its credit, never the run.

Memory: the source holds at most `window` frames (sent but not yet written, or waiting for
credit); each worker at most its credit.

A frame not ACKed within `resend_after_s` of being sent is sent again, whatever the cause: a
worker alive on control may still lose frames between itself and the collector (a partition
that drops its data link, a queue dropped when a ZeroMQ heartbeat closes the link). Only the
collector's ACK says a frame is safe; the collector writes each id once, so a copy that arrives
late is counted as a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import zmq

from stream_node.links.transport import LinkLimits, bind, data_socket, send_frame
from stream_node.links.zmq_links import PullInput
from stream_node.model.frame import FrameHeader, MsgType, control_message

log = logging.getLogger(__name__)


class CreditOutput:
    """The source's end: a ROUTER that sends a frame only where a worker granted credit."""

    def __init__(self, ctx: zmq.Context, endpoint: str, limits: LinkLimits, frame_bytes: int,
                 window: int, resend_after_s: float = 10.0) -> None:
        self.sock = data_socket(ctx, zmq.ROUTER, limits)
        # A send to a worker whose connection is gone raises instead of vanishing silently.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        bind(self.sock, endpoint, "data")
        self.limits = limits
        self.frame_bytes = frame_bytes
        self.window = window
        self.run_id = 0
        self.credit: dict[bytes, int] = {}
        self.parked: dict[bytes, int] = {}  # credit of workers counted lost, for their return
        self.held: dict[int, tuple[bytes, bytes, Any]] = {}  # id -> (worker, header, payload)
        self.sent_at: dict[int, float] = {}  # id -> when it was (last) sent
        self.resend_after_s = resend_after_s
        self.resent = 0  # frames sent again because no ACK came in time
        self._next_check = 0.0
        self.pending: deque[tuple[int, bytes, Any]] = deque()  # accepted, waiting for credit
        self.lost: set[bytes] = set()
        self.redispatched = 0
        self.rejected = 0  # data-socket messages that were not a credit of this run
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self._on_control: Callable[[], None] = lambda: None

    def attach_control(self, run_id: int, sock: zmq.Socket,
                       on_control: Callable[[], None]) -> None:
        """Wake for the control channel too: ACKs free the window, and a lost worker's frames
        must be sent again even while the source waits for nothing else."""
        self.run_id = run_id
        self.poller.register(sock, zmq.POLLIN)
        self._on_control = on_control

    # -- FrameOutput ---------------------------------------------------------------------

    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        # A new buffer per frame: it is kept until the collector has written the frame.
        return np.empty(shape, dtype) if self._room(timeout_ms) else None

    def commit(self, header: FrameHeader, buffer: Any) -> bool:
        self.pending.append((header.frame_id, header.pack(), buffer))
        self._dispatch()
        return True

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        return self._room(timeout_ms) and self.commit(header, payload)

    def end(self) -> None:
        """The end of the run travels on the control channel; held frames stay until ACKed."""

    def close(self) -> None:
        self.sock.close(linger=self.limits.linger_ms)

    def describe(self) -> str:
        return (f"reliable fan-out (credit), window {self.window} frames "
                f"(~{self.window * self.frame_bytes / 2**20:.0f} MiB); "
                + self.limits.describe(self.frame_bytes))

    def _room(self, timeout_ms: int) -> bool:
        """Whether the window takes one more frame, waiting up to `timeout_ms` for ACKs."""
        self.wait(0)
        if self.in_window() >= self.window:
            self.wait(timeout_ms)
        return self.in_window() < self.window

    # -- what the source tells it --------------------------------------------------------

    def in_window(self) -> int:
        return len(self.held) + len(self.pending)

    def acked(self, frame_ids: Iterable[int]) -> None:
        for frame_id in frame_ids:
            self.held.pop(int(frame_id), None)
            self.sent_at.pop(int(frame_id), None)

    def workers_lost(self, identities: Sequence[bytes]) -> None:
        """Send again what the lost workers held; one that comes back takes work again."""
        now_lost = set(identities)
        for identity in now_lost - self.lost:
            self._redispatch(identity, "its heartbeat expired")
        for identity in self.lost - now_lost:  # back: it can take what it could before
            self.credit[identity] = self.credit.get(identity, 0) + self.parked.pop(identity, 0)
        self.lost = now_lost

    def wait(self, timeout_ms: int) -> None:
        """Take credits and control messages for up to `timeout_ms`, then send what credit
        allows."""
        events = dict(self.poller.poll(timeout_ms))
        if self.sock in events:
            self._take_credits()
        self._on_control()  # also when nothing came: lost workers are judged there
        self._resend_unacked()
        self._dispatch()

    # -- inside --------------------------------------------------------------------------

    def _redispatch(self, identity: bytes, why: str) -> None:
        # Its credit is kept aside, not forgotten: a worker that was only frozen comes back
        # believing it may take that many frames, and sends credit only for frames it finishes.
        self.parked[identity] = self.parked.get(identity, 0) + self.credit.pop(identity, 0)
        again = sorted((fid, h, p) for fid, (w, h, p) in self.held.items() if w == identity)
        for frame_id, _, _ in again:
            del self.held[frame_id]
            self.sent_at.pop(frame_id, None)
        self.pending.extendleft(reversed(again))
        self.redispatched += len(again)
        if again:
            log.warning("source: worker %s lost (%s): %d frames it held sent again",
                        identity.decode(errors="replace"), why, len(again))

    def _resend_unacked(self) -> None:
        """Frames sent longer than `resend_after_s` ago and still not ACKed go out again,
        first in line (checked a few times a second, never per frame)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + min(0.25, self.resend_after_s / 4)
        stale = sorted(fid for fid, at in self.sent_at.items() if now - at > self.resend_after_s)
        if not stale:
            return
        for frame_id in stale:
            del self.sent_at[frame_id]
        again = [(fid, *self.held.pop(fid)[1:]) for fid in stale]
        self.pending.extendleft(reversed(again))
        self.resent += len(again)
        log.warning("source: %d frames not acknowledged by the collector within %.1f s (%s..%s) "
                    "sent again", len(again), self.resend_after_s, stale[0], stale[-1])

    def _take_credits(self) -> None:
        for _ in range(256):
            try:
                identity, header, *_ = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # a message with no header part
                self.rejected += 1
                continue
            try:
                parsed = FrameHeader.parse(header)
            except Exception:
                self.rejected += 1
                continue
            if parsed.msg_type != MsgType.CREDIT or parsed.run_id != self.run_id:
                self.rejected += 1
                continue
            book = self.parked if identity in self.lost else self.credit
            book[identity] = book.get(identity, 0) + parsed.frame_id

    def _dispatch(self) -> None:
        while self.pending:
            worker = max(self.credit, key=self.credit.__getitem__, default=None)
            if worker is None or self.credit[worker] <= 0:
                return
            frame_id, header, payload = self.pending.popleft()
            try:
                self.sock.send(worker, zmq.SNDMORE | zmq.NOBLOCK)
                send_frame(self.sock, header, payload, zmq.NOBLOCK)
            except zmq.Again:  # its pipe is full (credit above the HWMs): try again later
                self.pending.appendleft((frame_id, header, payload))
                return
            except zmq.ZMQError as exc:  # EHOSTUNREACH: its connection is gone
                self.pending.appendleft((frame_id, header, payload))
                self._redispatch(worker, exc.strerror)
                continue
            self.credit[worker] -= 1
            self.held[frame_id] = (worker, header, payload)
            self.sent_at[frame_id] = time.monotonic()


class CreditInput(PullInput):
    """A worker's end: a DEALER that grants credit for `credit` frames and one more for each
    frame it has passed on. The source knows it by its control identity, so a lost heartbeat
    names the frames to send again."""

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], limits: LinkLimits,
                 identity: bytes, run_id: int, credit: int) -> None:
        super().__init__(ctx, endpoints, limits, zmq.DEALER, identity)
        self.run_id = run_id
        self.credit = credit
        self.taken = 0

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None:
        super().wait_ready(timeout_s, meanwhile)
        self._grant(self.credit)

    def take(self, timeout_ms: int) -> list[list[Any]]:
        batch = super().take(timeout_ms)
        self.taken = len(batch)
        return batch

    def release(self) -> None:
        """The frames taken are passed on: that much credit again."""
        if self.taken:
            self._grant(self.taken)
            self.taken = 0

    def _grant(self, n: int) -> None:
        self.sock.send_multipart(control_message(MsgType.CREDIT, self.run_id, frame_id=n))
