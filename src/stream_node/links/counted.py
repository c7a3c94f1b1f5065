"""Counting what an output hands on, for the source's status: the counters live on the data path,
the status thread only reads them."""

from __future__ import annotations

from typing import Any

from stream_node.links.base import FrameOutput
from stream_node.links.ring_links import RingOutput
from stream_node.model.frame import FrameHeader


class CountedOutput:
    """A fan-out socket that counts the frames and bytes it hands on, for the source's status.

    A ring counts its own frames (its stats), so only socket outputs are wrapped (`counted`).
    """

    def __init__(self, out: FrameOutput) -> None:
        self.out = out
        self.frames = 0
        self.bytes = 0

    def reserve(self, shape: tuple[int, ...], dtype: Any, timeout_ms: int) -> Any:
        return self.out.reserve(shape, dtype, timeout_ms)

    def commit(self, header: FrameHeader, buffer: Any) -> bool:
        if self.out.commit(header, buffer):
            self.frames += 1
            self.bytes += header.payload_bytes
            return True
        return False

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        if self.out.put(header, payload, timeout_ms):
            self.frames += 1
            self.bytes += header.payload_bytes
            return True
        return False

    def end(self) -> None:
        self.out.end()

    def close(self) -> None:
        self.out.close()

    def describe(self) -> str:
        return self.out.describe()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


def counted(out: FrameOutput) -> FrameOutput:
    return out if isinstance(out, RingOutput) else CountedOutput(out)


def output_counters(out: FrameOutput | None, frame_bytes: int) -> dict[str, Any]:
    """Frames and bytes handed on so far, and the ring's occupancy when the output is one.

    Safe from the status thread: a ring's mapping lives as long as this reference to it.
    """
    if out is None:
        return {"frames_out": 0, "bytes_out": 0, "ring": None}
    if isinstance(out, RingOutput):
        st = out.ring.stats()
        ring = {"name": out.ring.name, "slots": out.ring.slots, "occupancy": st["occupancy"],
                "producer_waits": st["producer_waits"], "state": st["state"]}
        return {"frames_out": st["published"], "bytes_out": st["published"] * frame_bytes,
                "ring": ring}
    return {"frames_out": getattr(out, "frames", 0), "bytes_out": getattr(out, "bytes", 0),
            "ring": None}
