"""Bounded ZeroMQ data sockets (links/transport.py): limits really set, errors that name the
endpoint, the handshake watch, and frames across a real socket pair."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from conftest import free_tcp_endpoint
from stream_node.links.transport import (
    ZERO_COPY_THRESHOLD,
    HandshakeWatch,
    LinkLimits,
    MiB,
    bind,
    connect,
    data_socket,
    recv_parts,
    send_frame,
)
from stream_node.model.errors import ConfigError, PeerTimeout
from stream_node.model.frame import FrameHeader, frame_header, payload_view


@pytest.fixture
def sockets(ctx):
    """Every socket a test makes is closed at teardown, whatever happened."""
    made: list[zmq.Socket] = []

    def make(kind: int, limits: LinkLimits | None = None) -> zmq.Socket:
        sock = data_socket(ctx, kind, limits or LinkLimits())
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def pair(sockets, tmp_path):
    """A PUSH bound on ipc in tmp_path and a PULL connected to it, the handshake done."""
    endpoint = f"ipc://{tmp_path}/data"
    push, pull = sockets(zmq.PUSH), sockets(zmq.PULL)
    bind(push, endpoint, "data")
    watch = HandshakeWatch(pull)
    try:
        connect(pull, endpoint, "input")
        watch.wait(1, 5.0, "the test's PUSH")
    finally:
        watch.close()
    return push, pull


# -- LinkLimits ----------------------------------------------------------------------------------

def test_the_memory_bound_counts_both_queues_two_engines_and_doubled_kernel_buffers():
    limits = LinkLimits(sndhwm=3, rcvhwm=5, sndbuf=MiB, rcvbuf=2 * MiB)
    assert limits.bound_bytes(1000) == (3 + 5 + 2) * 1000 + 2 * (3 * MiB)
    default = LinkLimits()
    assert default.bound_bytes(4 * MiB) == 18 * 4 * MiB + 2 * 8 * MiB
    assert default.bound_bytes(0) == 16 * MiB


def test_the_memory_bound_is_described_with_every_term():
    text = LinkLimits().describe(4 * MiB)
    assert text.startswith("link memory bound ~88 MiB")
    for term in ("SNDHWM 8", "RCVHWM 8", "4.00 MiB", "SNDBUF 4 MiB", "RCVBUF 4 MiB"):
        assert term in text


def test_link_limits_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinkLimits().sndhwm = 1  # type: ignore[misc]


# -- data sockets --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [zmq.PUSH, zmq.PULL, zmq.ROUTER, zmq.DEALER])
def test_a_data_socket_carries_every_limit(sockets, kind):
    limits = LinkLimits(sndhwm=3, rcvhwm=5, sndbuf=MiB, rcvbuf=2 * MiB,
                        max_message_bytes=7 * MiB, linger_ms=123, keepalive_s=17)
    sock = sockets(kind, limits)
    assert sock.type == kind
    assert {opt: sock.getsockopt(opt) for opt in (
        zmq.SNDHWM, zmq.RCVHWM, zmq.SNDBUF, zmq.RCVBUF, zmq.MAXMSGSIZE, zmq.LINGER,
        zmq.IMMEDIATE, zmq.HEARTBEAT_IVL, zmq.TCP_KEEPALIVE, zmq.TCP_KEEPALIVE_IDLE)} == {
        zmq.SNDHWM: 3, zmq.RCVHWM: 5, zmq.SNDBUF: MiB, zmq.RCVBUF: 2 * MiB,
        zmq.MAXMSGSIZE: 7 * MiB, zmq.LINGER: 123, zmq.IMMEDIATE: 1, zmq.HEARTBEAT_IVL: 0,
        zmq.TCP_KEEPALIVE: 1, zmq.TCP_KEEPALIVE_IDLE: 17}


def test_a_frame_is_not_queued_for_a_peer_that_never_connected(sockets, tmp_path):
    push = sockets(zmq.PUSH)
    bind(push, f"ipc://{tmp_path}/nobody", "data")
    assert not push.poll(50, zmq.POLLOUT)
    with pytest.raises(zmq.Again):
        send_frame(push, b"h" * 96, b"payload", zmq.NOBLOCK)


def test_a_message_above_the_size_limit_disconnects_its_sender(sockets, tmp_path):
    endpoint = f"ipc://{tmp_path}/big"
    push = sockets(zmq.PUSH)
    pull = sockets(zmq.PULL, LinkLimits(max_message_bytes=1024))
    bind(push, endpoint, "data")
    monitor = pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    try:
        connect(pull, endpoint, "input")
        assert monitor.poll(5000)
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        send_frame(push, b"h" * 96, np.zeros(2048, np.uint8))
        assert monitor.poll(5000), "the oversized message did not end the connection"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not pull.poll(0)
    finally:
        pull.disable_monitor()
        monitor.close(linger=0)


# -- bind / connect errors -----------------------------------------------------------------------

def test_binding_an_endpoint_in_use_is_a_config_error_naming_it(sockets):
    endpoint = free_tcp_endpoint()
    bind(sockets(zmq.PUSH), endpoint, "data")
    with pytest.raises(ConfigError, match=f"cannot bind the data endpoint '{endpoint}'"):
        bind(sockets(zmq.PUSH), endpoint, "data")


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:notaport", "bogus://x", "localhost:5555"])
def test_binding_a_malformed_endpoint_is_a_config_error_saying_what_is_expected(sockets,
                                                                               endpoint):
    with pytest.raises(ConfigError, match=r"status endpoint .*expected tcp://HOST:PORT"):
        bind(sockets(zmq.PUSH), endpoint, "status")


@pytest.mark.parametrize("endpoint", ["bogus://x", "tcp://no-port"])
def test_connecting_to_a_malformed_endpoint_is_a_config_error_naming_it(sockets, endpoint):
    with pytest.raises(ConfigError, match=f"cannot connect to the input endpoint '{endpoint}'"):
        connect(sockets(zmq.PULL), endpoint, "input")


def test_connect_takes_several_endpoints_and_names_the_bad_one(sockets, tmp_path):
    good = f"ipc://{tmp_path}/a"
    with pytest.raises(ConfigError, match="'bogus://b'"):
        connect(sockets(zmq.PULL), [good, "bogus://b"], "input")


# -- the handshake watch -------------------------------------------------------------------------

def test_the_watch_returns_once_every_peer_has_shaken_hands(sockets, tmp_path):
    a, b = f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"
    for endpoint in (a, b):
        bind(sockets(zmq.PUSH), endpoint, "data")
    pull = sockets(zmq.PULL)
    watch = HandshakeWatch(pull)
    try:
        connect(pull, [a, b], "input")
        watch.wait(2, 5.0, "two sources")
        assert watch.connected == 2
        watch.check("two sources")  # nothing refused: returns at once
    finally:
        watch.close()


def test_the_watch_times_out_naming_the_peer_and_how_many_came(sockets, tmp_path):
    pull = sockets(zmq.PULL)
    watch = HandshakeWatch(pull)
    calls = []
    try:
        connect(pull, f"ipc://{tmp_path}/nobody", "input")
        with pytest.raises(PeerTimeout, match=r"no connection to the source after 0.3 s \(0/1 "
                                              r"up\): is it running"):
            watch.wait(1, 0.3, "the source", meanwhile=lambda: calls.append(1))
    finally:
        watch.close()
    assert calls, "meanwhile was never called while waiting"


def test_what_meanwhile_raises_ends_the_wait(sockets, tmp_path):
    pull = sockets(zmq.PULL)
    watch = HandshakeWatch(pull)

    def abort() -> None:
        raise RuntimeError("aborted by the test")

    try:
        connect(pull, f"ipc://{tmp_path}/nobody", "input")
        with pytest.raises(RuntimeError, match="aborted by the test"):
            watch.wait(1, 5.0, "the source", meanwhile=abort)
    finally:
        watch.close()


# -- frames across a real pair -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 4), (512, 1024)])
def test_a_frame_sent_arrives_as_header_and_payload_numpy_can_view(pair, shape):
    push, pull = pair
    frame = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    assert (frame.nbytes >= ZERO_COPY_THRESHOLD) == (shape == (512, 1024))
    header = frame_header(frame, run_id=9, frame_id=4)
    send_frame(push, header.pack(), frame)
    assert pull.poll(5000)
    parts = recv_parts(pull)
    assert len(parts) == 2 and all(isinstance(p, zmq.Frame) for p in parts)
    got = FrameHeader.parse(parts[0].buffer)
    assert got == header
    assert np.array_equal(payload_view(got, parts[1].buffer), frame)


def test_a_payload_sent_with_copy_may_be_reused_at_once(pair):
    push, pull = pair
    buffer = np.full((256, 256), 7, np.uint16)  # above the zero-copy threshold
    header = frame_header(buffer, run_id=1, frame_id=0)
    send_frame(push, header.pack(), buffer, copy=True)
    buffer[:] = 9  # a ring slot reused for the next frame
    assert pull.poll(5000)
    _, payload = recv_parts(pull)
    assert np.all(np.frombuffer(payload.buffer, np.uint16) == 7)


def test_frames_arrive_in_order_and_whole(pair):
    push, pull = pair
    frames = [np.full((64, 64), i, np.uint32) for i in range(20)]
    for i, frame in enumerate(frames):
        send_frame(push, frame_header(frame, 1, i).pack(), frame)
    for i in range(20):
        assert pull.poll(5000)
        header_frame, payload = recv_parts(pull)
        header = FrameHeader.parse(header_frame.buffer)
        assert header.frame_id == i
        assert np.array_equal(payload_view(header, payload.buffer), frames[i])


@pytest.mark.timeout(30)
def test_a_receiver_that_reads_nothing_for_seconds_loses_nothing(sockets):
    """A collector stuck in one long write (a disk stall) reads nothing while its queues are
    full. With ZMTP heartbeats on the data link, its engine stopped reading pings too, timed
    the connection out after the heartbeat timeout and dropped the frames in flight (and libzmq
    4.3 could then abort: `Assertion failed: !_io_error`, libzmq issue 4767). The data links
    leave liveness to the control channel, so the frames are only late."""
    small = LinkLimits(sndhwm=2, rcvhwm=2, sndbuf=64 << 10, rcvbuf=64 << 10)
    push, pull = sockets(zmq.PUSH, small), sockets(zmq.PULL, small)
    endpoint = free_tcp_endpoint()
    bind(pull, endpoint, "input")
    connect(push, endpoint, "data")
    frames = 40
    frame = np.zeros(1 << 17, np.uint16)  # 256 KiB: the queues fill with a few

    def send_all() -> None:
        for i in range(frames):
            send_frame(push, frame_header(frame, 1, i).pack(), frame)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    threading.Event().wait(2.5)  # the stall itself (what is tested), longer than any timeout
    got = []
    while len(got) < frames and pull.poll(3000):
        header, _ = recv_parts(pull)
        got.append(FrameHeader.parse(header.buffer).frame_id)
    sender.join(timeout=5)
    assert got == list(range(frames))
