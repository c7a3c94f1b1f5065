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

from stream_node._version import __version__
from stream_node.links import security
from stream_node.links.base import ring_name
from stream_node.links.control import ControlHub, Inbound, Liveness, Peer, default_topology
from stream_node.links.counted import counted, output_counters
from stream_node.links.credit import CreditOutput
from stream_node.links.endpoints import open_output
from stream_node.links.sealed import SealedOutput
from stream_node.links.transport import LinkLimits
from stream_node.model.contract import Dispatch, FrameGeometry, RunContract
from stream_node.model.errors import ConfigError, ExitCode, PeerTimeout, RunAborted, StreamNodeError
from stream_node.model.frame import Encoding, MsgType
from stream_node.model.instrument import Instrument
from stream_node.ops.serve import serve_status
from stream_node.origins import open_origin
from stream_node.origins.base import Emitted, Origin, OriginOptions, Stall

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
    ring_slots: int | None = None  # frames in flight for ring://NAME (None: 384 MiB of them)
    compression: str | None = None  # "bslz4": workers compress, the collector writes bytes
    origin: str = "synthetic:"  # file://PATH replays a run; see stream_node.origins.base
    kernels: list[dict] | None = None  # the workers' chain, e.g. [{"kernel": "photonise", ...}]
    geometry: str | None = None  # a geometry file (model.instrument); wins over the header's
    recorded_rate: bool = False  # file:// only: send at the pace the frames were taken
    origin_timeout_s: float = 10.0  # a detector silent this long mid-run has ended the run
    reliable: bool = False  # credit-based dispatch: a lost worker's frames are sent again
    credit: int = 4  # reliable mode: frames each worker may hold
    window: int = 64  # reliable mode: frames the source keeps until the collector wrote them
    collector_restart_s: float = 0.0  # wait this long for a lost collector to come back
    ready_timeout_s: float = 30.0
    stall_timeout_s: float = 60.0  # a frame no live worker takes for this long ends the run
    resend_after_s: float = 10.0  # reliable mode: a frame not ACKed this long is sent again
    checksum: bool = False  # seal every payload with its CRC-32C; each stage checks it
    liveness: Liveness = field(default_factory=Liveness)
    limits: LinkLimits = field(default_factory=LinkLimits)
    status: str | None = None  # endpoint to answer status requests on (stream-node status)
    metrics_port: int | None = None  # serve Prometheus metrics on this HTTP port
    topology: str = field(default_factory=default_topology)  # peers of another are refused


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
        # Names padded to the longest plus a space (4 at least: "w0  8 frames"), so a long
        # name (a topology's "local-w0") never runs into its count.
        width = max([4, *(len(name) + 1 for name in self.workers)])
        for name, rep in sorted(self.workers.items()):
            lines.append(f"worker {name:<{width}}{rep.get('frames', '?')} frames, "
                         f"{rep.get('stalls', 0)} stalls, dropped {rep.get('dropped') or 0}")
        return "\n".join(lines)


def origin_options(config: SourceConfig) -> OriginOptions:
    return OriginOptions(frames=config.frames, shape=config.shape, dtype=config.dtype,
                         seed=config.seed, rate=config.rate, recorded_rate=config.recorded_rate,
                         timeout_s=config.origin_timeout_s)


class Source:
    """One run. A serving node (`stages.series`) hands each run its origin (the detector's
    series, on a connection kept between series), its kept control hub and its file's name."""

    def __init__(self, config: SourceConfig, ctx: zmq.Context | None = None,
                 origin: Origin | None = None, hub: ControlHub | None = None,
                 file: str | None = None) -> None:
        self.cfg = config
        self.ctx = ctx or zmq.Context.instance()
        self.origin = origin or open_origin(config.origin, origin_options(config))
        self._kept_hub = hub
        self.file = file
        # The detector's series id names the run (files and logs match the detector's), unless
        # the user gave one; else a random one, so two runs never take each other's frames.
        self.run_id = next(i for i in (config.run_id, self.origin.series_id,
                                       secrets.randbits(63) | 1) if i)
        self.geometry = None if config.geometry is None else Instrument.from_file(
            config.geometry)
        self.emitted = Emitted()
        self.stalls = 0
        self._hub: ControlHub | None = None
        self._credit: CreditOutput | None = None
        self._stop = False  # end the run after the frame being sent (first SIGINT/SIGTERM)
        self._abort: str | None = None  # end it now, for this reason (a serving node's abort)
        self.on_drain: Callable[[], None] | None = None  # told when every frame has been sent
        self.on_ready: Callable[[], None] | None = None  # told when every stage said READY
        self._emitting = False
        self._collector_lost_at: float | None = None
        self._end_message: tuple[dict, int] | None = None  # END again for a restarted collector

    def stop(self) -> bool:
        """End the run after the frame being sent (safe in a signal handler: it sets a flag).
        False if the run has not started sending: there is nothing to drain, abort instead."""
        self._stop = True
        return self._emitting

    def abort(self, reason: str) -> None:
        """End the run at once (from another thread: it sets a flag the run loop checks)."""
        self._abort = reason

    @property
    def stopping(self) -> bool:
        return self._stop

    @property
    def sent(self) -> int:
        return self.emitted.sent

    def start_body(self) -> dict[str, Any]:
        return self.contract().to_wire()

    def contract(self) -> RunContract:
        """What START tells every stage about this run."""
        c, origin = self.cfg, self.origin
        metadata = dict(origin.metadata())
        detector = metadata.pop("detector", None)
        # Frames that arrive compressed reach the file as they came unless a kernel needs pixels.
        passthrough = origin.encoding == Encoding.BSLZ4 and not c.kernels
        return RunContract(
            output=FrameGeometry(*self.output_geometry()),
            input=FrameGeometry(tuple(origin.shape), np.dtype(origin.dtype), origin.encoding),
            frames=origin.count, first_frame_id=origin.first_id,
            kernels=tuple(c.kernels or ()),
            compression="bslz4" if passthrough else (c.compression or "none"),
            dispatch=Dispatch("credit", c.credit) if c.reliable else Dispatch(),
            per_frame_columns=tuple(origin.columns), detector=detector,
            instrument=self.instrument(), rate=c.rate,
            workers=c.workers, software_version=__version__, origin=metadata,
            checksum=c.checksum, file=self.file)

    def instrument(self) -> Instrument | None:
        """The run's geometry: what the detector's header said, with the geometry file's
        values put over it."""
        said = self.origin.instrument()
        if self.geometry is None:
            return said
        return self.geometry if said is None else said.merged(self.geometry)

    def output_geometry(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of the frames the collector writes: the workers' chain output,
        answered without compiling a kernel (the workers compile theirs)."""
        if not self.cfg.kernels:
            return tuple(self.origin.shape), np.dtype(self.origin.dtype)
        from stream_node.kernels.chain import chain_geometry

        return chain_geometry(self.cfg.kernels, self.origin.shape, self.origin.dtype)

    def run(self) -> RunSummary:
        status = serve_status(self.ctx, self.cfg.status, self.cfg.metrics_port, self.status)
        try:
            return self._run()
        finally:
            status.close()
            self.origin.close()

    def status(self) -> dict[str, Any]:
        """The source's counters for `stream-node status`; called from the status thread, so
        it only reads plain values (never the sockets)."""
        out, hub = getattr(self, "_out", None), self._hub
        emitted = self.emitted.last_id >= 0 or self.emitted.sent > 0
        counters = output_counters(out, self.origin.frame_bytes)
        if emitted:
            counters.update(frames_out=self.sent)
        state = ("draining" if emitted else "running" if counters["frames_out"]
                 else "waiting")
        limits = self.cfg.limits
        return {
            "role": "source", "name": "source", "run_id": self.run_id, "state": state,
            "frames": counters["frames_out"], "bytes": counters["bytes_out"],
            "frames_expected": self.origin.count,
            "counters": {"frames_out": counters["frames_out"], "bytes_out": counters["bytes_out"],
                         "stalls": self.stalls,
                         # reliable mode: frames sent again after their worker was lost
                         "retries": (self._credit.redispatched + self._credit.resent
                                     if self._credit else 0),
                         "in_flight": self._credit.in_window() if self._credit else None},
            "dropped": {}, "ring": counters["ring"], "queue_depth": None,
            "workers_ready": sum(p.ready for p in hub.all_peers() if
                                 p.role == "worker") if hub else 0,
            "memory_bound_bytes": None if out is None else (
                (out.ring.slots + 3) * out.ring.slot_bytes if counters["ring"]
                else limits.bound_bytes(self.origin.frame_bytes)),
            "memory_bound": None if out is None else out.describe(),
        }

    def _run(self) -> RunSummary:
        if self.origin.needs_ring and ring_name(self.cfg.data) is None:
            raise ConfigError(f"{self.cfg.origin}: frames are received straight into ring "
                              f"slots, so the data endpoint must be ring://NAME, not "
                              f"{self.cfg.data} (workers then forward over tcp)")
        if self.cfg.workers == 0 and (ring_name(self.cfg.data) is None or self.cfg.kernels
                                      or self.cfg.compression not in (None, "none")):
            raise ConfigError("--workers 0 sends frames through the ring to the collector "
                              "as they are: it needs --data ring://NAME (the collector's "
                              "--input) and no --kernels or --compress, which workers run")
        # The data output exists before the hub answers HELLO, so a worker told START finds it.
        raw = open_output(self.ctx, self.cfg.data, self.cfg.limits, self.origin.frame_bytes,
                          self.cfg.ring_slots, self.cfg.window if self.cfg.reliable else 0,
                          self.cfg.resend_after_s)
        out = self._out = counted(raw)
        if self.cfg.checksum:
            out = SealedOutput(out)
        try:
            if self._kept_hub is not None:
                hub = self._kept_hub
                hub.begin(self.run_id, self.start_body())
            else:
                hub = ControlHub(self.ctx, self.cfg.control, self.run_id, self.start_body(),
                                 self.cfg.liveness, self.cfg.topology)
        except BaseException:
            out.close()
            raise
        try:
            self._hub = hub
            if isinstance(raw, CreditOutput):
                self._credit = raw
                raw.attach_control(self.run_id, hub.sock, lambda: self._handle(hub, hub.poll(0)))
            self.origin.prepare(out, self.run_id)
            count = "?" if self.origin.count is None else self.origin.count
            log.info("source: run %#x, %s frames %s %s from %s; %s", self.run_id, count,
                     self.origin.shape, self.origin.dtype, self.cfg.origin, out.describe())
            self._wait_ready(hub)
            if self.on_ready is not None:
                self.on_ready()
            t0 = time.monotonic()
            self.emitted = self.origin.emit(out, self.run_id, self)
            if self.on_drain is not None:
                self.on_drain()
            return self._end(hub, t0)
        except (StreamNodeError, KeyboardInterrupt) as exc:
            reason = str(exc) or type(exc).__name__
            hub.broadcast(MsgType.ABORT, {"reason": reason})
            raise
        finally:
            out.close()
            if hub is self._kept_hub:
                hub.idle()
            else:
                hub.close()

    # -- start -------------------------------------------------------------------------------

    def _wait_ready(self, hub: ControlHub) -> None:
        """Frame 0 leaves only when every expected peer said READY (seed Problem 1)."""
        def ready() -> bool:
            workers = sum(p.ready for p in hub.peers_of("worker"))
            collector = any(p.ready for p in hub.peers_of("collector"))
            return collector and workers >= self.cfg.workers

        self._await(hub, ready, self.cfg.ready_timeout_s, self._missing_peers)
        # From here a stop drains (the run ends at the last frame sent, perhaps none): a signal
        # that came just after this line used to find the run "not started" and abort it.
        self._emitting = True
        log.info("source: %d workers and the collector ready", self.cfg.workers)

    def _missing_peers(self, hub: ControlHub) -> str:
        workers = [p.name for p in hub.peers_of("worker") if p.ready]
        collectors = hub.peers_of("collector")
        col = "ready" if any(p.ready for p in collectors) else (
            "connected, not ready" if collectors else "never connected")
        return (f"workers ready {len(workers)}/{self.cfg.workers} ({', '.join(workers) or 'none'})"
                f", collector {col}")

    # -- RunControl: what the origin asks while it emits -------------------------------------

    def poll(self) -> None:
        self._tick(0)

    def pace(self, due: float) -> None:
        """Wait until `due` while answering control messages (the wait is the rate limit)."""
        while (left := due - time.monotonic()) > 0 and not self._stop:
            self._tick(int(left * 1000))

    def _tick(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` for control messages (and, in reliable mode, credits)."""
        hub = self._hub
        assert hub is not None
        if self._credit is not None:
            self._credit.wait(timeout_ms)  # calls _handle for the control channel
        else:
            self._handle(hub, hub.poll(timeout_ms))

    def stalled(self, stall: Stall) -> None:
        """No worker can take a frame: count it, keep control alive, give up once none lives."""
        hub = self._hub
        assert hub is not None
        self.stalls += 1
        self._tick(0)
        timeout = self.cfg.liveness.peer_timeout_s
        if time.monotonic() - stall.since < timeout:
            return
        workers = hub.peers_of("worker")
        if workers and len(hub.lost("worker")) == len(workers):
            raise PeerTimeout(f"source: no worker took a frame for {timeout:.1f} s and none is "
                              f"alive ({len(workers)} known): frames {self.sent}.. not sent")
        waited = time.monotonic() - stall.since
        if waited >= self.cfg.stall_timeout_s:  # alive, yet nothing moves: never wait forever
            alive = sorted(p.name for p in workers if p not in hub.lost("worker"))
            raise PeerTimeout(
                f"source: no frame could be handed on for {waited:.0f} s (--stall-timeout) "
                f"although worker(s) {', '.join(alive)} are alive: frames {self.sent}.. not "
                f"sent. Is each worker's --input this source's --data {self.cfg.data}? Is the "
                "collector writing (stream-node status shows which stage is stuck)?")

    def _handle(self, hub: ControlHub, msgs: list[Inbound]) -> None:
        if self._abort is not None:
            raise RunAborted(self._abort)
        if self._credit is not None:
            self._credit.workers_lost([p.identity for p in hub.lost("worker")])
        for msg in msgs:
            if msg.msg_type == MsgType.ACK and self._credit is not None:
                self._credit.acked(msg.body.get("ids", ()))
            if msg.msg_type == MsgType.ABORT:
                assert msg.peer is not None
                exc = RunAborted(f"{msg.peer.role} {msg.peer.name} aborted the run: "
                                 f"{msg.body.get('reason')}")
                exc.exit_code = ExitCode(msg.body.get("exit_code", ExitCode.ABORTED))
                raise exc
            if (msg.msg_type == MsgType.READY and msg.peer is not None
                    and msg.peer.role == "collector"):
                self._collector_back(hub, msg.peer)
        self._collector_lost(hub)

    def _collector_lost(self, hub: ControlHub) -> None:
        """A lost collector ends the run, unless one may come back (`collector_restart_s`):
        frames then wait in the workers (backpressure) until it has reopened the file."""
        restart = self.cfg.collector_restart_s
        for peer in hub.lost("collector"):
            how = "disconnected" if peer.unreachable else (
                f"silent for more than {self.cfg.liveness.peer_timeout_s:.1f} s")
            if restart <= 0:
                raise PeerTimeout(f"source: collector {peer.name} {how}: the run cannot be "
                                  "written")
            log.warning("source: collector %s %s: waiting up to %.1f s for a collector to "
                        "resume the run", peer.name, how, restart)
            hub.forget(peer)
            self._collector_lost_at = time.monotonic()
        if (self._collector_lost_at is not None
                and time.monotonic() - self._collector_lost_at > restart):
            raise PeerTimeout(f"source: no collector resumed the run within {restart:.1f} s "
                              "of losing it")

    def _collector_back(self, hub: ControlHub, peer: Peer) -> None:
        if self._collector_lost_at is not None:
            log.warning("source: collector %s resumed the run", peer.name)
            self._collector_lost_at = None
        if self._end_message is not None:  # it came after END: it must hear it too
            body, frame_id = self._end_message
            hub.send(peer, MsgType.END, body, frame_id)

    def _await(self, hub: ControlHub, done: Callable[[], bool], timeout_s: float | None,
               explain: Callable[[ControlHub], str] | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                what = explain(hub) if explain else "no answer"
                raise PeerTimeout(f"source: timed out after {timeout_s:.1f} s: {what}")
            self._tick(100)

    # -- end ---------------------------------------------------------------------------------

    def _end(self, hub: ControlHub, t0: float) -> RunSummary:
        # The run's last id is what was planned (or seen), so frames never sent count missing.
        done = self.emitted
        last = done.last_id if self.sent or done.missing else self.origin.first_id - 1
        self._end_message = ({"last_frame_id": last, "frame_count": self.sent,
                              "missing": done.missing, "partial": done.partial,
                              "per_frame": done.per_frame, "origin": done.counters},
                             max(last, 0))
        hub.broadcast(MsgType.END, *self._end_message)
        log.info("source: END sent: last frame %d, %d frames sent", last, self.sent)

        def current() -> Peer | None:  # the collector may have been restarted meanwhile
            return next((p for p in hub.peers_of("collector") if p.ready), None)

        # The collector bounds this wait with its drain timeout; its heartbeats keep it alive.
        self._await(hub, lambda: (c := current()) is not None and c.final is not None, None)
        collector = current()
        assert collector is not None
        collector.final = None
        workers = [p for p in hub.peers_of("worker") if p.ready]
        if hub is self._kept_hub:  # a worker's next HELLO is for the next run
            hub.hold_new()
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
        report = {"frames_sent": self.sent, "stalls": self.stalls,
                  "origin": self.emitted.counters, "refused_peers": security.refused() + (
                      self._hub.refused if self._hub else 0)}
        if self._credit is not None:
            report["redispatched"] = self._credit.redispatched
            report["resent_unacked"] = self._credit.resent
            report["rejected"] = self._credit.rejected
        return report

    def _summary(self, collector: Peer, reports: dict, seconds: float) -> RunSummary:
        c = collector.final or {}
        return RunSummary(
            run_id=self.run_id, path=c.get("path", "?"), frames_sent=self.sent,
            frames_written=c.get("frames_written", 0), missing=c.get("missing", self.sent),
            duplicates=c.get("duplicates", 0), bytes_written=c.get("bytes_written", 0),
            bytes_stored=c.get("bytes_stored", 0),
            seconds=seconds, dropped=c.get("dropped", {}), workers=reports,
        )
