"""`Ring`: frames handed between processes on one host through shared memory, read in place.

The producer claims a slot, fills its payload (a numpy view: a detector or a socket can write
straight into it), and publishes it with its frame header. Consumers in a group acquire frames
as numpy views of the slots, process them in place and release them. See native/include/
stream_node/ring.h for the slot states and the crash-recovery rules.

>>> ring = Ring.create("demo", slots=4, slot_bytes=1024, groups={"workers": "work"})
>>> seq = ring.write(np.arange(8, dtype=np.uint16), run_id=1, frame_id=0)
>>> consumer = Ring.attach("demo").consumer("workers")
>>> [frame] = consumer.acquire(timeout=1.0)
>>> frame.data.tolist(), frame.header.frame_id
([0, 1, 2, 3, 4, 5, 6, 7], 0)
>>> consumer.release(frame); ring.close()
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from stream_node._native._ring import (
    LATEST,
    MAX_BATCH,
    MAX_MEMBERS,
    NOT_FOUND,
    NOT_READY,
    PAYLOAD_OFFSET,
    WORK,
    RingHandle,
)
from stream_node.model.contract import frame_nbytes
from stream_node.model.errors import EndOfStream, RingError
from stream_node.model.frame import HEADER_SIZE, Encoding, FrameHeader, dtype_of, frame_header

__all__ = ["Consumer", "EndOfStream", "Ring", "RingFrame"]

_KINDS = {"work": WORK, "latest": LATEST}
BATCH_MAX = MAX_BATCH  # frames one claim_n/acquire call moves at most (ring.h)


def _ns(timeout: float | None) -> int:
    return -1 if timeout is None else max(0, int(timeout * 1e9))


class Ring:
    """One mapped ring; `create` makes it (the producer's end), `attach` joins it."""

    def __init__(self, handle: RingHandle) -> None:
        self._h = handle
        buffers = [handle.slot_buffer(k) for k in range(handle.n_slots)]
        # Views made once per slot at attach, so the per-frame path allocates nothing for them.
        self._headers = [memoryview(b)[:HEADER_SIZE] for b in buffers]
        self._payloads = [np.frombuffer(b, np.uint8, offset=PAYLOAD_OFFSET) for b in buffers]
        self._claimed = np.zeros(BATCH_MAX, np.uint32)

    @classmethod
    def create(cls, name: str, slots: int = 8, slot_bytes: int = 1 << 20,
               groups: Mapping[str, str] | None = None, latest_readers: int = 2,
               mode: int = 0o600) -> Ring:
        """Make ring NAME with `slots` frames in flight of at most `slot_bytes` each.

        Its memory is about (slots + latest_readers + 1) x slot_bytes in /dev/shm. Groups are
        fixed here, so every frame is kept for every group from the first one on.
        """
        groups = {"workers": "work"} if groups is None else dict(groups)
        try:
            spec = [(g, _KINDS[k]) for g, k in groups.items()]
        except KeyError as exc:
            raise RingError(f"group kind {exc} is not 'work' or 'latest'") from None
        return cls(RingHandle.create(name, slots, slot_bytes, spec, latest_readers, mode))

    @classmethod
    def attach(cls, name: str, slots: int | None = None, slot_bytes: int | None = None) -> Ring:
        """Map an existing ring; given `slots`/`slot_bytes` must match the ring's."""
        return cls(RingHandle.attach(name, slots or 0, slot_bytes or 0))

    @classmethod
    def find(cls, name: str) -> Ring | None:
        """Attach to NAME if its producer has made it (wholly) yet; None if not (any other
        failure raises): a consumer that may start first asks again later, and loses nothing,
        since the ring keeps every frame for its groups from the first one on."""
        try:
            return cls.attach(name)
        except RingError as exc:
            if exc.code in (NOT_FOUND, NOT_READY):
                return None
            raise

    @property
    def handle(self) -> RingHandle:
        """The native handle, for native producers (the UDP receiver) that fill slots."""
        return self._h

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove a ring's name from /dev/shm (for cleaning up by hand)."""
        return RingHandle.unlink(name)

    @property
    def name(self) -> str:
        return self._h.name

    @property
    def slots(self) -> int:
        return self._h.n_window

    @property
    def slot_bytes(self) -> int:
        return self._h.slot_bytes

    # -- producer ------------------------------------------------------------------------------

    def claim(self, timeout: float | None = 5.0) -> int:
        """A free slot's index; waits (up to `timeout`) while a work group is a ring behind."""
        return self._h.claim(_ns(timeout))

    def payload(self, slot: int, shape: tuple[int, ...] | None = None,
                dtype: np.dtype | str = np.uint8) -> np.ndarray:
        """The slot's payload as a writable array of `shape` and `dtype` (a view, no copy)."""
        raw = self._payloads[slot]
        if shape is None:
            return raw
        dt = np.dtype(dtype)
        nbytes = frame_nbytes(shape, dt)
        if nbytes > raw.nbytes:
            raise RingError(f"a {shape} {dt} frame needs {nbytes} bytes, a slot of ring "
                            f"{self.name!r} holds {raw.nbytes}")
        return raw[:nbytes].view(dt).reshape(shape)

    def publish(self, slot: int, header: FrameHeader) -> int:
        """Make the claimed slot's frame visible to every group; returns its sequence number."""
        if header.payload_bytes > self.slot_bytes:
            raise RingError(f"frame {header.frame_id} has {header.payload_bytes} bytes, a slot "
                            f"of ring {self.name!r} holds {self.slot_bytes}")
        self._headers[slot][:] = header.pack()
        return self._h.publish(slot)

    def write(self, array: np.ndarray, run_id: int, frame_id: int,
              timeout: float | None = 5.0) -> int:
        """claim + copy `array` into a slot + publish: the one copy into shared memory."""
        header = frame_header(array, run_id, frame_id)
        if header.payload_bytes > self.slot_bytes:
            raise RingError(f"frame {frame_id} has {header.payload_bytes} bytes, a slot of ring "
                            f"{self.name!r} holds {self.slot_bytes}")
        slot = self.claim(timeout)
        np.copyto(self.payload(slot, array.shape, array.dtype), array)
        return self.publish(slot, header)

    def claim_many(self, max_frames: int, timeout: float | None = 5.0) -> np.ndarray:
        """Up to `max_frames` free slots at once (at least one within `timeout`).

        For high frame rates: one call per batch instead of per frame. The returned array is
        reused by the next call.
        """
        n = self._h.claim_n(min(max_frames, BATCH_MAX), _ns(timeout), self._claimed)
        return self._claimed[:n]

    def publish_many(self, slots: np.ndarray, headers: np.ndarray) -> int:
        """Publish claimed `slots` in order with their packed headers (n x 96 uint8), one
        wake-up for the batch; returns the first sequence number."""
        return self._h.publish_n(np.ascontiguousarray(slots, np.uint32), len(slots),
                                 np.ascontiguousarray(headers, np.uint8))

    def end(self) -> None:
        """End of stream: consumers take what is published, then get EndOfStream."""
        self._h.end()

    def shutdown(self) -> None:
        """Wake this handle's blocked waits (from another thread or a signal handler)."""
        self._h.shutdown()

    def set_spin(self, seconds: float) -> None:
        """Busy-wait this long before sleeping in claim/acquire (default 20 us).

        Sleeping costs a futex wake-up (~10-50 us); spinning costs a core. Latency-critical
        consumers on an otherwise idle core spin longer; crowded hosts spin less.
        """
        self._h.set_spin(int(seconds * 1e9))

    # -- consumers -----------------------------------------------------------------------------

    def consumer(self, group: str) -> Consumer:
        return Consumer(self, group)

    def stats(self) -> dict:
        return self._h.stats()

    def reap(self) -> int:
        """Hand frames held by dead consumers back to their groups now (also done on stalls)."""
        return self._h.reap()

    def close(self) -> None:
        """The producer ends the stream; the mapping goes once no view of it is left."""
        if self._h.creator:
            self._h.end()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RingFrame:
    """One acquired frame: its header and a view of its payload, valid until released."""

    __slots__ = ("_data", "header", "seq", "slot")

    def __init__(self, header: FrameHeader, data: np.ndarray | None, seq: int, slot: int) -> None:
        self.header = header
        self._data = data
        self.seq = seq
        self.slot = slot

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            raise RingError(f"frame {self.header.frame_id} was released: its slot may hold "
                            "another frame now; copy what you need before releasing")
        return self._data

    @property
    def frame_id(self) -> int:
        return self.header.frame_id


class Consumer:
    """A member of one group; frames it acquires are its own until it releases them."""

    def __init__(self, ring: Ring, group: str) -> None:
        self.ring = ring
        self._h = ring._h
        self.group, kind = self._h.group_index(group)
        self.kind = "work" if kind == WORK else "latest"
        self.member = self._h.join(self.group)
        self._slots = np.zeros(BATCH_MAX, np.uint32)
        self._seqs = np.zeros(BATCH_MAX, np.uint64)
        self._held: list[RingFrame] = []
        self._views: dict[tuple[int, int, tuple[int, ...]], np.ndarray] = {}

    def _view(self, slot: int, header: FrameHeader) -> np.ndarray:
        if header.encoding != Encoding.RAW:  # a compressed chunk: its bytes, however many
            return self.ring.payload(slot)[: header.payload_bytes]
        key = (slot, header.dtype_code, header.shape)
        view = self._views.get(key)
        if view is None:
            view = self.ring.payload(slot, header.shape, dtype_of(header.dtype_code))
            if len(self._views) > 4 * MAX_MEMBERS * BATCH_MAX:
                self._views.clear()
            self._views[key] = view
        return view

    def acquire(self, timeout: float | None = 5.0, max_frames: int = 1) -> list[RingFrame]:
        """Up to `max_frames` frames in order; RingTimeout if none came, EndOfStream at the end."""
        if self._held:
            raise RingError(f"consumer of group {self.group} still holds {len(self._held)} "
                            "frames: release them before acquiring more")
        n = self._h.acquire(self.group, self.member, min(max_frames, BATCH_MAX), _ns(timeout),
                            self._slots, self._seqs)
        frames = []
        for i in range(n):
            slot = int(self._slots[i])
            header = FrameHeader.parse(self.ring._headers[slot])
            frames.append(RingFrame(header, self._view(slot, header), int(self._seqs[i]), slot))
        self._held = list(frames)
        return frames

    def release(self, frames: RingFrame | list[RingFrame]) -> None:
        for frame in [frames] if isinstance(frames, RingFrame) else list(frames):
            if frame._data is None:
                raise RingError(f"frame {frame.header.frame_id} was already released")
            self._h.release(self.group, self.member, frame.seq, frame.slot)
            frame._data = None
            self._held.remove(frame)

    def __iter__(self) -> Iterator[RingFrame]:
        """Each frame in turn, released when the next is asked for; ends at end of stream."""
        while True:
            try:
                frames = self.acquire(timeout=None)
            except EndOfStream:
                return
            yield frames[0]
            self.release(frames)

    def close(self) -> None:
        """Leave the group; frames still held go back to it for another member."""
        self._h.leave(self.group, self.member)
        for frame in self._held:
            frame._data = None
        self._held = []

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
