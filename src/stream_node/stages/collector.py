"""The collector node: pulls frames from every worker and writes each exactly once into HDF5.

Frames arrive out of order from parallel workers; each is written at its own index as a direct
chunk, so no reorder buffer is needed. The run ends when every id up to END's last id is in the
file, or when no new frame has come for `drain_timeout_s` after END: the rest are recorded missing.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from stream_node.links.base import TAKE_MS, FrameInput, ring_name
from stream_node.links.control import ControlLink, Liveness, default_topology
from stream_node.links.ring_links import RingFanIn, fan_in_ring
from stream_node.links.transport import LinkLimits
from stream_node.links.zmq_links import PullInput
from stream_node.model.contract import FrameGeometry, RunContract
from stream_node.model.errors import (
    ConfigError,
    ExitCode,
    ProtocolError,
    RunAborted,
    StorageError,
    StreamNodeError,
)
from stream_node.model.frame import (
    FLAG_FAILED,
    FLAG_PARTIAL,
    Encoding,
    FrameHeader,
    MsgType,
    decode_body,
)
from stream_node.ops.serve import serve_status
from stream_node.ops.tap import Tap, open_tap
from stream_node.stages.admission import admit
from stream_node.stages.drops import DropLedger
from stream_node.storage.writer import RunWriter

log = logging.getLogger(__name__)

@dataclass
class CollectorConfig:
    control: str
    input: str
    path: Path
    overwrite: bool = False
    drain_timeout_s: float = 10.0
    ready_timeout_s: float = 30.0
    flush_interval_s: float = 1.0  # a crash loses at most this much; SWMR readers see this late
    frames_per_file: int = 0  # > 0: numbered data files of this many frames + a VDS master
    resume: bool = False  # reopen the file of this run a collector left (it died mid-run)
    liveness: Liveness = field(default_factory=Liveness)
    limits: LinkLimits = field(default_factory=LinkLimits)
    name: str = "collector"
    status: str | None = None  # endpoint to answer status requests on (stream-node status)
    metrics_port: int | None = None  # serve Prometheus metrics on this HTTP port
    tap: str | None = None  # endpoint to publish the newest written frames on (live view)
    tap_rate: float = 10.0  # frames/s the tap publishes at most
    topology: str = field(default_factory=default_topology)  # peers of another are refused
    serving: bool = False  # run after run (`--serve`): wait for each START without a deadline


def run_file(directory: Path, name: str) -> Path:
    """The file a serving node named for a run: a relative name lies in this collector's
    directory (that of its --file), an absolute one where it says; its folder is made."""
    if not name.strip():
        raise ConfigError("START names an empty file for the run")
    path = directory / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot make the directory of {path}: {exc.strerror}") from None
    return path


class Collector:
    def __init__(self, config: CollectorConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = config
        self.ctx = ctx or zmq.Context.instance()
        self.drops = DropLedger(f"collector {config.name}")
        self.writer: RunWriter | None = None
        self.end: dict | None = None
        self.summary: dict[str, Any] = {}
        self._failed: dict[int, str] = {}  # index -> why a worker could not process it
        self.partial = 0  # frames written with some of their data missing (FLAG_PARTIAL)
        self.tap: Tap | None = None
        self._check_chunk: Callable[[Any], Any] | None = None  # see _open
        self.path = config.path  # a serving node names each run's file in START (`_open`)

    def run(self) -> dict[str, Any]:
        """Collect one run; returns the summary also sent to the source in DONE."""
        cfg = self.cfg
        link = ControlLink(self.ctx, cfg.control, "collector", cfg.name, cfg.liveness,
                           cfg.topology)
        status = serve_status(self.ctx, cfg.status, cfg.metrics_port, self.status)
        fan_in = ring_name(cfg.input)
        inp: FrameInput | None = None
        try:
            self.tap = open_tap(self.ctx, cfg.tap, cfg.tap_rate)
            if fan_in is None:  # bound before START, so workers find it when told to start
                inp = PullInput(self.ctx, [cfg.input], cfg.limits, bound=True)
            start = link.wait_start(None if cfg.serving else cfg.ready_timeout_s)
            try:
                if fan_in is not None:  # before the file: a wrong ring leaves none behind
                    inp = self._fan_in(fan_in, RunContract.from_wire(start).workers)
                self._open(start, link.run_id)
            except StreamNodeError as exc:
                link.send(MsgType.ABORT, {"reason": str(exc), "exit_code": int(exc.exit_code)})
                raise
            assert inp is not None
            link.send(MsgType.READY, {"path": str(self.path)})
            log.info("collector: run %#x ready, writing %s; %s", link.run_id, self.path,
                     inp.describe() if fan_in else cfg.limits.describe(self._frame_bytes))
            try:
                assert self.writer is not None
                self.writer.describe()  # the NXmx groups: after READY, as the first frames queue
                self._collect(link, inp)
            except StorageError as exc:
                # The file cannot take more: no more writes to it are tried (its ledger
                # included), so what the last flush recorded stays valid and readable; the
                # frames it does not hold go to the sidecar ledger, and the message says which.
                exc = self._abandon(exc)
                link.send(MsgType.ABORT, {"reason": str(exc), "exit_code": int(exc.exit_code)})
                raise exc from None
            except (StreamNodeError, KeyboardInterrupt) as exc:
                reason = f"run ended early: {str(exc) or type(exc).__name__}"
                if isinstance(exc, KeyboardInterrupt):  # stopped here: the source must know
                    cause = str(exc) or "SIGINT"
                    link.send(MsgType.ABORT, {"reason": f"collector stopped ({cause})",
                                              "exit_code": int(ExitCode.ABORTED)})
                self._finish(link, reason, {})
                raise
            return self.summary
        finally:
            status.close()
            if self.tap is not None:
                self.tap.close()
            if self.writer is not None:
                self.writer.close()
            if inp is not None:
                inp.close()
            link.close()

    def _fan_in(self, name: str, workers: int) -> RingFanIn:
        """A shared-memory fan-in: each worker's output ring, or with no worker on the path,
        the source's own ring (this collector then takes the frames the workers would)."""
        if workers == 0:
            return RingFanIn([name], "workers").require()
        return RingFanIn([fan_in_ring(name, i) for i in range(workers)], "collector")

    def status(self) -> dict[str, Any]:
        """The collector's counters for `stream-node status`; called from the status thread,
        so it only reads plain values (never the sockets or the file)."""
        w = self.writer
        state = ("waiting" if w is None else "done" if not w.is_open
                 else "draining" if self.end is not None else "running")
        written, nbytes = (w.frames_written, w.bytes_written) if w else (0, 0)
        missing = getattr(self, "_missing_reasons", self._failed)
        return {
            "role": "collector", "name": self.cfg.name, "run_id": getattr(self, "_run_id", 0),
            "state": state, "frames": written, "bytes": nbytes,
            "frames_expected": self._count() if w else None,
            "counters": {"frames_in": written, "bytes_in": nbytes,
                         "bytes_stored": w.bytes_stored if w else 0,
                         "missing": len(missing), "duplicates": w.duplicates if w else 0,
                         "partial": self.partial},
            "dropped": self.drops.as_dict(),
            "tap": self.tap.counters() if self.tap else None,
            "ring": None, "queue_depth": None,
            "memory_bound_bytes": self.cfg.limits.bound_bytes(self._frame_bytes) if w else None,
            "file": str(self.path),
        }

    def _open(self, start: dict, run_id: int) -> None:
        self._run_id = run_id
        self.contract = run = RunContract.from_wire(start)
        if run.file is not None:
            self.path = run_file(self.cfg.path.parent, run.file)
        self._first = run.first_frame_id
        # Reliable mode: the source keeps each frame until told it is here (ACK).
        self._acks: list[int] | None = [] if run.dispatch.reliable else None
        self._expected = -1 if run.frames is None else run.frames
        self._frame_bytes = run.output.nbytes
        if run.workers == 0 and run.input.encoding == Encoding.BSLZ4:
            # No worker walks a detector's chunks on this path: the collector does (the
            # source checked their header only), so a damaged one is recorded, never written.
            from stream_node.origins.chunks import chunk_checker

            self._check_chunk = chunk_checker(run.input)
        output = FrameGeometry(run.output.shape, run.output.dtype, run.encoding)
        self.cfg.limits.check_fits(output.largest_payload, "a frame for the collector")
        metadata = {"run_id": run_id, "run_id_hex": f"{run_id:#018x}", "start": start,
                    "configuration": {"drain_timeout_s": self.cfg.drain_timeout_s,
                                      "flush_interval_s": self.cfg.flush_interval_s,
                                      "frames_per_file": self.cfg.frames_per_file}}
        self.writer = RunWriter(self.path, run.output.shape, run.output.dtype,
                                max(self._expected, 0), self._first, metadata,
                                self.cfg.overwrite, run.compression, self.cfg.frames_per_file,
                                run.detector, run.per_frame_columns, self.cfg.resume,
                                run.instrument, describe_now=False)

    def _collect(self, link: ControlLink, inp: FrameInput) -> None:
        drained_sent = False
        last_progress = next_flush = time.monotonic()
        while True:
            if time.monotonic() >= next_flush:
                assert self.writer is not None
                self.writer.flush(self._live_counters())
                next_flush = time.monotonic() + self.cfg.flush_interval_s
            # Every frame a run of known length has is in: only END can come, so wait for it
            # on the control channel (a wait for frames would hold it up by TAKE_MS).
            all_in = self.end is None and self._expected >= 0 and self._outstanding() <= 0
            idle = drained_sent or inp.exhausted or all_in
            batch = [] if idle else inp.take(TAKE_MS)
            try:
                if self._take_frames(batch, inp.copies):
                    last_progress = time.monotonic()
            finally:
                inp.release()
            if self._acks:
                link.send(MsgType.ACK, {"ids": self._acks})
                self._acks = []
            # Liveness is the control thread's: this loop looks at commands between batches.
            msg = link.recv_ready() if link.sock.poll(100 if idle else 0) else None
            if msg is not None:
                if msg.msg_type == MsgType.END:
                    self.end = msg.body
                    self._origin_missing(msg.body.get("missing") or {})
                    last_progress = time.monotonic()
                    log.info("collector: END received: last frame %s, %s frames",
                             msg.body.get("last_frame_id"), msg.body.get("frame_count"))
                elif msg.msg_type == MsgType.FINISH:
                    if not drained_sent:
                        self._drain_result("source finished the run before all frames came")
                    self._finish(link, None, msg.body)
                    return
                elif msg.msg_type == MsgType.ABORT:
                    raise RunAborted(f"source aborted the run: {msg.body.get('reason')}")
            link.tick()
            if self.end is not None and not drained_sent:
                complete = self._outstanding() == 0
                timed_out = time.monotonic() - last_progress > self.cfg.drain_timeout_s
                if complete or timed_out:
                    reason = None if complete else (
                        f"not received within the {self.cfg.drain_timeout_s:.1f} s drain timeout "
                        "after END (lost in transit or by a worker)")
                    if reason and self.writer is not None and self.writer.resumed:
                        reason += ("; the collector was restarted mid-run (--resume): frames "
                                   "received after its last flush were lost with it")
                    link.send(MsgType.DRAINED, self._drain_result(reason))
                    drained_sent = True

    def _take_frames(self, batch: list[list[Any]], copies: bool) -> bool:
        """Write the frames taken; True if any was new."""
        progress = False
        for parts in batch:
            progress |= self._take(parts, copies)
        return progress

    def _take(self, parts: list[Any], copies: bool = False) -> bool:
        """Admit and write one frame; `copies`: its buffer is a ring slot, reused after."""
        damaged = len(self.drops.frames)
        header = admit(parts, self._run_id, self.drops)
        if header is None:
            if self._acks is None and len(self.drops.frames) > damaged:
                self._damaged(*next(reversed(self.drops.frames.items())))
            return False
        if self._acks is not None:  # sending it again would not make it better: done with it
            self._acks.append(header.frame_id)
        if header.flags & FLAG_FAILED:
            return self._failure(header, parts[1])
        assert self.writer is not None
        problem = self.contract.frame_problem(header, header.payload_bytes,
                                              self.writer.last_index)
        if problem:
            self.drops.drop("invalid", f"frame {header.frame_id}: {problem}")
            return False
        index = header.frame_id - self._first
        assert self.writer is not None
        if header.flags & FLAG_PARTIAL:
            self.partial += 1
        payload = parts[1]
        if self._check_chunk is not None and header.encoding == Encoding.BSLZ4:
            try:
                payload = self._check_chunk(payload)
            except ProtocolError as exc:
                self._failed.setdefault(index, f"frame {header.frame_id} as it came: {exc}")
                return True
        # Straight from the message or the ring slot: no copy in user space.
        written = self.writer.write(index, payload, header.timestamp_ns, header.sender,
                                    header.flags, header.parts)
        if written:
            self._failed.pop(index, None)  # a good copy after a damaged one: written after all
        if written and self.tap is not None:
            self.tap.offer(parts, self._run_id, copy=copies)
        return written

    def _damaged(self, frame_id: int, why: str) -> None:
        """A frame whose copy came damaged (--checksum): without reliable mode no other copy
        will come, so it is accounted for now, not after the drain timeout."""
        index = frame_id - self._first
        assert self.writer is not None
        if index >= 0 and not self.writer.has(index):
            self._failed.setdefault(index, why)

    def _failure(self, header: FrameHeader, payload: Any) -> bool:
        """A worker could not process this frame: it is accounted for, missing with why."""
        index = header.frame_id - self._first
        if index < 0 or 0 <= self._expected <= index:
            self.drops.drop("invalid", f"failure record of frame {header.frame_id}: not in run")
            return False
        try:
            reason = str(decode_body(header, bytes(memoryview(payload))).get(
                "reason", "processing failed"))
        except ProtocolError as exc:
            reason = f"processing failed (undecodable reason: {exc})"
        assert self.writer is not None
        if self.writer.has(index) or index in self._failed:
            self.writer.duplicates += 1
            return False
        self._failed[index] = f"worker {header.sender}: {reason}"
        return True

    def _origin_missing(self, missing: dict) -> None:
        """Ids the detector never delivered (the source knows why): accounted for at once."""
        assert self.writer is not None
        for frame_id, reason in missing.items():
            index = int(frame_id) - self._first
            if index >= 0 and not self.writer.has(index):
                self._failed.setdefault(index, f"detector: {reason}")

    def _count(self) -> int:
        """How many frames the run has: END's count, else START's, else what arrived."""
        if self.end is not None:
            return int(self.end["last_frame_id"]) - self._first + 1
        if self._expected >= 0:
            return self._expected
        assert self.writer is not None
        return self.writer.last_index + 1

    def _outstanding(self) -> int:
        # Writes are unique and checked to lie inside the run, so a count suffices (no scan).
        assert self.writer is not None
        return self._count() - self.writer.frames_written - len(self._failed)

    def _drain_result(self, reason: str | None) -> dict[str, Any]:
        assert self.writer is not None
        count = self._count()
        missing = self.writer.missing_indexes(count)
        damaged = self.drops.frames  # ids whose copy came damaged (--checksum)
        self._missing_reasons = {
            int(i): self._failed.get(int(i)) or damaged.get(int(i) + self._first)
            or reason or "not received" for i in missing}
        if len(missing):
            first = int(missing[0])
            log.warning("collector: %d of %d frames missing (%d reason(s); frame %d: %s)",
                        len(missing), count, len(set(self._missing_reasons.values())),
                        first + self._first, self._missing_reasons[first])
        self.summary = self._counters(count)
        return self.summary

    def _live_counters(self) -> dict[str, Any]:
        counters = {"frames_expected": self._count(), "partial": self.partial}
        counters.update({f"dropped_{k}": n for k, n in self.drops.as_dict().items()})
        return counters

    def _counters(self, count: int) -> dict[str, Any]:
        assert self.writer is not None
        return {
            "path": str(self.path),
            "run_id": self._run_id,
            "frames_expected": count,
            "frames_written": self.writer.frames_written,
            "bytes_written": self.writer.bytes_written,
            "bytes_stored": self.writer.bytes_stored,
            "missing": len(self._missing_reasons),
            "duplicates": self.writer.duplicates,
            "partial": self.partial,
            "dropped": self.drops.as_dict(),
        }

    def _blame_lost_workers(self, reports: dict) -> None:
        """Frames that never came while a worker died (no final report) most likely died with
        it: say which worker in their reason, so the ledger tells what happened."""
        lost = sorted(name for name, report in reports.items() if "error" in report)
        if not lost:
            return
        note = (f"; worker {', '.join(lost)} ended without a final report (died or cut off), "
                "frames it held were lost with it")
        for index, reason in self._missing_reasons.items():
            if index not in self._failed:
                self._missing_reasons[index] = reason + note

    def _finish(self, link: ControlLink, early_reason: str | None, final: dict) -> None:
        """Write the ledger and counters, close the file, and report DONE. A signal that
        comes meanwhile is held until the file is closed: cutting the ledger short loses it."""
        if self.writer is None or not self.writer.is_open:
            return
        held: list[int] = []
        previous = {s: signal.signal(s, lambda signum, _: held.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._write_ledger(link, early_reason, final)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])

    def _abandon(self, exc: StorageError) -> StorageError:
        """Give up the file after `exc` (once): every frame of the run it does not durably
        hold is recorded with its reason in the sidecar ledger; the error, one line, then says
        which frames stay readable and where the others are recorded."""
        writer = self.writer
        if writer is None or writer.abandoned:
            return exc
        reasons = {**self._failed, **getattr(self, "_missing_reasons", {})}
        note = writer.abandon(self._count(), reasons)
        return StorageError(f"{exc}; {note}")

    def _write_ledger(self, link: ControlLink, early_reason: str | None, final: dict) -> None:
        if early_reason is not None:
            self._drain_result(early_reason)
        self._blame_lost_workers(final.get("workers", {}))
        count = self._count()
        try:
            end = self.end or {}
            per_frame = {name: {int(i) - self._first: v for i, v in column.items()}
                         for name, column in (end.get("per_frame") or {}).items()}
            partial = {int(i) - self._first: bits
                       for i, bits in (end.get("partial") or {}).items()}
            self.writer.finalize(count, self._missing_reasons, self._live_counters(), final,
                                 per_frame, partial)
        except StorageError as exc:
            raise self._abandon(exc) from None
        finally:  # nothing left to close once abandoned
            self.writer.close()
        log.info("collector: %s closed: %d frames written, %d missing", self.path,
                 self.writer.frames_written, len(self._missing_reasons))
        if early_reason is None:
            link.send(MsgType.DONE, self.summary)
