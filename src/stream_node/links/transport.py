"""ZeroMQ links with bounded memory, zero-copy frames and a real connection handshake.

Every data socket is made here, so every link gets the same limits (seed Problem 2) and the same
keepalive settings; nothing else in the package calls `setsockopt` on a data socket.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream_node.links import security
from stream_node.model.errors import ConfigError, PeerTimeout

_REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
# Below this size pyzmq's own copy is cheaper than the bookkeeping of a zero-copy send.
ZERO_COPY_THRESHOLD = 65536
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class LinkLimits:
    """Memory and liveness bounds of one ZeroMQ link.

    A link holds at most about (sndhwm + rcvhwm) messages plus what the kernel socket buffers hold,
    so its memory is bounded by `bound_bytes(max_frame)`; `max_message_bytes` makes a peer that
    sends a larger message get disconnected instead of filling memory.
    """

    sndhwm: int = 8
    rcvhwm: int = 8
    sndbuf: int = 4 * MiB
    rcvbuf: int = 4 * MiB
    max_message_bytes: int = 64 * MiB
    linger_ms: int = 2000
    # An idle connection whose peer vanished (a host gone without a FIN) is probed by the
    # kernel after this many seconds and dropped after 3 unanswered probes.
    keepalive_s: int = 10

    def bound_bytes(self, max_frame_bytes: int) -> int:
        """What one paused link can hold: each queue's HWM plus the one message each ZMTP engine
        has in hand, plus the kernel socket buffers, which Linux makes twice the size asked for
        (tcp(7)); measured by bench/queue_capacity.py."""
        return ((self.sndhwm + self.rcvhwm + 2) * max_frame_bytes
                + 2 * (self.sndbuf + self.rcvbuf))

    def check_fits(self, payload_bytes: int, what: str) -> None:
        """ConfigError naming --max-message when a payload of `payload_bytes` cannot pass this
        link: ZeroMQ would drop such a message and disconnect its sender, with nothing said,
        and the run would stall. Checked when START gives the frame size, before frame 0."""
        if payload_bytes > self.max_message_bytes:
            need = -(-payload_bytes // MiB)
            raise ConfigError(
                f"{what} can be {payload_bytes / MiB:.1f} MiB, more than this node's "
                f"--max-message {self.max_message_bytes / MiB:.0f}MiB: give every node "
                f"--max-message {need}MiB or more (memory per link: see --help)")

    def describe(self, max_frame_bytes: int) -> str:
        return (
            f"link memory bound ~{self.bound_bytes(max_frame_bytes) / MiB:.0f} MiB "
            f"((SNDHWM {self.sndhwm} + RCVHWM {self.rcvhwm} + 2) x "
            f"{max_frame_bytes / MiB:.2f} MiB + 2 x (SNDBUF {self.sndbuf / MiB:.0f} MiB + "
            f"RCVBUF {self.rcvbuf / MiB:.0f} MiB))"
        )


def data_socket(ctx: zmq.Context, kind: int, limits: LinkLimits) -> zmq.Socket:
    """A PUSH or PULL socket carrying frames, configured with `limits`."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, limits.sndhwm)
    sock.setsockopt(zmq.RCVHWM, limits.rcvhwm)
    sock.setsockopt(zmq.SNDBUF, limits.sndbuf)
    sock.setsockopt(zmq.RCVBUF, limits.rcvbuf)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    sock.setsockopt(zmq.LINGER, limits.linger_ms)
    # Queue frames only for peers whose connection is complete: none wait for a peer that is gone.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    # No ZMTP heartbeats here: a receiver whose queue is full reads no pings either, so a slow
    # or briefly paused collector had its connection timed out, the frames in flight dropped
    # and the rest reordered (and libzmq 4.3 could abort, `!_io_error`, libzmq issue 4767).
    # Whether a peer lives is the control channel's question; TCP keepalive (in the kernel,
    # answered even by a paused process) only clears connections whose host is gone.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, limits.keepalive_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    # A peer not bound yet (a serving collector between two runs binds again within ms) is
    # tried again after 10 ms, backing off to 1 s, not after ZeroMQ's fixed 100 ms: that wait
    # was most of a serving node's dead time between series.
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


def send_frame(sock: zmq.Socket, header: bytes, payload: Any, flags: int = 0,
               copy: bool = False) -> None:
    """Send [header, payload]; large payloads go zero-copy (ZeroMQ reads the buffer itself)
    unless `copy` says the buffer is reused as soon as this returns (a ring slot)."""
    small = memoryview(payload).nbytes < ZERO_COPY_THRESHOLD
    sock.send(header, flags | zmq.SNDMORE)
    sock.send(payload, flags, copy=copy or small)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """All parts of one message as zmq.Frames whose buffers numpy can view without copying."""
    return sock.recv_multipart(flags, copy=False)


class HandshakeWatch:
    """Tells when a connecting socket has completed the ZMTP handshake with `expected` peers.

    Made before `connect()` so no event is missed. A READY sent after `wait()` returns means frames
    sent to this socket really reach it: the slow-joiner problem (seed Problem 1) cannot occur.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _REFUSED)
        self._sock = sock
        self.connected = 0

    def _event(self, what: str) -> None:
        event = recv_monitor_message(self._monitor)
        if not event["event"] & _REFUSED:
            self.connected += 1
        elif security.in_use() or event["event"] != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            raise ConfigError(f"{what} refused the connection (CURVE handshake failed: this "
                              "node's keys are not the topology's; see --keys)")
        # Else a peer that went away mid-handshake (a source ending its run as this node came):
        # without keys nothing was refused; ZeroMQ connects again, and a timeout says the rest.

    def check(self, what: str) -> None:
        """Raise at once if a handshake was refused (without waiting for anything)."""
        while self._monitor.poll(0):
            self._event(what)

    def wait(self, expected: int, timeout_s: float, what: str,
             meanwhile: Callable[[], None] | None = None) -> None:
        """Block until `expected` handshakes; `meanwhile` runs every 100 ms (it may raise)."""
        deadline = time.monotonic() + timeout_s
        while self.connected < expected:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise PeerTimeout(
                    f"no connection to {what} after {timeout_s:.1f} s "
                    f"({self.connected}/{expected} up): is it running and reachable?"
                )
            if self._monitor.poll(min(left_ms, 100)):
                self._event(what)
            elif meanwhile is not None:
                meanwhile()

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)


REBIND_S = 0.5  # how long an address in use is tried again


def bind(sock: zmq.Socket, endpoint: str, what: str, secure: bool = True) -> None:
    """Bind, turning ZeroMQ's terse errors into a ConfigError that names the endpoint's role.
    `secure`: with --keys, accept only the topology's nodes (read-only taps opt out)."""
    if secure:
        security.as_server(sock)
    # An address in use is tried again for a moment: a serving stage binds its next run's
    # socket right after closing its last one's, and ZeroMQ releases the port in its I/O
    # thread, after close() returned (seen as a run lost to "Address already in use").
    deadline = time.monotonic() + REBIND_S
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            raise ConfigError(f"cannot bind the {what} endpoint {endpoint!r}: {exc.strerror} "
                              "(expected tcp://HOST:PORT or ipc://PATH, not in use)") from None


def connect(sock: zmq.Socket, endpoints: str | Sequence[str], what: str) -> None:
    security.as_client(sock)
    for endpoint in [endpoints] if isinstance(endpoints, str) else endpoints:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot connect to the {what} endpoint {endpoint!r}: "
                              f"{exc.strerror} (expected tcp://HOST:PORT or ipc://PATH)") from None
