"""Where frames go and come from, by endpoint: `ring://NAME` (shared memory on this host) or a
ZeroMQ address (`tcp://`, `ipc://`). Roles speak to these two small interfaces only, so a
topology is a choice of endpoints, not of code paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import zmq

from stream_node.errors import ConfigError, EndOfStream, RingTimeout
from stream_node.frame import FrameHeader
from stream_node.ring import Consumer, Ring
from stream_node.transport import (
    HandshakeWatch,
    LinkLimits,
    bind,
    connect,
    data_socket,
    recv_parts,
    send_frame,
)

RING = "ring://"
BATCH = 16


def ring_name(endpoint: str) -> str | None:
    return endpoint[len(RING):] if endpoint.startswith(RING) else None


class FrameOutput(Protocol):
    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        """A buffer to write the next frame into, or None if no consumer can take one yet."""

    def commit(self, header: FrameHeader, buffer: np.ndarray) -> bool:
        """Hand the reserved frame on; False if it must be retried later (peer went away)."""

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        """Hand on a frame that arrived in a buffer of its own (a received message): sent as
        it is over ZeroMQ, copied once into a ring slot. False if no consumer took it in time."""

    def end(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> str: ...


class PushOutput:
    """Fan-out over PUSH: each frame goes to one connected worker, zero-copy."""

    def __init__(self, ctx: zmq.Context, endpoint: str, limits: LinkLimits, frame_bytes: int):
        self.sock = data_socket(ctx, zmq.PUSH, limits)
        self.limits = limits
        self.frame_bytes = frame_bytes
        bind(self.sock, endpoint, "data")

    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        if not self.sock.poll(timeout_ms, zmq.POLLOUT):
            return None
        # A new buffer per frame: ZeroMQ reads it after send() returns, so it is never reused.
        return np.empty(shape, dtype)

    def commit(self, header: FrameHeader, buffer: np.ndarray) -> bool:
        # Never blocks: the worker that poll() saw ready may have disconnected since.
        try:
            send_frame(self.sock, header.pack(), buffer, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        if not self.sock.poll(timeout_ms, zmq.POLLOUT):
            return False
        return self.commit(header, payload)

    def end(self) -> None:
        """PUSH cannot broadcast: the end of the run travels on the control channel."""

    def close(self) -> None:
        self.sock.close(linger=self.limits.linger_ms)

    def describe(self) -> str:
        return self.limits.describe(self.frame_bytes)


class RingOutput:
    """A shared-memory ring: the frame is generated straight into its slot (the only copy)."""

    def __init__(self, name: str, slots: int, frame_bytes: int) -> None:
        self.ring = Ring.create(name, slots=slots, slot_bytes=frame_bytes)
        self.slot = -1

    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        try:
            self.slot = self.ring.claim(timeout=timeout_ms / 1000)
        except RingTimeout:
            return None
        return self.ring.payload(self.slot, shape, dtype)

    def commit(self, header: FrameHeader, buffer: np.ndarray) -> bool:
        self.ring.publish(self.slot, header)
        return True

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        data = np.frombuffer(payload, np.uint8)
        if data.nbytes > self.ring.slot_bytes:
            raise ConfigError(f"frame {header.frame_id} has {data.nbytes} bytes, a slot of ring "
                              f"{self.ring.name!r} holds {self.ring.slot_bytes}")
        try:
            self.slot = self.ring.claim(timeout=timeout_ms / 1000)
        except RingTimeout:
            return False
        self.ring.payload(self.slot)[: data.nbytes] = data
        self.ring.publish(self.slot, header)
        return True

    def end(self) -> None:
        self.ring.end()

    def close(self) -> None:
        self.ring.close()

    def describe(self) -> str:
        total = (self.ring.slots + 3) * self.ring.slot_bytes
        return f"ring {self.ring.name!r}: {self.ring.slots} slots, ~{total / 2**20:.0f} MiB"


def open_output(ctx: zmq.Context, endpoint: str, limits: LinkLimits, frame_bytes: int,
                ring_slots: int, reliable_window: int = 0) -> FrameOutput:
    """`reliable_window` > 0: credit-based dispatch that sends a lost worker's frames again
    (stream_node.credit); a ring already gives a dead member's frames to another."""
    name = ring_name(endpoint)
    if name is not None:
        if reliable_window:
            raise ConfigError(f"reliable mode is for a ZeroMQ fan-out (tcp://, ipc://), not "
                              f"{endpoint}: the ring already hands the frames of a dead worker "
                              "to another")
        return RingOutput(name, ring_slots, frame_bytes)
    if reliable_window:
        from stream_node.credit import CreditOutput

        return CreditOutput(ctx, endpoint, limits, frame_bytes, reliable_window)
    return PushOutput(ctx, endpoint, limits, frame_bytes)


class FrameInput(Protocol):
    copies: bool  # True if a payload must be copied before release() (the slot is reused)
    exhausted: bool  # the producer ended the stream and every frame was taken

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None: ...
    def take(self, timeout_ms: int) -> list[list[Any]]:
        """Up to a batch of [header, payload] buffer pairs; [] if none came in time."""

    def release(self) -> None: ...
    def close(self) -> None: ...


class PullInput:
    """Frames from one or more PUSH senders; payloads stay ZeroMQ buffers (zero-copy)."""

    copies = False
    exhausted = False  # a PUSH peer never says it is done: END comes on the control channel

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], limits: LinkLimits,
                 kind: int = zmq.PULL, identity: bytes | None = None) -> None:
        self.endpoints = list(endpoints)
        self.sock = data_socket(ctx, kind, limits)
        if identity is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.watch = HandshakeWatch(self.sock)
        connect(self.sock, self.endpoints, "input")

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None:
        self.watch.wait(len(self.endpoints), timeout_s, f"the source at {self.endpoints}",
                        meanwhile)

    def take(self, timeout_ms: int) -> list[list[Any]]:
        if not self.sock.poll(timeout_ms):
            return []
        batch = []
        for _ in range(BATCH):
            try:
                batch.append(recv_parts(self.sock, zmq.NOBLOCK))
            except zmq.Again:
                break
        return batch

    def release(self) -> None:
        """ZeroMQ frees each message when its last reference goes."""

    def close(self) -> None:
        self.watch.close()
        self.sock.close(linger=0)


class RingInput:
    """A member of the ring's work group: frames are views of the slots, read in place."""

    copies = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.exhausted = False
        self.consumer: Consumer | None = None
        self.frames: list = []

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None:
        # The source creates the ring before it answers HELLO, so after START it exists.
        self.consumer = Ring.attach(self.name).consumer("workers")

    def take(self, timeout_ms: int) -> list[list[Any]]:
        assert self.consumer is not None
        try:
            self.frames = self.consumer.acquire(timeout=timeout_ms / 1000, max_frames=BATCH)
        except RingTimeout:
            return []
        except EndOfStream:
            self.exhausted = True
            return []
        ring = self.consumer.ring
        return [[ring._headers[f.slot], f.data] for f in self.frames]

    def release(self) -> None:
        if self.frames:
            assert self.consumer is not None
            self.consumer.release(self.frames)
            self.frames = []

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


def open_input(ctx: zmq.Context, endpoints: Sequence[str], limits: LinkLimits,
               credit: tuple[bytes, int, int] | None = None) -> FrameInput:
    """`credit` (identity, run id, frames): the reliable mode's end (stream_node.credit)."""
    if credit is not None:
        from stream_node.credit import CreditInput

        if any(ring_name(e) for e in endpoints):
            raise ConfigError("the source runs in reliable mode, which needs ZeroMQ inputs, "
                              f"not {list(endpoints)}")
        return CreditInput(ctx, endpoints, limits, *credit)
    names = [ring_name(e) for e in endpoints]
    if any(names):
        if len(endpoints) != 1:
            raise ConfigError("a worker reads either one ring:// input or ZeroMQ inputs, "
                              f"not both: {list(endpoints)}")
        return RingInput(names[0])
    return PullInput(ctx, endpoints, limits)
