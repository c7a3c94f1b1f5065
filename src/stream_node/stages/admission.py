"""The one check every receiving stage makes before it touches a message from a data link.

A worker and the collector take frames from links that other runs, other programs or damaged
peers can reach too. A message is admitted when it has two parts, a valid header of this run's
id, is a FRAME, and its payload has the bytes its header says (and, when the header carries one,
the CRC-32C it says: `--checksum`). Everything else is counted in the stage's drop ledger by
kind ("malformed", "foreign", "unexpected", "invalid", "corrupt") and never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stream_node.model.errors import ProtocolError
from stream_node.model.frame import FLAG_PAYLOAD_CRC, FrameHeader, MsgType, payload_crc
from stream_node.stages.drops import DropLedger


def admit(parts: Sequence[Any], run_id: int, drops: DropLedger) -> FrameHeader | None:
    """The frame's header when the message may be used; None (and a drop counted) when not."""
    if len(parts) != 2:
        drops.drop("malformed", f"{len(parts)} parts, a frame has 2")
        return None
    try:
        header = FrameHeader.parse(memoryview(parts[0]))
    except ProtocolError as exc:
        drops.drop("malformed", str(exc))
        return None
    if header.run_id != run_id:
        drops.drop("foreign", f"run {header.run_id:#x}, this run is {run_id:#x}")
        return None
    if header.msg_type != MsgType.FRAME:
        drops.drop("unexpected", f"message type {header.msg_type} on the data socket")
        return None
    nbytes = memoryview(parts[1]).nbytes
    if nbytes != header.payload_bytes:
        drops.drop("invalid", f"frame {header.frame_id}: payload has {nbytes} bytes, header "
                              f"says {header.payload_bytes}")
        return None
    if header.flags & FLAG_PAYLOAD_CRC and payload_crc(parts[1]) != header.payload_crc:
        drops.drop("corrupt", f"frame {header.frame_id}: payload checksum mismatch (damaged "
                              "in transit)", header.frame_id)
        return None
    return header
