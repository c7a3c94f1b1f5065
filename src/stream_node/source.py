"""The source node: holds the run. It waits until every expected peer is ready, sends the frames,
then ends the run in three steps (END -> collector DRAINED -> FINISH to all, each answering DONE),
so the file's ledger and every node's counters are final before anyone exits.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from stream_node import __version__
from stream_node.control import ControlHub, Inbound, Liveness, Peer
from stream_node.endpoints import FrameOutput, open_output
from stream_node.errors import ConfigError, ExitCode, PeerTimeout, RunAborted, StreamNodeError
from stream_node.frame import MsgType, frame_header
from stream_node.replay import FILE, FileReplay
from stream_node.synthetic import SyntheticDetector
from stream_node.transport import LinkLimits

log = logging.getLogger(__name__)


@dataclass
class SourceConfig:
    control: str
    data: str
    workers: int = 2
    frames: int = 1000
    shape: tuple[int, ...] = (512, 1024)
    dtype: str = "uint16"
    seed: int = 0
    rate: float = 0.0  # frames per second; 0 sends as fast as the pipeline takes them
    run_id: int | None = None
    ring_slots: int = 16  # frames in flight when `data` is ring://NAME
    compression: str | None = None  # "bslz4": workers compress, the collector writes bytes
    origin: str = "synthetic:"  # or file://PATH: replay a written run
    kernels: list[dict] | None = None  # the workers' chain, e.g. [{"kernel": "photonise", ...}]
    recorded_rate: bool = False  # file:// only: send at the pace the frames were taken
    ready_timeout_s: float = 30.0
    liveness: Liveness = field(default_factory=Liveness)
    limits: LinkLimits = field(default_factory=LinkLimits)


@dataclass
class Stall:
    since: float = field(default_factory=time.monotonic)


@dataclass
class RunSummary:
    """What a run did, as the source saw it and the collector confirmed."""

    run_id: int
    path: str
    frames_sent: int
    frames_written: int
    missing: int
    duplicates: int
    bytes_written: int
    bytes_stored: int
    seconds: float
    dropped: dict[str, int]
    workers: dict[str, Any]
    copies_per_frame: str = "?"  # user-space + kernel copies of one frame on its way to disk

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.missing == 0 else ExitCode.FRAMES_MISSING

    @property
    def frames_per_second(self) -> float:
        return self.frames_written / self.seconds if self.seconds else 0.0

    @property
    def gbytes_per_second(self) -> float:
        return self.bytes_written / self.seconds / 1e9 if self.seconds else 0.0

    def text(self) -> str:
        lines = [
            f"run        {self.run_id:#018x}",
            f"file       {self.path}",
            f"frames     {self.frames_written} written of {self.frames_sent} sent",
            f"missing    {self.missing}",
            f"duplicates {self.duplicates}",
            f"bytes      {self.bytes_written / 2**20:.1f} MiB"
            + (f" ({self.bytes_stored / 2**20:.1f} MiB stored, "
               f"{self.bytes_written / self.bytes_stored:.2f}x compression)"
               if self.bytes_stored and self.bytes_stored != self.bytes_written else ""),
            f"time       {self.seconds:.2f} s",
            f"rate       {self.frames_per_second:.0f} frames/s, {self.gbytes_per_second:.2f} GB/s",
        ]
        dropped = {k: v for k, v in self.dropped.items() if v}
        lines.append(f"dropped    {dropped or 0}")
        for name, rep in sorted(self.workers.items()):
            lines.append(f"worker {name:<4}{rep.get('frames', '?')} frames, "
                         f"{rep.get('stalls', 0)} stalls, dropped {rep.get('dropped') or 0}")
        return "\n".join(lines)


class Source:
    def __init__(self, config: SourceConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = config
        self.ctx = ctx or zmq.Context.instance()
        self.run_id = config.run_id if config.run_id is not None else secrets.randbits(63) | 1
        self.replay: FileReplay | None = None
        if config.origin.startswith(FILE):
            self.replay = FileReplay(config.origin[len(FILE):])
            self.detector: SyntheticDetector | FileReplay = self.replay
            self.first_id = self.replay.first_id
            self.count = min(config.frames, self.replay.count) if config.frames else (
                self.replay.count)
        elif config.origin == "synthetic:":
            self.detector = SyntheticDetector(config.shape, config.dtype, config.seed)
            self.first_id, self.count = 0, config.frames
        else:
            raise ConfigError(f"unknown frame origin {config.origin!r}: use synthetic: or "
                              "file://PATH")
        self.sent = 0
        self.last_id = -1
        self.stalls = 0

    def start_body(self) -> dict[str, Any]:
        c = self.cfg
        origin: dict[str, Any] = {"source": c.origin, "seed": c.seed}
        if self.replay is not None:
            origin = {"source": c.origin, "replay_of_run_id": self.replay.run_id}
        shape, dtype = self.output_geometry()
        return {"shape": list(shape), "dtype": str(dtype),
                "input": {"shape": list(self.detector.shape), "dtype": str(self.detector.dtype)},
                "kernels": c.kernels or [],
                "frames": self.count, "first_frame_id": self.first_id, **origin,
                "rate": c.rate, "workers": c.workers, "software_version": __version__,
                "compression": c.compression or "none",
                "detector": {"description": "stream-node synthetic detector"}}

    def output_geometry(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of the frames the collector writes: the workers' chain output."""
        if not self.cfg.kernels:
            return tuple(self.detector.shape), np.dtype(self.detector.dtype)
        from stream_node.kernels import build_chain

        chain = build_chain(self.cfg.kernels, self.detector.shape, self.detector.dtype)
        return tuple(chain.out_shape), np.dtype(chain.out_dtype)

    def run(self) -> RunSummary:
        # The data output exists before the hub answers HELLO, so a worker told START finds it.
        out = open_output(self.ctx, self.cfg.data, self.cfg.limits, self.detector.nbytes,
                          self.cfg.ring_slots)
        try:
            hub = ControlHub(self.ctx, self.cfg.control, self.run_id, self.start_body(),
                             self.cfg.liveness)
        except BaseException:
            out.close()
            raise
        try:
            log.info("source: run %#x, %d frames %s %s from %s; %s", self.run_id, self.count,
                     self.detector.shape, self.detector.dtype, self.cfg.origin, out.describe())
            self._wait_ready(hub)
            t0 = time.monotonic()
            self._send_all(hub, out)
            return self._end(hub, out, t0)
        except (StreamNodeError, KeyboardInterrupt) as exc:
            reason = str(exc) or type(exc).__name__
            hub.broadcast(MsgType.ABORT, {"reason": reason})
            raise
        finally:
            out.close()
            hub.close()
            if self.replay is not None:
                self.replay.close()

    # -- start -------------------------------------------------------------------------------

    def _wait_ready(self, hub: ControlHub) -> None:
        """Frame 0 leaves only when every expected peer said READY (seed Problem 1)."""
        def ready() -> bool:
            workers = sum(p.ready for p in hub.peers_of("worker"))
            collector = any(p.ready for p in hub.peers_of("collector"))
            return collector and workers >= self.cfg.workers

        self._await(hub, ready, self.cfg.ready_timeout_s, self._missing_peers)
        log.info("source: %d workers and the collector ready", self.cfg.workers)

    def _missing_peers(self, hub: ControlHub) -> str:
        workers = [p.name for p in hub.peers_of("worker") if p.ready]
        collectors = hub.peers_of("collector")
        col = "ready" if any(p.ready for p in collectors) else (
            "connected, not ready" if collectors else "never connected")
        return (f"workers ready {len(workers)}/{self.cfg.workers} ({', '.join(workers) or 'none'})"
                f", collector {col}")

    # -- frames ------------------------------------------------------------------------------

    def _send_all(self, hub: ControlHub, out: FrameOutput) -> None:
        cfg = self.cfg
        shape, dtype = self.detector.shape, self.detector.dtype
        if self.replay is not None:
            ids = self.replay.ids(self.count)
        else:
            ids = iter(range(self.first_id, self.first_id + self.count))
        t0 = next_check = time.monotonic()
        for n, frame_id in enumerate(ids):
            if self.replay is not None and cfg.recorded_rate:
                self._pace(hub, t0 + self.replay.recorded_offset_s(frame_id))
            elif cfg.rate > 0:
                self._pace(hub, t0 + n / cfg.rate)
            stalled = Stall()
            while (buffer := out.reserve(shape, dtype, 100)) is None:
                self._stalled(hub, stalled)
            now = time.monotonic()
            if now >= next_check:
                self._handle(hub, hub.poll(0))
                next_check = now + 0.1
            self.detector.frame(frame_id, out=buffer)  # generated in place: a ring slot or a
            header = frame_header(buffer, self.run_id, frame_id)  # new send buffer
            while not out.commit(header, buffer):
                self._stalled(hub, stalled)
                out.reserve(shape, dtype, 100)  # wait until some worker can take it
            self.sent += 1
            self.last_id = frame_id
        out.end()

    def _pace(self, hub: ControlHub, due: float) -> None:
        """Wait until `due` while answering control messages (the wait is the rate limit)."""
        while (left := due - time.monotonic()) > 0:
            self._handle(hub, hub.poll(int(left * 1000)))

    def _stalled(self, hub: ControlHub, stall: Stall) -> None:
        """No worker can take a frame: count it, keep control alive, give up once none lives."""
        self.stalls += 1
        self._handle(hub, hub.poll(0))
        timeout = self.cfg.liveness.peer_timeout_s
        if time.monotonic() - stall.since < timeout:
            return
        workers = hub.peers_of("worker")
        if len(hub.lost("worker")) == len(workers):
            raise PeerTimeout(f"source: no worker took a frame for {timeout:.1f} s and none is "
                              f"alive ({len(workers)} known): frames {self.sent}.. not sent")

    def _handle(self, hub: ControlHub, msgs: list[Inbound]) -> None:
        for msg in msgs:
            if msg.msg_type == MsgType.ABORT:
                assert msg.peer is not None
                exc = RunAborted(f"{msg.peer.role} {msg.peer.name} aborted the run: "
                                 f"{msg.body.get('reason')}")
                exc.exit_code = ExitCode(msg.body.get("exit_code", ExitCode.ABORTED))
                raise exc
        for peer in hub.lost("collector"):
            how = "disconnected" if peer.unreachable else (
                f"silent for more than {self.cfg.liveness.peer_timeout_s:.1f} s")
            raise PeerTimeout(f"source: collector {peer.name} {how}: the run cannot be written")

    def _await(self, hub: ControlHub, done: Callable[[], bool], timeout_s: float | None,
               explain: Callable[[ControlHub], str] | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                what = explain(hub) if explain else "no answer"
                raise PeerTimeout(f"source: timed out after {timeout_s:.1f} s: {what}")
            self._handle(hub, hub.poll(100))

    # -- end ---------------------------------------------------------------------------------

    def _end(self, hub: ControlHub, out: FrameOutput, t0: float) -> RunSummary:
        # The run's last id: what was planned, so frames a replayed file lacks count missing.
        last = self.first_id + self.count - 1 if self.sent else self.first_id - 1
        hub.broadcast(MsgType.END, {"last_frame_id": last, "frame_count": self.sent},
                      frame_id=max(last, 0))
        collector = hub.peers_of("collector")[0]
        # The collector bounds this wait with its drain timeout; its heartbeats keep it alive.
        self._await(hub, lambda: collector.final is not None, None)
        collector.final = None
        workers = [p for p in hub.peers_of("worker") if p.ready]
        hub.broadcast(MsgType.FINISH, role="worker")
        timeout = self.cfg.liveness.peer_timeout_s
        try:
            self._await(hub, lambda: all(p.final is not None for p in workers), timeout)
        except PeerTimeout:
            silent = [p.name for p in workers if p.final is None]
            log.warning("source: no final report from workers %s", silent)
        reports = {p.name: p.final or {"error": "no final report"} for p in workers}
        hub.send(collector, MsgType.FINISH, {"workers": reports, "source": self._report()})
        self._await(hub, lambda: collector.final is not None, timeout,
                    lambda _: "collector sent no final report")
        return self._summary(collector, reports, time.monotonic() - t0)

    def _report(self) -> dict[str, Any]:
        return {"frames_sent": self.sent, "stalls": self.stalls}

    def _summary(self, collector: Peer, reports: dict, seconds: float) -> RunSummary:
        c = collector.final or {}
        return RunSummary(
            run_id=self.run_id, path=c.get("path", "?"), frames_sent=self.sent,
            frames_written=c.get("frames_written", 0), missing=c.get("missing", self.sent),
            duplicates=c.get("duplicates", 0), bytes_written=c.get("bytes_written", 0),
            bytes_stored=c.get("bytes_stored", 0),
            seconds=seconds, dropped=c.get("dropped", {}), workers=reports,
        )
