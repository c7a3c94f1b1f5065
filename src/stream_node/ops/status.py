"""A node's status beside its data path: a thread with its own socket answers JSON requests.

The thread owns its ROUTER socket (ZeroMQ sockets are not thread-safe) and only reads plain
counters off the node through a snapshot callable, so watching a run never touches the sockets
or buffers that carry frames. `serve_status` starts it, with the Prometheus endpoint beside it
when asked; `stream_node.ops.status_client.query_status` is the other end.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from stream_node._version import __version__
from stream_node.links.transport import bind

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]

SAMPLE_S = 0.25  # how often the status thread samples counters for its rates
RATE_WINDOW_S = 2.0  # rates are averaged over about this long: steady, yet current


class RateMeter:
    """frames/s and GB/s over the last `window_s`, from counter samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float, frames: int, nbytes: int) -> None:
        if self.samples and frames < self.samples[-1][1]:  # a served stage's next run began
            self.samples.clear()
        self.samples.append((now, frames, nbytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rates(self) -> dict[str, float]:
        if len(self.samples) < 2:
            return {"frames_per_s": 0.0, "gbytes_per_s": 0.0}
        (t0, f0, b0), (t1, f1, b1) = self.samples[0], self.samples[-1]
        dt = t1 - t0
        return {"frames_per_s": (f1 - f0) / dt, "gbytes_per_s": (b1 - b0) / dt / 1e9}


class StatusServer:
    """Answers `{"request": "status"}` on `endpoint` with the node's snapshot, from a thread.

    The socket is bound here, so a bad or busy endpoint fails the node's start with a
    ConfigError; from then on only the thread uses it, and closes it when `close()` stops it.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, snapshot: Snapshot) -> None:
        self.endpoint = endpoint
        self.snapshot = snapshot
        self.meter = RateMeter()
        self.started = time.monotonic()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            bind(self.sock, endpoint, "status", secure=False)
        except Exception:
            self.sock.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stream-node status",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def status(self) -> dict[str, Any]:
        """The node's snapshot plus what every node has: rates, identity, uptime."""
        snap = self.snapshot()
        snap.setdefault("rates", self.meter.rates())
        snap.update(pid=os.getpid(), host=socket.gethostname(), version=__version__,
                    uptime_s=time.monotonic() - self.started, time=time.time())
        return snap

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(int(SAMPLE_S * 1000)):
                    self._answer_all()
                self._sample()
        finally:
            self.sock.close(linger=0)

    def _sample(self) -> None:
        try:
            snap = self.snapshot()
        except Exception:  # a node half-built or shutting down: the next sample will do
            return
        self.meter.sample(time.monotonic(), int(snap.get("frames") or 0),
                          int(snap.get("bytes") or 0))

    def _answer_all(self) -> None:
        while True:
            try:
                identity, *envelope, request = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # a ROUTER message always has an identity; be safe anyway
                continue
            reply = self._reply(request)
            try:
                self.sock.send_multipart([identity, *envelope, reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the asker left (or its pipe is full): not our problem
                log.debug("status: reply to %r not sent: %s", identity, exc)

    def _reply(self, request: bytes) -> bytes:
        try:
            asked = json.loads(request or b"{}").get("request", "status")
        except (ValueError, AttributeError):
            return json.dumps({"error": "a request is a JSON object like "
                                        '{"request": "status"}'}).encode()
        if asked != "status":
            return json.dumps({"error": f"unknown request {asked!r}; known: status"}).encode()
        try:
            return json.dumps(self.status(), default=str).encode()
        except Exception as exc:  # the node is mid-change; say so rather than die
            return json.dumps({"error": f"snapshot failed: {exc}"}).encode()
