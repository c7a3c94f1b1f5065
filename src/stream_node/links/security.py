"""CURVE keys: only nodes that hold a topology's keys take part in its runs (seed Problem 4).

A run id keeps two runs' frames apart once they arrive; keys keep a test topology from
connecting to a production one at all. `stream-node keys generate DIR` writes

    DIR/server.key, server.key_secret   the binding side of every link (source, collector)
    DIR/node.key, node.key_secret       the connecting side (workers, collector's control)
    DIR/authorized/node.key             public keys a binding node accepts: add more files here

Every node of a topology is given the same DIR (`--keys DIR`); a node with other keys fails the
handshake: the binding node counts and logs the refusal, the connecting one names it. The count
comes from the bound sockets' own handshake events, so it holds whichever key is wrong: a node
with a foreign node key is refused by the authenticator (which also logs that key), one with a
foreign server key fails before the authenticator ever hears of it.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from stream_node.model.errors import ConfigError

log = logging.getLogger(__name__)


def generate(directory: Path) -> list[Path]:
    """Write a topology's key pairs; refuses to overwrite keys that are in use."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "server.key_secret").exists():
        raise ConfigError(f"{directory} already holds keys: remove them first, or use them")
    server_public, server_secret = zmq.auth.create_certificates(directory, "server")
    node_public, node_secret = zmq.auth.create_certificates(directory, "node")
    authorized = directory / "authorized"
    authorized.mkdir(exist_ok=True)
    shutil.copy(node_public, authorized / "node.key")
    for secret in (server_secret, node_secret):
        Path(secret).chmod(0o600)
    return [Path(p) for p in (server_public, server_secret, node_public, node_secret)]


@dataclass(frozen=True)
class Keys:
    server_public: bytes
    server_secret: bytes
    node_public: bytes
    node_secret: bytes
    authorized: Path

    @classmethod
    def load(cls, directory: Path) -> Keys:
        try:
            server_public, server_secret = zmq.auth.load_certificate(
                directory / "server.key_secret")
            node_public, node_secret = zmq.auth.load_certificate(directory / "node.key_secret")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load CURVE keys from {directory}: {exc} (make them with "
                              "`stream-node keys generate DIR`)") from None
        authorized = directory / "authorized"
        if not authorized.is_dir():
            raise ConfigError(f"{authorized} is missing: it lists the accepted public keys")
        assert server_secret is not None and node_secret is not None
        return cls(server_public, server_secret, node_public, node_secret, authorized)


class _KeyLog:
    """The authenticator's log: a refused client key becomes a warning naming it (the count is
    `_Refusals`'s, which also sees refusals the authenticator never hears of)."""

    def debug(self, msg: str, *args: Any) -> None:
        if msg.startswith("ZAP reply") and args and args[0] != b"200":
            log.warning("CURVE: a peer's key was refused (%s): it is not in the authorized "
                        "list", args[1].decode(errors="replace"))

    info = warning = error = exception = debug


_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class _Refusals:
    """Counts failed handshakes on every bound socket, from its monitor, in a thread of its
    own: a monitor socket belongs to whoever reads it, and nobody else reads these."""

    def __init__(self) -> None:
        self.refused = 0
        self._new: queue.SimpleQueue[zmq.Socket] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, sock: zmq.Socket) -> None:
        self._new.put(sock.get_monitor_socket(_FAILED | zmq.EVENT_MONITOR_STOPPED))
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="curve-refusals",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        poller = zmq.Poller()
        monitors: list[zmq.Socket] = []
        try:
            while not self._stop.is_set():
                while not self._new.empty():
                    monitors.append(self._new.get())
                    poller.register(monitors[-1], zmq.POLLIN)
                for mon, _ in poller.poll(100):
                    event = recv_monitor_message(mon)
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:  # its socket was closed
                        poller.unregister(mon)
                        monitors.remove(mon)
                        mon.close(linger=0)
                        continue
                    self.refused += 1
                    endpoint = event["endpoint"].decode(errors="replace")
                    log.warning("CURVE: a peer's handshake on %s failed (%s, %s): it does not "
                                "hold this topology's keys", endpoint,
                                zmq.Event(event["event"]).name, event["value"])
        except zmq.ContextTerminated:
            pass
        finally:
            for mon in monitors:
                mon.close(linger=0)


_lock = threading.Lock()
_keys: Keys | None = None
_refusals = _Refusals()
_authenticators: dict[int, ThreadAuthenticator] = {}


def use(keys: Keys | None) -> None:
    """Secure every link this process makes from now on (one node per process)."""
    global _keys
    _keys = keys


def in_use() -> bool:
    """Whether this process's links are secured (a failed handshake then means refused)."""
    return _keys is not None


def refused() -> int:
    return _refusals.refused


def as_server(sock: zmq.Socket) -> None:
    """Before bind: accept only clients whose public key is authorized."""
    if _keys is None:
        return
    with _lock:
        ctx = sock.context
        if id(ctx) not in _authenticators:
            auth = ThreadAuthenticator(ctx, log=_KeyLog())
            auth.start()
            auth.configure_curve(domain="*", location=str(_keys.authorized))
            _authenticators[id(ctx)] = auth
    sock.curve_secretkey = _keys.server_secret
    sock.curve_publickey = _keys.server_public
    sock.curve_server = True
    _refusals.watch(sock)


def as_client(sock: zmq.Socket) -> None:
    """Before connect: prove this node's key, and that the server holds the topology's."""
    if _keys is None:
        return
    sock.curve_secretkey = _keys.node_secret
    sock.curve_publickey = _keys.node_public
    sock.curve_serverkey = _keys.server_public


def stop() -> None:
    """End the authenticator and refusal threads (before the context is destroyed)."""
    _refusals.stop()
    with _lock:
        for auth in _authenticators.values():
            auth.stop()
        _authenticators.clear()
