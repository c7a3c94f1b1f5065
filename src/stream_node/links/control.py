"""The control channel beside the data path: run start, ready handshake, end, abort, liveness.

PUSH round-robin cannot broadcast, so run-wide messages travel here: the source holds a ROUTER
(`ControlHub`) that knows every peer by name; each worker and the collector hold a DEALER
(`ControlLink`). Both ends send heartbeats, so either side notices a dead peer within
`peer_timeout_s` and says which one.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream_node.links.transport import HandshakeWatch, bind, connect
from stream_node.model.errors import ExitCode, PeerTimeout, ProtocolError, RunAborted
from stream_node.model.frame import FrameHeader, MsgType, control_message, decode_body

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Liveness:
    heartbeat_s: float = 0.5
    peer_timeout_s: float = 2.0  # a dead or frozen peer is known within this


@dataclass(slots=True)
class Peer:
    identity: bytes
    role: str
    name: str
    pid: int
    last_seen: float
    ready: bool = False
    finished: bool = False  # said DONE: it has left, on purpose
    unreachable: bool = False  # its connection is gone (it died or was cut off)
    final: dict | None = None  # the body of its DONE (or DRAINED for the collector)


@dataclass(slots=True)
class Inbound:
    """One control message after parsing: who sent it, what, and its body."""

    msg_type: MsgType
    header: FrameHeader
    body: dict
    peer: Peer | None = None


def _parse(parts: list[bytes]) -> tuple[FrameHeader, dict]:
    if len(parts) != 2:
        raise ProtocolError(f"control message has {len(parts)} parts, expected 2")
    header = FrameHeader.parse(parts[0])
    return header, decode_body(header, parts[1])


def _drain(
    sock: zmq.Socket, routed: bool, reject: Callable[[bytes, ProtocolError], None]
) -> Iterator[tuple[bytes, FrameHeader, dict]]:
    """Yield each message already waiting on `sock`, parsed; malformed ones go to `reject`.

    A bad message is skipped, not raised: one confused or hostile sender must not take the
    control channel down for every peer. A generator, so that a caller which stops at the first
    command leaves the rest queued on the socket. `routed`: a ROUTER's messages start with the
    sender's identity (a DEALER's have none; b"" stands in).
    """
    while True:
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        identity = parts.pop(0) if routed else b""
        try:
            header, body = _parse(parts)
        except ProtocolError as exc:
            reject(identity, exc)
            continue
        yield identity, header, body


def default_topology() -> str:
    """The topology a node belongs to when nobody names one: its user's, so that two users'
    runs on the same default ports refuse each other's nodes (`run` names the topology file's)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container): one shared name
        return ""


@dataclass
class ControlHub:
    """The source's end: answers HELLO with START, tracks READY/DONE, broadcasts END and FINISH."""

    ctx: zmq.Context
    endpoint: str
    run_id: int
    start_body: dict
    liveness: Liveness = field(default_factory=Liveness)
    topology: str = field(default_factory=default_topology)  # others' peers are refused

    def __post_init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.rejected = 0
        self.refused = 0  # HELLOs of another topology
        self.foreign = 0
        self.sock = self.ctx.socket(zmq.ROUTER)
        # A send to a peer that is gone raises instead of vanishing silently.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 1000)
        try:
            bind(self.sock, self.endpoint, "control")
        except Exception:
            self.sock.close(linger=0)
            raise
        self._next_beat = 0.0

    def close(self) -> None:
        self.sock.close(linger=1000)

    def peers_of(self, role: str) -> list[Peer]:
        return [p for p in self.peers.values() if p.role == role]

    def send(self, peer: Peer, msg_type: MsgType, body: Any = None, frame_id: int = 0) -> bool:
        if peer.finished or peer.unreachable:
            return False
        try:
            self.sock.send_multipart(
                [peer.identity, *control_message(msg_type, self.run_id, body, frame_id)]
            )
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer disconnected
            log.warning("control: cannot reach %s %s: %s", peer.role, peer.name, exc)
            peer.unreachable = True
            return False

    def broadcast(self, msg_type: MsgType, body: Any = None, frame_id: int = 0,
                  role: str | None = None) -> None:
        for peer in list(self.peers.values()):
            if role is None or peer.role == role:
                self.send(peer, msg_type, body, frame_id)

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """Handle what arrived within `timeout_ms`; return the messages the caller must act on."""
        self.tick()
        out: list[Inbound] = []
        if not self.sock.poll(timeout_ms):
            return out
        for identity, header, body in _drain(self.sock, True, self._reject):
            msg = self._handle(identity, header, body)
            if msg is not None:
                out.append(msg)
        return out

    def _reject(self, identity: bytes, exc: ProtocolError) -> None:
        self.rejected += 1
        log.warning("control: rejected a message from %r: %s", identity, exc)

    def _handle(self, identity: bytes, header: FrameHeader, body: dict) -> Inbound | None:
        now = time.monotonic()
        msg_type = MsgType(header.msg_type)
        if msg_type == MsgType.HELLO:
            peer = Peer(identity, str(body.get("role", "?")), str(body.get("name", identity)),
                        int(body.get("pid", 0)), now)
            theirs = str(body.get("topology", ""))
            if theirs != self.topology:  # another user's or topology's node: never one of ours
                self.refused += 1
                why = (f"this source's control endpoint {self.endpoint} belongs to topology "
                       f"{self.topology!r}, the {peer.role} is of {theirs!r} (--topology)")
                log.warning("control: refused %s %s (pid %d): %s", peer.role, peer.name,
                            peer.pid, why)
                with contextlib.suppress(zmq.ZMQError):
                    self.sock.send_multipart([identity, *control_message(
                        MsgType.ABORT, self.run_id, {"reason": why,
                                                     "exit_code": int(ExitCode.CONFIG)})])
                return None
            self.peers[identity] = peer
            log.info("control: %s %s (pid %d) said hello", peer.role, peer.name, peer.pid)
            self.send(peer, MsgType.START, self.start_body)
            return None
        peer = self.peers.get(identity)
        if peer is None:
            self.rejected += 1
            log.warning("control: %s from unknown peer %r ignored", msg_type.name, identity)
            return None
        if header.run_id != self.run_id:
            self.foreign += 1
            log.warning("control: %s from %s for run %#x dropped (this run is %#x)",
                        msg_type.name, peer.name, header.run_id, self.run_id)
            return None
        peer.last_seen = now
        peer.unreachable = False  # it is back (reconnected after a freeze or a cut)
        if msg_type == MsgType.HEARTBEAT:
            return None
        if msg_type == MsgType.READY:
            peer.ready = True
        elif msg_type in (MsgType.DONE, MsgType.DRAINED):
            peer.final = body
            peer.finished = msg_type == MsgType.DONE
        return Inbound(msg_type, header, body, peer)

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.liveness.heartbeat_s
            self.broadcast(MsgType.HEARTBEAT)

    def lost(self, role: str | None = None) -> list[Peer]:
        """Peers that did not finish but went silent for the peer timeout or disconnected."""
        limit = time.monotonic() - self.liveness.peer_timeout_s
        return [p for p in self.peers.values()
                if not p.finished and (p.unreachable or p.last_seen < limit)
                and (role is None or p.role == role)]


class ControlLink:
    """A worker's or the collector's end: says HELLO, waits for START, keeps the hub in sight."""

    def __init__(self, ctx: zmq.Context, endpoint: str, role: str, name: str,
                 liveness: Liveness | None = None, topology: str | None = None) -> None:
        self.endpoint = endpoint
        self.role = role
        self.name = name
        self.liveness = liveness or Liveness()
        self.run_id = 0
        self.rejected = 0
        self.foreign = 0
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{role}:{name}:{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.watch = HandshakeWatch(self.sock)  # made before connect(): no event is missed
        try:
            connect(self.sock, endpoint, "source's control")
        except Exception:
            self.watch.close()
            self.sock.close(linger=0)
            raise
        self._last_heard = time.monotonic()
        self._next_beat = 0.0
        self.send(MsgType.HELLO, {"role": role, "name": name, "pid": os.getpid(),
                                  "topology": default_topology() if topology is None
                                  else topology})

    def close(self) -> None:
        self.watch.close()
        self.sock.close(linger=1000)

    def send(self, msg_type: MsgType, body: Any = None) -> None:
        self.sock.send_multipart(control_message(msg_type, self.run_id, body))

    def wait_start(self, timeout_s: float) -> dict:
        """Block until the hub sends START; PeerTimeout naming the hub if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise PeerTimeout(
                    f"{self.role} {self.name}: no START from the source at {self.endpoint} "
                    f"within {timeout_s:.1f} s: is the source running?"
                )
            self.watch.check(f"the source's control endpoint {self.endpoint}")
            msg = self.recv(min(left_ms, 200))
            if msg is not None and msg.msg_type == MsgType.START:
                self.run_id = msg.header.run_id
                return msg.body
            if msg is not None and msg.msg_type == MsgType.ABORT:  # refused, or ended
                exc = RunAborted(f"{self.role} {self.name}: the source refused it: "
                                 f"{msg.body.get('reason')}")
                exc.exit_code = ExitCode(msg.body.get("exit_code", ExitCode.ABORTED))
                raise exc

    def recv(self, timeout_ms: int) -> Inbound | None:
        """The next message the caller must act on (heartbeats are absorbed), or None."""
        self.tick()
        if not self.sock.poll(timeout_ms):
            return None
        return self.recv_ready()

    def recv_ready(self) -> Inbound | None:
        """Like `recv` for a socket already known readable; drains it, returns the first command."""
        for _, header, body in _drain(self.sock, False, self._reject):
            if self.run_id and header.run_id != self.run_id:
                self.foreign += 1
                log.warning("%s %s: control message of run %#x dropped (this run is %#x)",
                            self.role, self.name, header.run_id, self.run_id)
                continue
            self._last_heard = time.monotonic()
            msg_type = MsgType(header.msg_type)
            if msg_type != MsgType.HEARTBEAT:
                return Inbound(msg_type, header, body)
        return None

    def _reject(self, _identity: bytes, exc: ProtocolError) -> None:
        self.rejected += 1
        log.warning("%s %s: rejected a control message: %s", self.role, self.name, exc)

    def tick(self) -> None:
        """Send a heartbeat when due; PeerTimeout once the hub has been silent too long."""
        now = time.monotonic()
        silent = self.run_id and now - self._last_heard > self.liveness.peer_timeout_s
        # Messages waiting here mean this node was the one paused (SIGSTOP, a frozen VM): the
        # hub's heartbeats are queued. The caller reads them next; no blame before that.
        if silent and not self.sock.poll(0):
            raise PeerTimeout(
                f"{self.role} {self.name}: source at {self.endpoint} silent for "
                f"{now - self._last_heard:.1f} s (peer timeout {self.liveness.peer_timeout_s} s)"
            )
        if now >= self._next_beat and self.run_id:
            self._next_beat = now + self.liveness.heartbeat_s
            self.send(MsgType.HEARTBEAT)
