"""A control socket served by a thread of its own, so that liveness never waits for the data loop.

A ZeroMQ socket must not be used by two threads at once, so the heartbeat thread cannot simply
borrow the stage's control socket. Instead the thread owns it: it answers and sends heartbeats,
judges liveness, and relays everything else to the stage over an inproc PAIR (`front`), which the
stage polls exactly as it polled the control socket before. A stage busy for seconds in one call
(copying a 1 GB train, a slow write) therefore stays alive to its peers; a process that is frozen
as a whole (SIGSTOP, a paused VM) does not, which is what the peer timeout is for.

The thread measures its own gaps: after one longer than `FROZEN_AFTER` heartbeat intervals this
process was itself frozen or starved, and `woke()` tells its owner to restart every peer's
silence clock, so that a node never blames a live peer for its own pause.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import zmq

log = logging.getLogger(__name__)

_STOP = b"\x00stop"  # a one-part message: every relayed message has two parts or more
FROZEN_AFTER = 3.0  # heartbeat intervals without a turn of the thread: this process was paused
_names = itertools.count()


class SocketPump:
    """Runs `sock` in a daemon thread; the owner talks to it through `front` and `send`.

    `on_message(sock, parts)` runs in the thread for each message from the peer(s) and returns
    whether the owner must see it; `on_tick(sock)` runs at least every `interval_s` (heartbeats);
    `on_send_error(parts, exc)` is told of a relayed message the socket refused; `woke()` runs
    after a gap in the thread's own turns (see the module's docstring).
    """

    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, interval_s: float,
                 on_message: Callable[[zmq.Socket, list[bytes]], bool],
                 on_tick: Callable[[zmq.Socket], None],
                 on_send_error: Callable[[list[bytes], zmq.ZMQError], None],
                 woke: Callable[[], None], name: str, linger_ms: int = 1000) -> None:
        self.interval_s = interval_s
        self._sock = sock
        self._linger_ms = linger_ms
        self._on_message, self._on_tick = on_message, on_tick
        self._on_send_error, self._woke = on_send_error, woke
        address = f"inproc://stream-node-pump-{next(_names)}"
        self._back = ctx.socket(zmq.PAIR)
        self._back.bind(address)
        self.front = ctx.socket(zmq.PAIR)
        self.front.connect(address)
        self.last_turn = time.monotonic()
        self.failure: str | None = None  # why the thread ended early: the owner raises it
        self._thread = threading.Thread(target=self._run, name=f"control-{name}", daemon=True)
        self._thread.start()

    def send(self, parts: list[bytes]) -> None:
        """Hand `parts` to the thread, which sends them on the socket in order."""
        self.front.send_multipart(parts)

    def behind(self) -> bool:
        """True while the thread has not had a turn for FROZEN_AFTER intervals: this process
        was paused or starved, and nobody's silence can be judged until it has caught up."""
        return time.monotonic() - self.last_turn > FROZEN_AFTER * self.interval_s

    def close(self, linger_ms: int | None = None) -> None:
        """Send what the owner handed over, then stop the thread and close the socket (with
        linger, so that a final DONE still leaves; 0 when the peer is known gone)."""
        if linger_ms is not None:
            self._linger_ms = linger_ms
        if self._thread.is_alive():
            self.front.send(_STOP)
            self._thread.join(timeout=self._linger_ms / 1000 + 5)
        self.front.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        next_tick = 0.0
        try:
            while True:
                events = dict(poller.poll(max(0, int((next_tick - time.monotonic()) * 1000))))
                now = time.monotonic()
                if now - self.last_turn > FROZEN_AFTER * self.interval_s:
                    self._woke()
                self.last_turn = now
                if self._sock in events:
                    self._relay_in()
                if self._back in events and not self._relay_out():
                    return
                if time.monotonic() >= next_tick:
                    self._on_tick(self._sock)
                    next_tick = time.monotonic() + self.interval_s
        except zmq.ContextTerminated:
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ENOTSOCK:
                self.failure = f"the control thread failed: {exc}"
                log.error("control thread failed: %s", exc)
            # ENOTSOCK: the process is ending and its context closed the sockets under this
            # thread (a second signal cut the stage's own close short): nothing to report.
        except Exception as exc:  # a bug here must not leave the stage believing peers alive
            log.exception("control thread failed")
            self.failure = f"the control thread failed: {exc!r}"
        finally:
            if not self._back.closed:
                self._back.close(linger=0)
            if not self._sock.closed:
                self._sock.close(linger=self._linger_ms)

    def _relay_in(self) -> None:
        """Everything queued from the peer(s), before anyone's silence is judged."""
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self._on_message(self._sock, parts):
                self._back.send_multipart(parts)

    def _relay_out(self) -> bool:
        """Send what the owner handed over; False once it said stop."""
        while True:
            try:
                parts = self._back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if parts == [_STOP]:
                return False
            try:
                self._sock.send_multipart(parts)
            except zmq.ZMQError as exc:
                self._on_send_error(parts, exc)
