"""An origin's frames read in this process, without a pipeline: for tools such as the pedestal
command, which fold a detector series into statistics and keep no frame.

Generated origins (`synthetic:`, `synthetic:jungfrau?...`, `file://RUN.h5`) fill one reused
buffer per frame. An origin that receives into ring slots (`udp://`) gets a private ring and
runs in a thread; this process's consumer reads each slot in place. A frame the detector did
not deliver whole (a UDP frame with lost packets) is skipped and counted: statistics must not
average fill values. Origins spoken over ZeroMQ need a pipeline (`stream-node source`).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Generator, Iterator

import numpy as np

from stream_node.links.ring_links import RingOutput
from stream_node.model.errors import ConfigError, EndOfStream, RingTimeout
from stream_node.model.frame import FLAG_PARTIAL
from stream_node.origins import open_origin
from stream_node.origins.base import GeneratedOrigin, Origin, OriginOptions, Stall

RING_SLOTS = 16


class _Alone:
    """The `RunControl` of an origin with no source around it: nobody to answer, nothing to
    abort; `stop()` ends the run at the next frame (the reader had enough)."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def poll(self) -> None:
        """No control plane here."""

    def pace(self, due: float) -> None:
        self._stop.wait(max(0.0, due - time.monotonic()))

    def stalled(self, stall: Stall) -> None:
        """The reader is slower than the detector: the ring holds frames meanwhile."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


class OriginFrames:
    """Iterate the frames of `endpoint` (each array valid until the next one is asked for).

    `partial` counts frames skipped because parts of them never came.
    """

    def __init__(self, endpoint: str, options: OriginOptions) -> None:
        self.endpoint = endpoint
        self.origin: Origin = open_origin(endpoint, options)
        self.shape = tuple(self.origin.shape)
        self.dtype = np.dtype(self.origin.dtype)
        self.partial = 0
        if not isinstance(self.origin, GeneratedOrigin) and not self.origin.needs_ring:
            self.origin.close()
            raise ConfigError(f"{endpoint}: frames of this origin are read by a pipeline only "
                              "(`stream-node source`); write a run file and read file://RUN.h5")

    def __iter__(self) -> Iterator[np.ndarray]:
        self._active: Generator[np.ndarray, None, None] | None = self._frames()
        return self._active

    def _frames(self) -> Generator[np.ndarray, None, None]:
        if isinstance(self.origin, GeneratedOrigin):
            buffer = np.empty(self.shape, self.dtype)
            for frame_id in self.origin.ids():
                self.origin.fill(frame_id, buffer)
                yield buffer
        else:
            yield from self._received()

    def _received(self) -> Iterator[np.ndarray]:
        """Frames a receiving origin writes into a ring of our own, read in place."""
        name = f"sn-offline-{os.getpid()}-{secrets.token_hex(3)}"
        out = RingOutput(name, RING_SLOTS, self.origin.frame_bytes)
        control = _Alone()
        failure: list[BaseException] = []
        run_id = secrets.randbits(63) | 1

        def emit() -> None:
            try:
                self.origin.emit(out, run_id, control)
            except BaseException as exc:  # handed to the reading thread, which raises it
                failure.append(exc)
                out.end()

        consumer = None
        thread = threading.Thread(target=emit, name="origin", daemon=True)
        try:
            consumer = out.ring.consumer("workers")
            self.origin.prepare(out, run_id)
            thread.start()
            while True:
                try:
                    (frame,) = consumer.acquire(timeout=0.5)
                except RingTimeout:
                    continue
                except EndOfStream:
                    break
                if frame.header.flags & FLAG_PARTIAL:
                    self.partial += 1
                else:
                    yield frame.data
                consumer.release(frame)
        finally:
            control.stop()
            if thread.is_alive():
                thread.join()
            if consumer is not None:
                consumer.close()
            out.close()
        if failure:
            raise failure[0]

    def close(self) -> None:
        """End the reading (a receiving origin's thread stops first), then the origin."""
        active = getattr(self, "_active", None)
        if active is not None:
            active.close()
        self.origin.close()

    def __enter__(self) -> OriginFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
