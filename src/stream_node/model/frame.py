"""The frame model every hop speaks: a `FrameHeader`, a numpy payload, and their codes."""

from __future__ import annotations

import time
from enum import IntEnum
from typing import Any

import crc32c
import msgpack
import numpy as np

from stream_node._native._frame import FLAG_PAYLOAD_CRC, HEADER_SIZE, FrameHeader
from stream_node.model.errors import ProtocolError

__all__ = [
    "DTYPE_CODES",
    "FLAG_FAILED",
    "FLAG_PARTIAL",
    "FLAG_PAYLOAD_CRC",
    "HEADER_SIZE",
    "Encoding",
    "FrameHeader",
    "MsgType",
    "control_message",
    "decode_body",
    "dtype_code",
    "dtype_of",
    "failure_record",
    "frame_header",
    "payload_crc",
    "payload_view",
    "reencoded",
]


class MsgType(IntEnum):
    START = 1
    FRAME = 2
    END = 3
    HEARTBEAT = 4
    ABORT = 5
    HELLO = 6
    READY = 7
    DRAINED = 8
    FINISH = 9
    DONE = 10
    CREDIT = 11  # reliable mode, worker -> source: frame_id more frames it can take
    ACK = 12  # reliable mode, collector -> source: the ids it has written (body)


FLAG_PARTIAL = 1 << 0  # SN_FLAG_PARTIAL: some of the frame's data never came (filled, counted)
FLAG_FAILED = 1 << 2  # SN_FLAG_FAILED: a frame a worker could not process; the body says why


def payload_crc(payload: Any) -> int:
    """CRC-32C of a payload (any buffer), the code the header's own crc uses. Hardware
    accelerated (SSE4.2) and without the GIL for large buffers: about 20 GB/s on one core, so
    `--checksum` costs about 0.4 ms per 8 MiB frame at each hop (bench/transport.py)."""
    return crc32c.crc32c(payload)


class Encoding(IntEnum):
    RAW = 0
    BSLZ4 = 1
    MSGPACK = 2


DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype(name): code
    for code, name in enumerate(
        ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
         "float32", "float64"],
        start=1,
    )
}
_DTYPES = {code: dt for dt, code in DTYPE_CODES.items()}


def dtype_code(dtype: Any) -> int:
    dt = np.dtype(dtype)
    try:
        return DTYPE_CODES[dt.newbyteorder("<") if dt.byteorder == ">" else dt]
    except KeyError:
        names = ", ".join(str(d) for d in DTYPE_CODES)
        raise ProtocolError(f"dtype {dt} cannot travel in a frame; use one of {names}") from None


def dtype_of(code: int) -> np.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise ProtocolError(f"unknown dtype code {code}") from None


def frame_header(
    array: np.ndarray, run_id: int, frame_id: int, timestamp_ns: int | None = None, sender: int = 0,
    flags: int = 0, parts: int = 0,
) -> FrameHeader:
    """The header of a raw (uncompressed) frame holding `array`."""
    return FrameHeader(
        MsgType.FRAME,
        run_id=run_id,
        frame_id=frame_id,
        shape=array.shape,
        dtype_code=dtype_code(array.dtype),
        encoding=Encoding.RAW,
        timestamp_ns=time.time_ns() if timestamp_ns is None else timestamp_ns,
        sender=sender,
        flags=flags,
        parts=parts,
    )


def reencoded(header: FrameHeader, encoding: Encoding, payload_bytes: int,
              sender: int) -> FrameHeader:
    """The same frame's header after a worker changed its payload's encoding."""
    return FrameHeader(
        header.msg_type, run_id=header.run_id, frame_id=header.frame_id, shape=header.shape,
        dtype_code=header.dtype_code, encoding=encoding, payload_bytes=payload_bytes,
        timestamp_ns=header.timestamp_ns, flags=header.flags, sender=sender, parts=header.parts,
    )


def failure_record(header: FrameHeader, shape: tuple[int, ...], dtype: np.dtype, reason: str,
                   sender: int) -> list:
    """[header, msgpack body] that stands for a frame a worker could not process, so the
    collector records it missing with the reason instead of waiting for it."""
    body = msgpack.packb({"reason": reason}, use_bin_type=True)
    failed = FrameHeader(
        MsgType.FRAME, run_id=header.run_id, frame_id=header.frame_id, shape=shape,
        dtype_code=dtype_code(dtype), encoding=Encoding.MSGPACK, payload_bytes=len(body),
        timestamp_ns=header.timestamp_ns, flags=header.flags | FLAG_FAILED, sender=sender,
    )
    return [failed.pack(), body]


def payload_view(header: FrameHeader, payload: Any) -> np.ndarray:
    """A zero-copy numpy view of a raw FRAME payload, checked against its header."""
    buf = memoryview(payload)
    if buf.nbytes != header.payload_bytes:
        raise ProtocolError(
            f"frame {header.frame_id}: payload has {buf.nbytes} bytes, header says "
            f"{header.payload_bytes}"
        )
    if header.encoding != Encoding.RAW:
        raise ProtocolError(f"frame {header.frame_id}: payload is encoded ({header.encoding})")
    return np.frombuffer(buf, dtype=dtype_of(header.dtype_code)).reshape(header.shape)


def control_message(msg_type: MsgType, run_id: int, body: Any = None, frame_id: int = 0) -> list:
    """[header, msgpack body]: how every non-frame message travels."""
    packed = msgpack.packb(body if body is not None else {}, use_bin_type=True)
    header = FrameHeader(
        msg_type, run_id=run_id, frame_id=frame_id, encoding=Encoding.MSGPACK,
        payload_bytes=len(packed), timestamp_ns=time.time_ns(),
    )
    return [header.pack(), packed]


def decode_body(header: FrameHeader, payload: Any) -> dict:
    """The msgpack body of a control message; ProtocolError if it is not a map."""
    try:
        body = msgpack.unpackb(bytes(payload), raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"message type {header.msg_type}: undecodable body ({exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"message type {header.msg_type}: body is not a map")
    return body
