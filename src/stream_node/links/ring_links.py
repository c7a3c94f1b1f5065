"""Links through a shared-memory ring (`ring://NAME`): a frame is written once into a slot and
read there in place."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream_node.links.base import BATCH
from stream_node.links.ring import Consumer, Ring, RingFrame
from stream_node.model.errors import ConfigError, EndOfStream, RingTimeout
from stream_node.model.frame import FrameHeader

RING_BYTES = 384 << 20  # a ring's default memory: slots x frame, within SLOTS_DEFAULT
SLOTS_DEFAULT = (16, 1024)  # the fewest and the most slots a default ring has


def default_ring_slots(frame_bytes: int) -> int:
    """Slots when none are asked for: as many as fill `RING_BYTES`, 16 to 1024. A fixed 16
    held 128 MiB of 8 MiB frames, less than a collector's write stalls on a busy page cache
    last: the same run went 70 to 435 frames/s, with 48 slots 362 to 409 (measured)."""
    low, high = SLOTS_DEFAULT
    return max(low, min(high, RING_BYTES // max(frame_bytes, 1)))


class RingOutput:
    """A shared-memory ring: the frame is generated straight into its slot (the only copy)."""

    def __init__(self, name: str, slots: int, frame_bytes: int, group: str = "workers",
                 latest_readers: int = 2) -> None:
        self.ring = Ring.create(name, slots=slots, slot_bytes=frame_bytes,
                                groups={group: "work"}, latest_readers=latest_readers)
        self.slot = -1

    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        try:
            self.slot = self.ring.claim(timeout=timeout_ms / 1000)
        except RingTimeout:
            return None
        return self.ring.payload(self.slot, shape, dtype)

    def reserve_bytes(self, timeout_ms: int) -> np.ndarray | None:
        """A free slot as raw bytes (for what is not pixels: a compressed chunk), or None."""
        try:
            self.slot = self.ring.claim(timeout=timeout_ms / 1000)
        except RingTimeout:
            return None
        return self.ring.payload(self.slot)

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
        return (f"ring {self.ring.name!r}: {self.ring.slots} slots of "
                f"{self.ring.slot_bytes / 2**20:.2f} MiB, ~{self.bound_bytes() / 2**20:.0f} MiB")

    def bound_bytes(self) -> int:
        """The ring's memory in /dev/shm: every slot (the window's, latest readers' spares)."""
        return self.ring.handle.n_slots * self.ring.slot_bytes


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


def fan_in_ring(name: str, producer: int) -> str:
    """The ring producer `producer` (a worker's --index) of fan-in ring://NAME writes into."""
    return f"{name}.{producer}"


class RingFanIn:
    """The collector's end of a shared-memory fan-in: one ring per producer, read in place.

    The producers are the workers (each writes `fan_in_ring(NAME, index)`, made by itself), or,
    when no worker is on the path, the source (its own ring, group "workers"). A ring is
    attached when its producer has made it: the ring keeps every frame for this group from the
    first one on, so attaching late loses nothing, and the collector needs no handshake with
    the workers. A producer that dies leaves what it published readable (then EndOfStream);
    the frames it held are the run's missing ones, as with any lost worker.
    """

    copies = True  # a slot is reused once released: what must outlive the write is copied
    RETRY_S = 0.5  # a ring that ended is looked for again: its producer may make it anew
    WAIT_MS = 1  # per ring while none has a frame: a producer's 8 slots cover this wait

    def __init__(self, names: Sequence[str], group: str) -> None:
        self.names = list(names)
        self.group = group
        self.consumers: dict[str, Consumer] = {}
        self.ended: dict[str, float] = {}  # name -> when its stream ended (or it went dead)
        self._held: tuple[Consumer, list[RingFrame]] | None = None
        self._turn = 0

    # Never: a ring that ended may be made anew (a stale one of a killed run is replaced by
    # its new producer's), and the run's end comes on the control channel anyway.
    exhausted = False

    def describe(self) -> str:
        return (f"shared-memory fan-in from {len(self.names)} ring(s) "
                f"{', '.join(self.names[:3])}{' ...' if len(self.names) > 3 else ''}")

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None:
        """Nothing to wait for: rings are attached as their producers make them."""

    def require(self) -> RingFanIn:
        """Attach every ring now; ConfigError naming one that does not exist. For a producer
        that made its ring before this reader got START (the source's): once frames flow it may
        end its stream, and with it the ring's name, before a late attach would find it."""
        self._attach()
        missing = [n for n in self.names if n not in self.consumers]
        if missing:
            raise ConfigError(f"no ring {', '.join(map(repr, missing))} on this host: is the "
                              "source's --data the collector's --input?")
        return self

    def take(self, timeout_ms: int) -> list[list[Any]]:
        """Frames of the next ring that has some (in turn, so no producer starves)."""
        self._attach()
        live = list(self.consumers.items())
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            for k in range(len(live)):
                name, consumer = live[(self._turn + k) % len(live)]
                frames = self._acquire(name, consumer, 0)
                if frames:
                    self._turn = (self._turn + k + 1) % len(live)
                    return frames
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            if not live:  # no producer has made its ring yet: look again shortly
                threading.Event().wait(min(left, self.WAIT_MS / 1000))
                self._attach()
                live = list(self.consumers.items())
                continue
            name, consumer = live[self._turn % len(live)]
            self._turn += 1
            frames = self._acquire(name, consumer, min(left, self.WAIT_MS / 1000))
            if frames:
                return frames
            live = [(n, c) for n, c in live if n in self.consumers]

    def _acquire(self, name: str, consumer: Consumer, timeout_s: float) -> list[list[Any]]:
        try:
            frames = consumer.acquire(timeout=timeout_s, max_frames=BATCH)
        except RingTimeout:
            return []
        except EndOfStream:  # its producer ended it or died (a dead one's ring is stale)
            self.ended[name] = time.monotonic()
            del self.consumers[name]
            consumer.close()
            return []
        self._held = (consumer, frames)
        ring = consumer.ring
        return [[ring._headers[f.slot], f.data] for f in frames]

    def _attach(self) -> None:
        now = time.monotonic()
        for name in self.names:
            if name in self.consumers or now - self.ended.get(name, -math.inf) < self.RETRY_S:
                continue
            ring = Ring.find(name)
            if ring is not None:
                self.consumers[name] = ring.consumer(self.group)
                self.ended.pop(name, None)

    def release(self) -> None:
        if self._held is not None:
            consumer, frames = self._held
            consumer.release(frames)
            self._held = None

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()
