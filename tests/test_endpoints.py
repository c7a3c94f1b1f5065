"""Links by endpoint (links/endpoints.py) and the links themselves (zmq_links.py, ring_links.py,
base.py): the right class per endpoint, refused combinations, and frames really handed over."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import zmq

from stream_node.links.base import BATCH, RING, ring_name
from stream_node.links.credit import CreditInput, CreditOutput
from stream_node.links.endpoints import open_input, open_output
from stream_node.links.ring import Ring
from stream_node.links.ring_links import RingInput, RingOutput
from stream_node.links.transport import LinkLimits
from stream_node.links.zmq_links import PullInput, PushOutput
from stream_node.model.errors import ConfigError, PeerTimeout, RingError
from stream_node.model.frame import FrameHeader, frame_header, payload_view
from stream_node.stages.admission import admit
from stream_node.stages.drops import DropLedger

RUN = 0x1234
SHAPE = (16, 24)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * 2
LIMITS = LinkLimits(linger_ms=0)


def pixels(frame_id: int) -> np.ndarray:
    return (np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE) + frame_id)


@pytest.fixture
def links():
    """Closes every link a test opens, inputs before outputs, even when the test fails."""
    opened: list = []
    yield opened.append
    for link in reversed(opened):
        link.close()


@pytest.fixture
def ring():
    name = f"te{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    Ring.unlink(name)


def take_all(inp, n: int, timeout_ms: int = 5000) -> list[list]:
    """Take until `n` messages came (each take waits up to `timeout_ms`: a poll, not a delay)."""
    got: list[list] = []
    while len(got) < n:
        batch = inp.take(timeout_ms)
        assert batch, f"only {len(got)} of {n} frames arrived"
        got.extend(batch)
    return got


# -- the class an endpoint opens -----------------------------------------------------------------

def test_ring_name_is_what_follows_the_ring_scheme():
    assert ring_name(f"{RING}cam0") == "cam0"
    assert ring_name("ipc:///tmp/ring") is None and ring_name("tcp://h:1") is None


def test_a_ring_endpoint_opens_a_ring_output_of_the_given_slots(ctx, links, ring):
    out = open_output(ctx, f"ring://{ring}", LIMITS, FRAME_BYTES, ring_slots=4)
    links(out)
    assert isinstance(out, RingOutput)
    assert out.ring.name == ring and out.ring.slots == 4 and out.ring.slot_bytes >= FRAME_BYTES
    assert out.describe().startswith(f"ring {ring!r}: 4 slots")


@pytest.mark.parametrize("scheme", ["ipc", "tcp"])
def test_a_zeromq_endpoint_opens_a_push_output(ctx, links, tmp_path, scheme):
    endpoint = f"ipc://{tmp_path}/data" if scheme == "ipc" else "tcp://127.0.0.1:*"
    out = open_output(ctx, endpoint, LIMITS, FRAME_BYTES, ring_slots=4)
    links(out)
    assert isinstance(out, PushOutput) and out.sock.type == zmq.PUSH
    assert out.describe() == LIMITS.describe(FRAME_BYTES)


def test_a_reliable_window_opens_a_credit_output(ctx, links, tmp_path):
    out = open_output(ctx, f"ipc://{tmp_path}/data", LIMITS, FRAME_BYTES, 4, reliable_window=12)
    links(out)
    assert isinstance(out, CreditOutput) and out.window == 12
    assert out.describe().startswith("reliable fan-out (credit), window 12 frames")


def test_a_ring_in_reliable_mode_is_a_config_error_and_creates_no_ring(ctx, ring):
    with pytest.raises(ConfigError, match="reliable mode is for a ZeroMQ fan-out"):
        open_output(ctx, f"ring://{ring}", LIMITS, FRAME_BYTES, 4, reliable_window=8)
    with pytest.raises(RingError):
        Ring.attach(ring)


def test_inputs_open_by_endpoint(ctx, links, tmp_path, ring):
    pull = open_input(ctx, [f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"], LIMITS)
    links(pull)
    assert type(pull) is PullInput and pull.sock.type == zmq.PULL and not pull.copies
    from_ring = open_input(ctx, [f"ring://{ring}"], LIMITS)
    links(from_ring)
    assert isinstance(from_ring, RingInput) and from_ring.name == ring and from_ring.copies
    credit = open_input(ctx, [f"ipc://{tmp_path}/c"], LIMITS, credit=(b"w0", RUN, 3))
    links(credit)
    assert isinstance(credit, CreditInput) and credit.sock.type == zmq.DEALER
    assert (credit.run_id, credit.credit) == (RUN, 3)
    assert credit.sock.getsockopt(zmq.ROUTING_ID) == b"w0"


def test_mixed_ring_and_zeromq_inputs_are_a_config_error(ctx, tmp_path, ring):
    with pytest.raises(ConfigError, match="either one ring:// input or ZeroMQ inputs"):
        open_input(ctx, [f"ring://{ring}", f"ipc://{tmp_path}/a"], LIMITS)
    with pytest.raises(ConfigError, match="either one ring:// input or ZeroMQ inputs"):
        open_input(ctx, [f"ipc://{tmp_path}/a", f"ring://{ring}"], LIMITS)


def test_two_ring_inputs_are_a_config_error(ctx, ring):
    with pytest.raises(ConfigError, match="not both"):
        open_input(ctx, [f"ring://{ring}", f"ring://{ring}x"], LIMITS)


def test_a_ring_input_in_reliable_mode_is_a_config_error(ctx, ring):
    with pytest.raises(ConfigError, match="reliable mode, which needs ZeroMQ inputs"):
        open_input(ctx, [f"ring://{ring}"], LIMITS, credit=(b"w0", RUN, 4))


# -- PUSH -> PULL ------------------------------------------------------------------------------

@pytest.fixture
def push_pull(ctx, links, tmp_path):
    endpoint = f"ipc://{tmp_path}/data"
    out = open_output(ctx, endpoint, LIMITS, FRAME_BYTES, ring_slots=4)
    links(out)
    inp = open_input(ctx, [endpoint], LIMITS)
    links(inp)
    inp.wait_ready(5.0, lambda: None)
    return out, inp


def test_a_push_output_without_a_consumer_reserves_nothing(ctx, links, tmp_path):
    out = open_output(ctx, f"ipc://{tmp_path}/data", LIMITS, FRAME_BYTES, ring_slots=4)
    links(out)
    assert out.reserve(SHAPE, np.uint16, 50) is None
    assert out.put(frame_header(pixels(0), RUN, 0), pixels(0), 50) is False


def test_a_frame_committed_on_a_push_output_arrives_on_a_pull_input(push_pull):
    out, inp = push_pull
    buffer = out.reserve(SHAPE, np.dtype(np.uint16), 5000)
    assert buffer is not None and buffer.shape == SHAPE
    buffer[:] = pixels(5)
    assert out.commit(frame_header(buffer, RUN, 5), buffer)
    [parts] = take_all(inp, 1)
    header = admit(parts, RUN, DropLedger("test"))
    assert header is not None and header.frame_id == 5
    assert np.array_equal(payload_view(header, parts[1]), pixels(5))
    inp.release()


def test_frames_put_on_a_push_output_arrive_in_order_in_batches(push_pull):
    out, inp = push_pull
    n = BATCH + 4
    for i in range(n):
        frame = pixels(i)
        assert out.put(frame_header(frame, RUN, i), frame.tobytes(), 5000)
    got = take_all(inp, n)
    ids = [FrameHeader.parse(header.buffer).frame_id for header, _ in got]
    assert ids == list(range(n))
    for i, (_, payload) in enumerate(got):
        assert payload.bytes == pixels(i).tobytes()
    assert not inp.exhausted  # PUSH never says it is done: END comes on the control channel
    out.end()
    assert inp.take(50) == []


def test_a_pull_input_with_no_source_times_out_naming_it(ctx, links, tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody"
    inp = open_input(ctx, [endpoint], LIMITS)
    links(inp)
    with pytest.raises(PeerTimeout, match=f"the source at \\['{endpoint}'\\]"):
        inp.wait_ready(0.2, lambda: None)


# -- ring -> ring ------------------------------------------------------------------------------

def test_frames_on_a_ring_output_reach_a_ring_input_in_place(ctx, links, ring):
    out = open_output(ctx, f"ring://{ring}", LIMITS, FRAME_BYTES, ring_slots=8)
    links(out)
    inp = open_input(ctx, [f"ring://{ring}"], LIMITS)
    links(inp)
    for i in range(3):  # published before the worker attaches: the group keeps them
        buffer = out.reserve(SHAPE, np.dtype(np.uint16), 1000)
        assert buffer is not None
        buffer[:] = pixels(i)
        assert out.commit(frame_header(buffer, RUN, i), buffer)
    frame = pixels(3)
    assert out.put(frame_header(frame, RUN, 3), frame.tobytes(), 1000)
    inp.wait_ready(1.0, lambda: None)
    seen = []
    while len(seen) < 4:
        batch = inp.take(1000)
        assert batch, f"only {len(seen)} of 4 frames arrived"
        for parts in batch:  # views of the slots: checked before they are released
            header = admit(parts, RUN, DropLedger("test"))
            assert header is not None and header.run_id == RUN
            assert np.array_equal(parts[1], pixels(header.frame_id))
            seen.append(header.frame_id)
        inp.release()
    assert seen == [0, 1, 2, 3]
    out.end()
    assert inp.take(1000) == [] and inp.exhausted


def test_a_ring_input_with_nothing_published_takes_nothing(ctx, links, ring):
    out = open_output(ctx, f"ring://{ring}", LIMITS, FRAME_BYTES, ring_slots=4)
    links(out)
    inp = open_input(ctx, [f"ring://{ring}"], LIMITS)
    links(inp)
    inp.wait_ready(1.0, lambda: None)
    assert inp.take(20) == [] and not inp.exhausted


def test_a_full_ring_reserves_nothing_until_a_worker_takes_a_frame(ctx, links, ring):
    out = open_output(ctx, f"ring://{ring}", LIMITS, FRAME_BYTES, ring_slots=2)
    links(out)
    frame = pixels(0)
    published = 0
    while out.put(frame_header(frame, RUN, published), frame.tobytes(), 20):
        published += 1
        assert published <= 2 * out.ring.slots, "the ring never filled"
    assert published >= out.ring.slots
    assert out.reserve(SHAPE, np.dtype(np.uint16), 20) is None
    inp = open_input(ctx, [f"ring://{ring}"], LIMITS)
    links(inp)
    inp.wait_ready(1.0, lambda: None)
    assert inp.take(1000)
    inp.release()
    assert out.reserve(SHAPE, np.dtype(np.uint16), 1000) is not None


def test_a_frame_larger_than_a_ring_slot_is_a_config_error(ctx, links, ring):
    out = open_output(ctx, f"ring://{ring}", LIMITS, 64, ring_slots=2)
    links(out)
    big = np.zeros(out.ring.slot_bytes + 1, np.uint8)
    with pytest.raises(ConfigError, match="a slot of ring"):
        out.put(frame_header(big, RUN, 0), big, 100)
