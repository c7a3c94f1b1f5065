"""The one check of an incoming data message (stages/admission.py) and the drop ledger
(stages/drops.py): every refusal is counted by kind, a good frame comes back as its header."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stream_node.model.frame import (
    Encoding,
    FrameHeader,
    MsgType,
    control_message,
    dtype_code,
    failure_record,
    frame_header,
    payload_crc,
)
from stream_node.stages.admission import admit
from stream_node.stages.drops import WARN_LIMIT, DropLedger

RUN = 0xABCDEF
FRAME = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)


@pytest.fixture
def drops() -> DropLedger:
    return DropLedger("worker t0")


def good_parts(frame_id: int = 3, run_id: int = RUN) -> list:
    return [frame_header(FRAME, run_id, frame_id).pack(), FRAME.tobytes()]


def test_a_good_frame_is_admitted_with_its_header(drops):
    header = admit(good_parts(7), RUN, drops)
    assert isinstance(header, FrameHeader)
    assert (header.msg_type, header.run_id, header.frame_id) == (MsgType.FRAME, RUN, 7)
    assert header.shape == FRAME.shape and header.payload_bytes == FRAME.nbytes
    assert drops.as_dict() == {}


def test_a_frame_in_buffers_of_any_kind_is_admitted(drops):
    """ZeroMQ hands over zmq.Frames, the ring memoryviews and numpy views: all are buffers."""
    header_bytes, _ = good_parts()
    for parts in ([bytearray(header_bytes), FRAME],
                  [memoryview(header_bytes), memoryview(FRAME.tobytes())],
                  (np.frombuffer(header_bytes, np.uint8), FRAME.view(np.uint8))):
        assert admit(parts, RUN, drops) is not None
    assert drops.as_dict() == {}


@pytest.mark.parametrize("n", [0, 1, 3])
def test_a_message_with_the_wrong_number_of_parts_is_dropped_as_malformed(drops, n):
    header_bytes, payload = good_parts()
    parts = {0: [], 1: [header_bytes], 3: [header_bytes, payload, b"extra"]}[n]
    assert admit(parts, RUN, drops) is None
    assert drops.as_dict() == {"malformed": 1}


@pytest.mark.parametrize("garbage", [b"", b"hello", b"\0" * 96, b"XXXX" + bytes(92)])
def test_a_garbage_header_is_dropped_as_malformed(drops, garbage):
    assert admit([garbage, FRAME.tobytes()], RUN, drops) is None
    assert drops.as_dict() == {"malformed": 1}


def test_a_frame_of_another_run_is_dropped_as_foreign(drops):
    assert admit(good_parts(run_id=RUN + 1), RUN, drops) is None
    assert drops.as_dict() == {"foreign": 1}


def test_a_control_message_of_another_run_counts_as_foreign_not_unexpected(drops):
    assert admit(control_message(MsgType.END, RUN + 1, {"last_frame_id": 3}), RUN, drops) is None
    assert drops.as_dict() == {"foreign": 1}


@pytest.mark.parametrize("msg_type", [MsgType.START, MsgType.END, MsgType.HEARTBEAT,
                                      MsgType.CREDIT, MsgType.ABORT])
def test_a_message_that_is_not_a_frame_is_dropped_as_unexpected(drops, msg_type):
    assert admit(control_message(msg_type, RUN, {"x": 1}), RUN, drops) is None
    assert drops.as_dict() == {"unexpected": 1}


@pytest.mark.parametrize("delta", [-1, 1, -FRAME.nbytes])
def test_a_payload_of_the_wrong_size_is_dropped_as_invalid(drops, delta):
    header_bytes, payload = good_parts()
    payload = (payload + b"\0" * delta) if delta > 0 else payload[:delta]
    assert admit([header_bytes, payload], RUN, drops) is None
    assert drops.as_dict() == {"invalid": 1}


def test_a_compressed_frame_is_checked_against_its_own_payload_size(drops):
    chunk = b"\1" * 50
    header = FrameHeader(MsgType.FRAME, run_id=RUN, frame_id=0, shape=(4, 6),
                         dtype_code=dtype_code(np.uint16), encoding=Encoding.BSLZ4,
                         payload_bytes=len(chunk))
    assert admit([header.pack(), chunk], RUN, drops) is not None
    assert admit([header.pack(), chunk[:-1]], RUN, drops) is None
    assert drops.as_dict() == {"invalid": 1}


def test_a_failure_record_of_this_run_is_a_frame_and_admitted(drops):
    record = failure_record(frame_header(FRAME, RUN, 9), FRAME.shape, FRAME.dtype,
                            "kernel 'x' failed", sender=2)
    header = admit(record, RUN, drops)
    assert header is not None and header.frame_id == 9 and header.encoding == Encoding.MSGPACK


def test_each_kind_is_counted_apart(drops):
    messages = [good_parts()[:1], good_parts(run_id=1), good_parts(run_id=2),
                control_message(MsgType.READY, RUN), good_parts(), [good_parts()[0], b""]]
    admitted = [admit(m, RUN, drops) for m in messages]
    assert [a is not None for a in admitted] == [False, False, False, False, True, False]
    assert drops.as_dict() == {"malformed": 1, "foreign": 2, "unexpected": 1, "invalid": 1}
    assert drops["foreign"] == 2 and drops["never seen"] == 0


def test_the_ledger_warns_a_few_times_per_kind_then_only_counts(drops, caplog):
    caplog.set_level(logging.WARNING, logger="stream_node.stages.drops")
    for _ in range(WARN_LIMIT + 20):
        admit(good_parts(run_id=RUN + 1), RUN, drops)
    admit([b"junk", b""], RUN, drops)
    lines = [r.getMessage() for r in caplog.records]
    foreign = [line for line in lines if "foreign" in line]
    assert len(foreign) == WARN_LIMIT
    assert foreign[0].startswith("worker t0: dropped a foreign message: run ")
    assert foreign[-1].endswith("(further ones only counted)")
    assert sum("malformed" in line for line in lines) == 1
    assert drops.as_dict() == {"foreign": WARN_LIMIT + 20, "malformed": 1}


def sealed_parts(frame_id: int = 3) -> list:
    header = frame_header(FRAME, RUN, frame_id)
    header.seal(payload_crc(FRAME))
    return [header.pack(), bytearray(FRAME.tobytes())]


def test_a_sealed_frame_is_admitted_when_its_payload_matches(drops):
    assert admit(sealed_parts(), RUN, drops) is not None
    assert drops.as_dict() == {}


def test_a_sealed_frame_whose_payload_was_damaged_is_dropped_naming_it(drops):
    """One bit flipped in transit: the header is intact, so without the payload's CRC the
    damaged pixels would be written as data."""
    parts = sealed_parts(5)
    parts[1][17] ^= 0x04
    assert admit(parts, RUN, drops) is None
    assert drops["corrupt"] == 1
    assert "frame 5: payload checksum mismatch" in drops.frames[5]
