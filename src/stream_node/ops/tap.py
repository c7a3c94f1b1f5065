"""The `latest` tap: the newest written frames for live viewers, never at the data path's cost.

The collector offers each written frame; the tap publishes at most `max_rate` of them per second
on an XPUB socket with a tiny send queue and `XPUB_NODROP`, sent with NOBLOCK: when a viewer is
slow the send fails at once and the frame is counted as dropped for the tap (the file has it all
the same). The frame goes out as the very message buffers the collector received (zero-copy).
`subscribe` is the other end, for analysis code and `stream-node view`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from stream_node.kernels import compression
from stream_node.links.transport import bind
from stream_node.model.errors import PeerTimeout, ProtocolError
from stream_node.model.frame import (
    FLAG_FAILED,
    Encoding,
    FrameHeader,
    MsgType,
    control_message,
    dtype_of,
    payload_view,
)

QUEUE = 2  # frames a tap or a subscriber queues: enough to ride out a hiccup, never a backlog
SOCKET_BUFFER = 1 << 20  # bytes the kernel may hold per tap connection
DEFAULT_RATE = 10.0  # frames/s published: a live view needs no more


class Tap:
    """Publishes the newest frames on `endpoint` (bound here), at most `max_rate` per second."""

    def __init__(self, ctx: zmq.Context, endpoint: str, max_rate: float = DEFAULT_RATE) -> None:
        self.endpoint = endpoint
        self.period = 1.0 / max_rate if max_rate > 0 else 0.0
        self.sent = 0
        self.dropped = 0  # a subscriber's queue was full: not sent (the data path never waits)
        self.skipped = 0  # not offered to subscribers: the rate limit
        self._next = 0.0
        self._run_id = 0
        self.sock = ctx.socket(zmq.XPUB)
        # NODROP turns "a subscriber's queue is full" into EAGAIN, so drops can be counted.
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDHWM, QUEUE)
        # A small kernel buffer too: what waits there is old news to a viewer (and memory).
        self.sock.setsockopt(zmq.SNDBUF, SOCKET_BUFFER)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            bind(self.sock, endpoint, "tap", secure=False)
        except Exception:
            self.sock.close()
            raise

    def offer(self, parts: Sequence[Any], run_id: int = 0, copy: bool = False) -> None:
        """Publish [header, payload] if the rate allows and no subscriber is full; never waits.
        `copy`: the payload is a ring slot that is reused once written, so it is copied."""
        now = time.monotonic()
        if now < self._next:
            self.skipped += 1
            return
        self._next = now + self.period
        self._run_id = run_id
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            self.dropped += 1
        else:
            self.sent += 1

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "skipped": self.skipped}

    def close(self, end_wait_s: float = 0.5) -> None:
        """Tell subscribers the run ended (END), waiting briefly for room: the data path is
        over by now, so a short wait costs the run nothing."""
        end = control_message(MsgType.END, self._run_id)
        deadline = time.monotonic() + end_wait_s
        while True:
            try:
                self.sock.send_multipart(end, zmq.NOBLOCK)
                break
            except zmq.Again:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not self.sock.poll(left_ms, zmq.POLLOUT):
                    break
        self.sock.close(linger=int(end_wait_s * 1000))


def open_tap(ctx: zmq.Context, endpoint: str | None, max_rate: float = DEFAULT_RATE) -> Tap | None:
    return Tap(ctx, endpoint, max_rate) if endpoint else None


def decode(header: FrameHeader, payload: zmq.Frame) -> np.ndarray:
    """The frame's pixels: a read-only view of the message (raw), or decompressed (bslz4)."""
    if header.encoding == Encoding.BSLZ4:
        return compression.decompress(payload.buffer, header.shape, dtype_of(header.dtype_code))
    return payload_view(header, payload.buffer)


def subscribe(endpoint: str, timeout_s: float | None = None, latest: bool = True,
              until_end: bool = False,
              ctx: zmq.Context | None = None) -> Iterator[tuple[FrameHeader, np.ndarray]]:
    """Yield (header, frame) from a collector's tap (`stream-node collector --tap ENDPOINT`).

    `latest`: skip to the newest frame waiting, so slow analysis always sees the present.
    `timeout_s`: raise PeerTimeout when no frame came for this long (None: wait for ever, e.g.
    for the next run). `until_end`: stop when the collector ends its run.

    >>> for header, frame in stream_node.subscribe("tcp://daq:5560"):   # doctest: +SKIP
    ...     print(header.frame_id, frame.mean())
    """
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, QUEUE)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    timeout_ms = -1 if timeout_s is None else int(timeout_s * 1000)
    try:
        sock.connect(endpoint)
        while True:
            if not sock.poll(timeout_ms):
                raise PeerTimeout(f"no frame from the tap at {endpoint} within {timeout_s} s: "
                                  "is the collector running with --tap, and a run going?")
            parts = sock.recv_multipart(copy=False)
            while latest and sock.poll(0):
                parts = sock.recv_multipart(copy=False)
            try:
                header = FrameHeader.parse(parts[0].buffer)
            except ProtocolError:
                continue
            if header.msg_type == MsgType.END:
                if until_end:
                    return
                continue
            if len(parts) != 2 or header.msg_type != MsgType.FRAME or header.flags & FLAG_FAILED:
                continue
            yield header, decode(header, parts[1])
    finally:
        sock.close(linger=0)
