import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_node import FrameHeader, MsgType, ProtocolError, frame_header, payload_view
from stream_node.model.frame import (
    DTYPE_CODES,
    FLAG_PAYLOAD_CRC,
    HEADER_SIZE,
    control_message,
    decode_body,
    dtype_code,
    payload_crc,
)

dtypes = st.sampled_from(sorted(DTYPE_CODES.values()))
u64 = st.integers(0, 2**64 - 1)
dims = st.lists(st.integers(1, 4096), min_size=1, max_size=4).map(tuple)


@given(run_id=u64, frame_id=u64, shape=dims, code=dtypes, ts=u64,
       sender=st.integers(0, 2**32 - 1), flags=st.integers(0, 2**32 - 1))
def test_frame_header_round_trips_bit_exact(run_id, frame_id, shape, code, ts, sender, flags):
    h = FrameHeader(MsgType.FRAME, run_id=run_id, frame_id=frame_id, shape=shape, dtype_code=code,
                    timestamp_ns=ts, sender=sender, flags=flags)
    wire = h.pack()
    assert len(wire) == HEADER_SIZE
    back = FrameHeader.parse(wire)
    assert back == h
    assert (back.run_id, back.frame_id, back.shape, back.dtype_code, back.timestamp_ns,
            back.sender, back.flags) == (run_id, frame_id, shape, code, ts, sender, flags)
    assert back.payload_bytes == back.uncompressed_bytes == int(np.prod(shape)) * (
        np.dtype(list(DTYPE_CODES)[code - 1]).itemsize)


@given(st.binary(max_size=200))
def test_random_bytes_raise_protocol_error_or_parse_never_crash(data):
    try:
        FrameHeader.parse(data)
    except ProtocolError as exc:
        assert str(exc)


def test_header_is_little_endian_at_documented_offsets():
    wire = FrameHeader(MsgType.FRAME, run_id=0x1122, frame_id=7, shape=(3, 5), dtype_code=2,
                       timestamp_ns=99, sender=4).pack()
    _magic, version, hsize, mtype, dt, enc, ndim = struct.unpack_from("<IHHBBBB", wire)
    assert wire[:4] == b"SNFR" and version == 3 and hsize == 96
    assert (mtype, dt, enc, ndim) == (MsgType.FRAME, 2, 0, 2)
    assert struct.unpack_from("<QQ4I", wire, 16) == (0x1122, 7, 3, 5, 0, 0)
    assert struct.unpack_from("<QQQI", wire, 48) == (30, 30, 99, 4)


def test_a_sealed_header_carries_the_payload_crc_at_offset_84_with_its_flag():
    payload = np.arange(15, dtype=np.uint16).reshape(3, 5)
    h = FrameHeader(MsgType.FRAME, run_id=1, frame_id=7, shape=(3, 5), dtype_code=2)
    h.seal(payload_crc(payload))
    wire = h.pack()
    assert struct.unpack_from("<I", wire, 84) == (payload_crc(payload),)
    back = FrameHeader.parse(wire)
    assert back.flags & FLAG_PAYLOAD_CRC and back.payload_crc == payload_crc(payload)
    unflagged = bytearray(_good())
    struct.pack_into("<I", unflagged, 84, 1)  # a crc without its flag: not a header we wrote
    with pytest.raises(ProtocolError):
        FrameHeader.parse(bytes(unflagged))


def _good() -> bytearray:
    return bytearray(FrameHeader(MsgType.FRAME, run_id=1, frame_id=2, shape=(4, 4),
                                 dtype_code=2).pack())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:50], "truncated: got 50 bytes"),
    (lambda b: b"", "truncated: got 0 bytes"),
    (lambda b: b"XXXX" + b[4:], "wrong magic"),
    (lambda b: b[:4] + struct.pack("<H", 1) + b[6:], "unsupported header version: got version 1"),
    (lambda b: b[:6] + struct.pack("<H", 64) + b[8:], "header_size"),
    (lambda b: b[:8] + bytes([99]) + b[9:], "unknown message type"),
    (lambda b: b[:9] + bytes([77]) + b[10:], "dtype"),
    (lambda b: b[:10] + bytes([9]) + b[11:], "encoding"),
    (lambda b: b[:11] + bytes([5]) + b[12:], "ndim"),
    (lambda b: b[:56] + struct.pack("<Q", 31) + b[64:], "does not match shape"),
    (lambda b: b[:48] + struct.pack("<Q", 31) + b[56:], "payload_bytes"),
    (lambda b: b[:90] + b"\x01" + b[91:], "reserved"),
])
def test_bad_headers_raise_protocol_error_saying_what_is_wrong(mutate, message):
    with pytest.raises(ProtocolError, match=message):
        FrameHeader.parse(bytes(mutate(_good())))


def test_a_header_that_cannot_be_valid_is_never_packed():
    with pytest.raises(ProtocolError, match="dtype"):
        FrameHeader(MsgType.FRAME, shape=(2, 2), dtype_code=0).pack()
    with pytest.raises(ProtocolError, match="at most 4 dimensions"):
        FrameHeader(MsgType.FRAME, shape=(1, 1, 1, 1, 1), dtype_code=1)


@pytest.mark.parametrize("offset", [24, 27, 31, 64, 72, 76])
def test_a_header_damaged_in_transit_is_refused_not_believed(offset):
    """Before version 2 a flipped bit in the frame id (bytes 24-31) gave a valid header of
    another frame: written at the wrong index, the real frame then dropped as a duplicate.
    The CRC-32C over the header refuses it, and the receiving node counts it malformed."""
    wire = _good()
    wire[offset] ^= 0x10
    with pytest.raises(ProtocolError, match="checksum mismatch: damaged in transit"):
        FrameHeader.parse(bytes(wire))


def test_the_header_checksum_is_crc32c_over_the_header_with_its_field_zero():
    wire = bytearray(_good())
    stored = struct.unpack_from("<I", wire, 80)[0]
    wire[80:84] = b"\0\0\0\0"
    crc = 0xFFFFFFFF
    for byte in wire:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    assert stored == crc ^ 0xFFFFFFFF


def test_payload_view_is_zero_copy_and_checks_length():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = frame_header(array, run_id=1, frame_id=0)
    buf = bytearray(array.tobytes())
    view = payload_view(header, buf)
    assert np.array_equal(view, array)
    buf[0:4] = np.float32(42).tobytes()
    assert view[0, 0] == 42  # a view of the buffer, not a copy
    with pytest.raises(ProtocolError, match="payload has 47 bytes"):
        payload_view(header, buf[:47])


def test_unsupported_dtype_is_refused_clearly():
    with pytest.raises(ProtocolError, match="cannot travel"):
        dtype_code(np.complex64)


def test_control_messages_carry_a_msgpack_body():
    wire, body = control_message(MsgType.END, 5, {"last_frame_id": 9, "frame_count": 10}, 9)
    header = FrameHeader.parse(wire)
    assert (header.msg_type, header.run_id, header.frame_id) == (MsgType.END, 5, 9)
    assert decode_body(header, body) == {"last_frame_id": 9, "frame_count": 10}
    with pytest.raises(ProtocolError, match="body"):
        decode_body(header, b"\xc1")
