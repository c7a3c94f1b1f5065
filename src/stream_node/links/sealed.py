"""`--checksum`: every frame leaves the source with its payload's CRC-32C in its header.

The header's own crc guards where a frame goes; this guards what it carries, across every hop
(a bit flipped by a NIC, a switch or a bad DIMM on the way would otherwise be written as
data). Each receiving stage checks it (stages/admission.py) and a worker that makes a new
payload seals that one. The cost is one pass over the payload per hop at about 20 GB/s.
"""

from __future__ import annotations

from typing import Any

from stream_node.links.base import FrameOutput
from stream_node.model.frame import FrameHeader, payload_crc


class SealedOutput:
    """An output that seals each frame's header with its payload's CRC-32C before handing it on
    (a ring slot's payload is sealed in place: the buffer is what the next stage reads)."""

    def __init__(self, out: FrameOutput) -> None:
        self.out = out

    def reserve(self, shape: tuple[int, ...], dtype: Any, timeout_ms: int) -> Any:
        return self.out.reserve(shape, dtype, timeout_ms)

    def commit(self, header: FrameHeader, buffer: Any) -> bool:
        header.seal(payload_crc(buffer))
        return self.out.commit(header, buffer)

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        header.seal(payload_crc(payload))
        return self.out.put(header, payload, timeout_ms)

    def end(self) -> None:
        self.out.end()

    def close(self) -> None:
        self.out.close()

    def describe(self) -> str:
        return self.out.describe() + "; payloads sealed with CRC-32C (--checksum)"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)
