"""A node's status beside its data path: a thread with its own socket answers JSON requests.

The thread owns its ROUTER socket (ZeroMQ sockets are not thread-safe) and only reads plain
counters off the node through a snapshot callable, so watching a run never touches the sockets
or buffers that carry frames. `query_status` asks many nodes at once and returns by its deadline
whatever answered, so one dead node never hides the others.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from stream_node import __version__
from stream_node.endpoints import FrameOutput, RingOutput
from stream_node.frame import FrameHeader
from stream_node.transport import bind

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


class NodeStatus:
    """What a node serves about itself: the status socket and the Prometheus endpoint, each
    only when asked for. `close()` stops both; it is safe to call when neither was asked for."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None, metrics_port: int | None,
                 snapshot: Snapshot) -> None:
        self.server = StatusServer(ctx, endpoint, snapshot) if endpoint else None
        self.metrics = None
        if metrics_port is not None:
            from stream_node.metrics import MetricsServer

            try:
                self.metrics = MetricsServer(metrics_port, snapshot)
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.metrics is not None:
            self.metrics.close()


def serve_status(ctx: zmq.Context, endpoint: str | None, metrics_port: int | None,
                 snapshot: Snapshot) -> NodeStatus:
    """Start answering status requests and metrics scrapes for one node."""
    served = NodeStatus(ctx, endpoint, metrics_port, snapshot)
    if endpoint:
        log.info("status: answering on %s", endpoint)
    if served.metrics is not None:
        log.info("status: Prometheus metrics on http://%s:%d/metrics", served.metrics.host,
                 served.metrics.port)
    return served


def query_status(endpoints: Iterable[str], timeout_s: float = 2.0,
                 ctx: zmq.Context | None = None) -> dict[str, dict[str, Any]]:
    """Ask every node at once; by `timeout_s` return each endpoint's status.

    A node that did not answer in time maps to `{"error": "no answer within ..."}`, so the
    caller prints what it has and names what it lacks; nothing here waits longer than the
    deadline, dead peers included (every socket closes with linger 0).
    """
    ctx = ctx or zmq.Context.instance()
    endpoints = list(dict.fromkeys(endpoints))
    results: dict[str, dict[str, Any]] = {}
    socks: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    try:
        for endpoint in endpoints:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(endpoint)
                # The empty delimiter makes the reply envelope the same as a REQ client's.
                sock.send_multipart([b"", b'{"request": "status"}'], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                sock.close()
                results[endpoint] = {"error": f"cannot ask {endpoint!r}: {exc.strerror}"}
                continue
            socks[sock] = endpoint
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while len(results) < len(endpoints):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                endpoint = socks[sock]
                *_, reply = sock.recv_multipart()
                try:
                    results[endpoint] = json.loads(reply)
                except ValueError:
                    results[endpoint] = {"error": "the answer is not JSON"}
                poller.unregister(sock)
    finally:
        for sock in socks:
            sock.close(linger=0)
    for endpoint in endpoints:
        results.setdefault(endpoint, {"error": f"no answer within {timeout_s:g} s "
                                               "(node not running, or unreachable)"})
    return {endpoint: results[endpoint] for endpoint in endpoints}


class CountedOutput:
    """A fan-out socket that counts the frames and bytes it hands on, for the source's status.

    A ring counts its own frames (its stats), so only socket outputs are wrapped (`counted`).
    """

    def __init__(self, out: FrameOutput) -> None:
        self.out = out
        self.frames = 0
        self.bytes = 0

    def reserve(self, shape: tuple[int, ...], dtype: Any, timeout_ms: int) -> Any:
        return self.out.reserve(shape, dtype, timeout_ms)

    def commit(self, header: FrameHeader, buffer: Any) -> bool:
        if self.out.commit(header, buffer):
            self.frames += 1
            self.bytes += header.payload_bytes
            return True
        return False

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        if self.out.put(header, payload, timeout_ms):
            self.frames += 1
            self.bytes += header.payload_bytes
            return True
        return False

    def end(self) -> None:
        self.out.end()

    def close(self) -> None:
        self.out.close()

    def describe(self) -> str:
        return self.out.describe()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


def counted(out: FrameOutput) -> FrameOutput:
    return out if isinstance(out, RingOutput) else CountedOutput(out)


def output_counters(out: FrameOutput | None, frame_bytes: int) -> dict[str, Any]:
    """Frames and bytes handed on so far, and the ring's occupancy when the output is one.

    Safe from the status thread: a ring's mapping lives as long as this reference to it.
    """
    if out is None:
        return {"frames_out": 0, "bytes_out": 0, "ring": None}
    if isinstance(out, RingOutput):
        st = out.ring.stats()
        ring = {"name": out.ring.name, "slots": out.ring.slots, "occupancy": st["occupancy"],
                "producer_waits": st["producer_waits"], "state": st["state"]}
        return {"frames_out": st["published"], "bytes_out": st["published"] * frame_bytes,
                "ring": ring}
    return {"frames_out": getattr(out, "frames", 0), "bytes_out": getattr(out, "bytes", 0),
            "ring": None}
