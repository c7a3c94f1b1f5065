"""The control channel beside the data path: run start, ready handshake, end, abort, liveness.

PUSH round-robin cannot broadcast, so run-wide messages travel here: the source holds a ROUTER
(`ControlHub`) that knows every peer by name; each worker and the collector hold a DEALER
(`ControlLink`). Both ends send heartbeats, so either side notices a dead peer within
`peer_timeout_s` and says which one. Each end's socket is served by a thread of its own
(`SocketPump`): heartbeats and liveness never wait for the stage's data loop.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream_node.links.pump import SocketPump
from stream_node.links.transport import HandshakeWatch, bind, connect
from stream_node.model.errors import ExitCode, PeerTimeout, ProtocolError, RunAborted
from stream_node.model.frame import FrameHeader, MsgType, control_message, decode_body

log = logging.getLogger(__name__)

_LINKS = itertools.count()  # numbers this process's control links


@dataclass(frozen=True, slots=True)
class Liveness:
    """A peer is lost after `peer_timeout_s` plus one heartbeat interval of silence (its last
    heartbeat may have left up to an interval before it froze), so a pause shorter than
    `peer_timeout_s` never loses one."""

    heartbeat_s: float = 0.5
    peer_timeout_s: float = 2.0  # a dead or frozen peer is known within this

    @property
    def silent_after_s(self) -> float:
        return self.peer_timeout_s + self.heartbeat_s


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
    waiting: bool = False  # held for the next run (said HELLO to a kept hub between runs)


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


def _relayed(sock: zmq.Socket, routed: bool) -> tuple[bytes, FrameHeader, dict] | None:
    """The next message the control thread relayed (it parsed it once already), or None."""
    try:
        parts = sock.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None
    identity = parts.pop(0) if routed else b""
    header, body = _parse(parts)
    return identity, header, body


def _beat(sock: zmq.Socket, parts: list[bytes]) -> bool:
    """Send a heartbeat unless the peer's queue is full (then it has plenty to read); False
    when the peer is gone."""
    try:
        sock.send_multipart(parts, zmq.NOBLOCK)
    except zmq.Again:
        return True
    except zmq.ZMQError:  # EHOSTUNREACH: the peer disconnected
        return False
    return True


def default_topology() -> str:
    """The topology a node belongs to when nobody names one: its user's, so that two users'
    runs on the same default ports refuse each other's nodes (`run` names the topology file's)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container): one shared name
        return ""


@dataclass
class ControlHub:
    """The source's end: answers HELLO with START, tracks READY/DONE, broadcasts END and FINISH.

    HELLO, heartbeats and admission are handled in the control thread; `poll` returns the rest.
    A serving node keeps one hub across runs: made idle (`start_body` None), it holds each
    HELLO until `begin` names the next run, and `idle` forgets the peers of the run just ended
    (their stages come back with new links for the next one).
    """

    ctx: zmq.Context
    endpoint: str
    run_id: int
    start_body: dict | None
    liveness: Liveness = field(default_factory=Liveness)
    topology: str = field(default_factory=default_topology)  # others' peers are refused

    def __post_init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}
        self._lock = threading.Lock()  # peers are added by the control thread
        self.rejected = 0
        self.refused = 0  # HELLOs of another topology
        self.foreign = 0
        # The last runs this hub served: their stragglers are no fault. A few, not all: a hub
        # kept for days serves thousands of runs.
        self._ended: deque[int] = deque(maxlen=4)
        sock = self.ctx.socket(zmq.ROUTER)
        # A send to a peer that is gone raises instead of vanishing silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 1000)
        try:
            bind(sock, self.endpoint, "control")
        except Exception:
            sock.close(linger=0)
            raise
        self._pump = SocketPump(self.ctx, sock, self.liveness.heartbeat_s, self._arrived,
                                self._beat, self._unsent, self._woke, "hub")
        self.sock = self._pump.front  # readable when `poll` has something for the caller

    def close(self) -> None:
        self._pump.close()

    def begin(self, run_id: int, start_body: dict) -> None:
        """Start the next run on a kept hub: every peer waiting since its HELLO gets START now,
        later ones get it with their answer (the lock makes it one or the other, never both)."""
        with self._lock:
            self.run_id, self.start_body = run_id, start_body
            waiting = list(self.peers.values())
            now = time.monotonic()
            for peer in waiting:  # an idle link sends no heartbeat: its silence starts now
                peer.last_seen, peer.waiting = now, False
        for peer in waiting:
            self._pump.send([peer.identity, *control_message(MsgType.START, run_id,
                                                             start_body)])

    def hold_new(self) -> None:
        """The run is ending: a stage that says HELLO now is back for the next run (its link
        of this one is done), so it waits for the next `begin` instead of joining this run."""
        with self._lock:
            self.start_body = None

    def idle(self) -> None:
        """The run is over: forget its peers (not those waiting for the next run) and hold
        HELLOs until the next `begin`."""
        with self._lock:
            if self.run_id:
                self._ended.append(self.run_id)
            self.run_id, self.start_body = 0, None
            self.peers = {k: p for k, p in self.peers.items() if p.waiting}

    def waiting(self, role: str) -> int:
        """Stages of `role` that said HELLO and wait for the next run."""
        return sum(p.waiting and not p.unreachable for p in self.peers_of(role))

    def all_peers(self) -> list[Peer]:
        with self._lock:
            return list(self.peers.values())

    def peers_of(self, role: str) -> list[Peer]:
        return [p for p in self.all_peers() if p.role == role]

    def forget(self, peer: Peer) -> None:
        """Drop a lost peer: a successor (a restarted collector) is then the only one."""
        with self._lock:
            self.peers.pop(peer.identity, None)

    def send(self, peer: Peer, msg_type: MsgType, body: Any = None, frame_id: int = 0) -> bool:
        if peer.finished or peer.unreachable:
            return False
        self._pump.send([peer.identity, *control_message(msg_type, self.run_id, body, frame_id)])
        return True

    def broadcast(self, msg_type: MsgType, body: Any = None, frame_id: int = 0,
                  role: str | None = None) -> None:
        for peer in self.all_peers():
            if role is None or peer.role == role:
                self.send(peer, msg_type, body, frame_id)

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """The messages the caller must act on that arrive within `timeout_ms`."""
        if self._pump.failure:
            raise PeerTimeout(f"source: {self._pump.failure}")
        out: list[Inbound] = []
        if not self.sock.poll(timeout_ms):
            return out
        while (msg := _relayed(self.sock, True)) is not None:
            identity, header, body = msg
            peer = self.peers.get(identity)
            if peer is None:  # forgotten since
                continue
            msg_type = MsgType(header.msg_type)
            if msg_type == MsgType.READY:
                peer.ready = True
            elif msg_type in (MsgType.DONE, MsgType.DRAINED):
                peer.final = body
                peer.finished = msg_type == MsgType.DONE
            out.append(Inbound(msg_type, header, body, peer))
        return out

    def lost(self, role: str | None = None) -> list[Peer]:
        """Peers that did not finish but went silent for the peer timeout or disconnected;
        none while this process itself is only catching up after a pause."""
        if self._pump.behind():
            return []
        limit = time.monotonic() - self.liveness.silent_after_s
        return [p for p in self.all_peers()
                if not (p.finished or p.waiting) and (p.unreachable or p.last_seen < limit)
                and (role is None or p.role == role)]

    # -- in the control thread -----------------------------------------------------------

    def _arrived(self, sock: zmq.Socket, parts: list[bytes]) -> bool:
        identity = parts[0]
        try:
            header, body = _parse(parts[1:])
            msg_type = MsgType(header.msg_type)
        except (ProtocolError, ValueError) as exc:
            self.rejected += 1
            log.warning("control: rejected a message from %r: %s", identity, exc)
            return False
        if msg_type == MsgType.HELLO:
            self._hello(sock, identity, body)
            return False
        peer = self.peers.get(identity)
        if peer is None:
            if header.run_id in self._ended:  # a stage of a run just ended, still saying bye
                return False
            self.rejected += 1
            log.warning("control: %s from unknown peer %r ignored", msg_type.name, identity)
            return False
        if header.run_id != self.run_id:
            self.foreign += 1
            log.warning("control: %s from %s for run %#x dropped (this run is %#x)",
                        msg_type.name, peer.name, header.run_id, self.run_id)
            return False
        peer.last_seen = time.monotonic()
        peer.unreachable = False  # it is back (reconnected after a freeze or a cut)
        return msg_type != MsgType.HEARTBEAT

    def _hello(self, sock: zmq.Socket, identity: bytes, body: dict) -> None:
        peer = Peer(identity, str(body.get("role", "?")), str(body.get("name", identity)),
                    int(body.get("pid", 0)), time.monotonic())
        theirs = str(body.get("topology", ""))
        if theirs != self.topology:  # another user's or topology's node: never one of ours
            self.refused += 1
            why = (f"this source's control endpoint {self.endpoint} belongs to topology "
                   f"{self.topology!r}, the {peer.role} is of {theirs!r} (--topology)")
            log.warning("control: refused %s %s (pid %d): %s", peer.role, peer.name,
                        peer.pid, why)
            _beat(sock, [identity, *control_message(
                MsgType.ABORT, self.run_id, {"reason": why, "exit_code": int(ExitCode.CONFIG)})])
            return
        with self._lock:
            known = self.peers.get(identity)
            if known is not None:  # said again by a link that heard nothing for a while
                known.last_seen, known.unreachable = peer.last_seen, False
            else:
                self.peers[identity] = peer
                peer.waiting = self.start_body is None
            body = self.start_body
        if known is None:
            log.info("control: %s %s (pid %d) said hello", peer.role, peer.name, peer.pid)
        if body is not None and not _beat(sock, [identity, *control_message(
                MsgType.START, self.run_id, body)]):
            (known or peer).unreachable = True

    def _beat(self, sock: zmq.Socket) -> None:
        beat = control_message(MsgType.HEARTBEAT, self.run_id)
        for peer in self.all_peers():
            if not (peer.finished or peer.unreachable) and not _beat(sock, [peer.identity,
                                                                            *beat]):
                log.warning("control: cannot reach %s %s", peer.role, peer.name)
                peer.unreachable = True

    def _unsent(self, parts: list[bytes], exc: zmq.ZMQError) -> None:
        peer = self.peers.get(parts[0])
        if peer is not None:  # EHOSTUNREACH: the peer disconnected
            log.warning("control: cannot reach %s %s: %s", peer.role, peer.name, exc)
            peer.unreachable = True

    def _woke(self) -> None:
        """This process was paused: every peer's silence is counted from now, not from then."""
        now = time.monotonic()
        for peer in self.all_peers():
            peer.last_seen = max(peer.last_seen, now)


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
        # One per link, not per process: a serving stage's link of its next run must not take
        # the routing id its last run's link may still hold (the hub would refuse it).
        self.identity = f"{role}:{name}:{os.getpid()}:{next(_LINKS)}".encode()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        sock.setsockopt(zmq.LINGER, 1000)
        self.watch = HandshakeWatch(sock)  # made before connect(): no event is missed
        try:
            connect(sock, endpoint, "source's control")
        except Exception:
            self.watch.close()
            sock.close(linger=0)
            raise
        self._last_heard = time.monotonic()
        self._lost: str | None = None  # set by the control thread once the hub went silent
        self._pump = SocketPump(ctx, sock, self.liveness.heartbeat_s, self._arrived, self._beat,
                                self._unsent, self._woke, f"{role}-{name}")
        self.sock = self._pump.front  # readable when `recv_ready` has something for the caller
        self._hello = {"role": role, "name": name, "pid": os.getpid(),
                       "topology": default_topology() if topology is None else topology}
        self.send(MsgType.HELLO, self._hello)

    def close(self, linger_ms: int | None = None) -> None:
        self.watch.close()
        self._pump.close(linger_ms)

    def send(self, msg_type: MsgType, body: Any = None) -> None:
        self._pump.send(control_message(msg_type, self.run_id, body))

    def wait_start(self, timeout_s: float | None) -> dict:
        """Block until the hub sends START; PeerTimeout naming the hub if it never does.

        None waits for ever, as a serving stage does between runs. HELLO is said again whenever
        the hub stays silent (a kept hub beats every waiting peer), so a source that was
        restarted meanwhile learns of this stage too."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        said = time.monotonic()
        while True:
            left_ms = 200 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if time.monotonic() - max(said, self._last_heard) > self.liveness.silent_after_s:
                said = time.monotonic()
                self.send(MsgType.HELLO, self._hello)
            if left_ms <= 0:
                raise PeerTimeout(
                    f"{self.role} {self.name}: no START from the source at {self.endpoint} "
                    f"within {timeout_s or 0:.1f} s: is the source running?"
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
        """The first command waiting (the rest stay queued), or None."""
        msg = _relayed(self.sock, False)
        if msg is None:
            return None
        _, header, body = msg
        return Inbound(MsgType(header.msg_type), header, body)

    def tick(self) -> None:
        """PeerTimeout once the control thread found the hub silent for too long."""
        if self._pump.failure:
            raise PeerTimeout(f"{self.role} {self.name}: {self._pump.failure}")
        if self._lost is not None:
            raise PeerTimeout(self._lost)

    # -- in the control thread -----------------------------------------------------------

    def _arrived(self, _sock: zmq.Socket, parts: list[bytes]) -> bool:
        try:
            header, _body = _parse(parts)
            msg_type = MsgType(header.msg_type)
        except (ProtocolError, ValueError) as exc:
            self.rejected += 1
            log.warning("%s %s: rejected a control message: %s", self.role, self.name, exc)
            return False
        if self.run_id and header.run_id != self.run_id:
            self.foreign += 1
            log.warning("%s %s: control message of run %#x dropped (this run is %#x)",
                        self.role, self.name, header.run_id, self.run_id)
            return False
        self._last_heard = time.monotonic()
        return msg_type != MsgType.HEARTBEAT

    def _beat(self, sock: zmq.Socket) -> None:
        if not self.run_id:
            return
        _beat(sock, control_message(MsgType.HEARTBEAT, self.run_id))
        silent = time.monotonic() - self._last_heard
        if silent > self.liveness.silent_after_s and self._lost is None:
            self._lost = (f"{self.role} {self.name}: source at {self.endpoint} silent for "
                          f"{silent:.1f} s (peer timeout {self.liveness.peer_timeout_s} s)")

    def _unsent(self, _parts: list[bytes], exc: zmq.ZMQError) -> None:
        log.warning("%s %s: a control message could not be sent: %s", self.role, self.name, exc)

    def _woke(self) -> None:
        self._last_heard = max(self._last_heard, time.monotonic())
