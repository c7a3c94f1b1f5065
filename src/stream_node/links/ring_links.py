"""Links through a shared-memory ring (`ring://NAME`): a frame is written once into a slot and
read there in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stream_node.links.base import BATCH
from stream_node.links.ring import Consumer, Ring
from stream_node.model.errors import ConfigError, EndOfStream, RingTimeout
from stream_node.model.frame import FrameHeader


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
