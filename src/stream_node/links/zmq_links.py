"""Links over ZeroMQ (`tcp://`, `ipc://`): PUSH fan-out and PULL fan-in, zero-copy both ways."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from stream_node.links.base import BATCH
from stream_node.links.transport import (
    HandshakeWatch,
    LinkLimits,
    bind,
    connect,
    data_socket,
    recv_parts,
    send_frame,
)
from stream_node.model.frame import FrameHeader


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


class PullInput:
    """Frames from one or more PUSH senders; payloads stay ZeroMQ buffers (zero-copy).

    A worker connects to its source's endpoints; the collector (`bound`) binds its one input,
    which every worker connects to.
    """

    copies = False
    exhausted = False  # a PUSH peer never says it is done: END comes on the control channel

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], limits: LinkLimits,
                 kind: int = zmq.PULL, identity: bytes | None = None,
                 bound: bool = False) -> None:
        self.endpoints = list(endpoints)
        self.limits = limits
        self.sock = data_socket(ctx, kind, limits)
        if identity is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.watch: HandshakeWatch | None = None
        try:
            if bound:
                bind(self.sock, self.endpoints[0], "input")
            else:
                self.watch = HandshakeWatch(self.sock)
                connect(self.sock, self.endpoints, "input")
        except Exception:
            self.close()
            raise

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None:
        if self.watch is not None:
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
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger=0)
