"""The worker node: pulls frames from the source, processes them, pushes them to the collector.

A worker keeps no state between frames, so any number of them share the load; it forwards the
received message buffer itself (zero-copy), only the 96-byte header is rewritten to name it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from stream_node.kernels import compression
from stream_node.links.base import TAKE_MS, FrameInput, ring_name
from stream_node.links.control import ControlLink, Liveness, default_topology
from stream_node.links.endpoints import open_input
from stream_node.links.ring_links import RingOutput, fan_in_ring
from stream_node.links.transport import HandshakeWatch, LinkLimits, connect, data_socket, send_frame
from stream_node.model.contract import FrameGeometry, RunContract
from stream_node.model.errors import ConfigError, ProtocolError, RunAborted, StreamNodeError
from stream_node.model.frame import (
    FLAG_FAILED,
    FLAG_PAYLOAD_CRC,
    Encoding,
    FrameHeader,
    MsgType,
    failure_record,
    frame_header,
    payload_crc,
    payload_view,
    reencoded,
)
from stream_node.ops.serve import serve_status
from stream_node.stages.admission import admit
from stream_node.stages.drops import WARN_LIMIT, DropLedger

log = logging.getLogger(__name__)

MIN_SLOT = 4096  # an output ring's slot holds at least a failure record (its reason text)


@dataclass
class WorkerConfig:
    control: str
    inputs: Sequence[str]
    output: str
    name: str = "w0"
    index: int = 0
    ready_timeout_s: float = 30.0
    liveness: Liveness = field(default_factory=Liveness)
    limits: LinkLimits = field(default_factory=LinkLimits)
    status: str | None = None  # endpoint to answer status requests on (stream-node status)
    metrics_port: int | None = None  # serve Prometheus metrics on this HTTP port
    topology: str = field(default_factory=default_topology)  # peers of another are refused
    serving: bool = False  # run after run (`--serve`): wait for each START without a deadline


_KEPT: tuple[str, Any] | None = None  # the last chain built here, and what it was built from


def _files(value: Any) -> list[tuple[str, int, int]]:
    """Every existing file a kernel spec names, with its modification time and size."""
    if isinstance(value, str):
        try:
            st = os.stat(value)
        except (OSError, ValueError):
            return []
        return [(value, st.st_mtime_ns, st.st_size)] if stat.S_ISREG(st.st_mode) else []
    if isinstance(value, dict):
        return [f for v in value.values() for f in _files(v)]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in _files(v)]
    return []


def kept_chain(kernels: Sequence[Any], shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """The run's kernel chain: the last one built in this process when the run asks for the
    same (a serving worker's next run: kernels compiled, maps loaded, buffers allocated, its
    counters back at 0), else a new one. A map file changed on disk since (a new pedestal)
    builds anew; a chain with state of its own (pedestal tracking) is never kept."""
    from stream_node.kernels import build_chain
    from stream_node.kernels.stage import PedestalStage

    global _KEPT
    key = json.dumps([list(kernels), list(shape), str(dtype), _files(list(kernels))],
                     sort_keys=True, default=str)
    if _KEPT is not None and _KEPT[0] == key:
        chain = _KEPT[1]
        for stage in chain.stages:
            stage.counters = dict.fromkeys(stage.counters, 0)
        return chain
    _KEPT = None  # the old chain's buffers go before the new one's are made
    chain = build_chain(kernels, shape, dtype)
    if not any(isinstance(s, PedestalStage) for s in chain.stages):
        _KEPT = (key, chain)
    return chain


class Worker:
    def __init__(self, config: WorkerConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = config
        self.ctx = ctx or zmq.Context.instance()
        self.drops = DropLedger(f"worker {config.name}")
        self.frames = 0
        self.bytes = 0
        self.failed = 0  # frames a kernel could not process (sent on as failure records)
        self.compress = False
        self.checksum = False  # seal what this worker sends (--checksum)
        self._ring: RingOutput | None = None  # the output ring of a shared-memory fan-in
        self.chain: Any = None
        self.unpacked: np.ndarray | None = None  # decompressed frame, when frames come bslz4
        self.stalls = 0
        self._check_chunk: Callable[[Any], Any] | None = None  # see _setup_chunk_check
        self.out_shape: tuple[int, ...] = ()  # the run's output geometry, from START
        self.out_dtype = np.dtype(np.uint8)
        self.out_nbytes = 0

    def report(self) -> dict[str, Any]:
        report = {"name": self.cfg.name, "frames": self.frames, "bytes": self.bytes,
                  "stalls": self.stalls, "failed": self.failed, "dropped": self.drops.as_dict()}
        if self.chain is not None:
            report["kernels"] = self.chain.counters
        return report

    def status(self) -> dict[str, Any]:
        """The worker's counters for `stream-node status`; called from the status thread, so
        it only reads plain values (never the sockets)."""
        link = getattr(self, "_link", None)
        run_id = link.run_id if link is not None else 0
        handled = self.frames + self.failed
        state = "waiting" if not run_id or not handled else "running"
        return {
            "role": "worker", "name": self.cfg.name, "run_id": run_id, "state": state,
            "frames": self.frames, "bytes": self.bytes, "frames_expected": None,
            "counters": {"frames_in": handled + sum(self.drops.as_dict().values()),
                         "frames_out": self.frames, "bytes_out": self.bytes,
                         "stalls": self.stalls, "failed": self.failed},
            "dropped": self.drops.as_dict(), "ring": None, "queue_depth": None,
            "memory_bound_bytes": None,
        }

    def run(self) -> dict[str, Any]:
        """Serve one run until the source says FINISH; returns this worker's counters."""
        cfg = self.cfg
        link = self._link = ControlLink(self.ctx, cfg.control, "worker", cfg.name, cfg.liveness,
                                             cfg.topology)
        push = data_socket(self.ctx, zmq.PUSH, cfg.limits)
        status = serve_status(self.ctx, cfg.status, cfg.metrics_port, self.status)
        watch_out = HandshakeWatch(push)
        inp: FrameInput | None = None
        fan_in = ring_name(cfg.output)  # shared-memory fan-in: this worker's own output ring
        try:
            if fan_in is None:
                connect(push, cfg.output, "collector's input")
            run = RunContract.from_wire(link.wait_start(None if cfg.serving else
                                                          cfg.ready_timeout_s))
            try:
                if not any(ring_name(e) for e in cfg.inputs):
                    cfg.limits.check_fits(run.input.largest_payload, "a frame from the source")
                if fan_in is not None:
                    self._ring = self._open_fan_in(fan_in, run)
            except StreamNodeError as exc:  # the source ends the run with this reason
                link.send(MsgType.ABORT, {"reason": f"worker {cfg.name}: {exc}",
                                          "exit_code": int(exc.exit_code)})
                raise
            self.out_shape, self.out_dtype = run.output.shape, run.output.dtype
            self.out_nbytes = run.output.nbytes
            # Opened after START: the source says how frames are dispatched.
            credit = None
            if run.dispatch.reliable:
                credit = (link.identity, link.run_id, run.dispatch.credit)
            inp = open_input(self.ctx, cfg.inputs, cfg.limits, credit)
            self.compress = run.compression == "bslz4"
            self.checksum = run.checksum
            if self.compress:  # parallelism comes from the worker processes, not codec threads
                compression.set_codec_threads(1)
            self._setup_kernels(run)
            self._setup_chunk_check(run)

            def listen() -> None:  # an ABORT (e.g. the collector refused the run) ends the wait
                if link.sock.poll(0) and self._command(link, link.recv_ready()):
                    raise RunAborted("the run finished before this worker was ready")

            inp.wait_ready(cfg.ready_timeout_s, listen)
            if fan_in is None:
                watch_out.wait(1, cfg.ready_timeout_s, f"the collector at {cfg.output}", listen)
            link.send(MsgType.READY)
            log.info("worker %s: run %#x ready; per link %s", cfg.name, link.run_id,
                     cfg.limits.describe(max(run.largest_frame_bytes, 1)))
            self._serve(link, inp, push)
            return self.report()
        finally:
            status.close()
            if inp is not None:
                inp.close()
            watch_out.close()
            push.close()
            if self._ring is not None:
                self._ring.close()  # ends its stream: the collector reads what is in it
            link.close()

    def _open_fan_in(self, name: str, run: RunContract) -> RingOutput:
        """This worker's output ring of a shared-memory fan-in, read by the collector in place:
        `--sndhwm` frames in flight, each slot the largest payload the run's output can be."""
        if not 0 <= self.cfg.index < max(run.workers, 1):
            raise ConfigError(f"worker {self.cfg.name}: --index {self.cfg.index} with a "
                              f"ring:// fan-in must be 0..{run.workers - 1} (the collector "
                              f"reads rings {fan_in_ring(name, 0)}..; the run has "
                              f"{run.workers} workers)")
        slot = max(FrameGeometry(run.output.shape, run.output.dtype, run.encoding).largest_payload,
                   MIN_SLOT)
        if run.compression == "bslz4" and (run.kernels or run.input.encoding == Encoding.RAW):
            # chunks are compressed into the slot: it holds bitshuffle's worst case
            slot = max(slot, compression.chunk_bound(run.output.shape, run.output.dtype))
        out = RingOutput(fan_in_ring(name, self.cfg.index), self.cfg.limits.sndhwm, slot,
                         group="collector", latest_readers=0)
        log.info("worker %s: output %s", self.cfg.name, out.describe())
        return out

    def _serve(self, link: ControlLink, inp: FrameInput, push: zmq.Socket) -> None:
        while True:
            if inp.exhausted:  # nothing more will come: only the control channel matters
                link.sock.poll(100)
            else:
                try:
                    for parts in inp.take(TAKE_MS):
                        self._forward(link, parts, push, inp.copies)
                finally:
                    inp.release()
            if link.sock.poll(0) and self._command(link, link.recv_ready()):
                return
            link.tick()

    def _setup_chunk_check(self, run: RunContract) -> None:
        """Compressed frames passed through as they came (a detector's chunks) get their block
        structure walked here: the source checked only their header, so this work is spread
        over the workers instead of holding up the one process that takes every frame."""
        source = run.input
        if self.chain is not None or source.encoding != Encoding.BSLZ4:
            return  # a chain decompresses each frame, which checks it entirely
        from stream_node.origins.chunks import chunk_checker

        self._check_chunk = chunk_checker(source)

    def _setup_kernels(self, run: RunContract) -> None:
        """Build the run's kernel chain before READY: every kernel compiled, every buffer
        allocated, so the first frame costs what the others do."""
        if not run.kernels:
            return
        source = run.input
        self.chain = kept_chain(run.kernels, source.shape, source.dtype)
        if source.encoding == Encoding.BSLZ4:  # frames arrive compressed: kernels need pixels
            self.unpacked = np.empty(source.shape, source.dtype)
        log.info("worker %s: kernels %s ready", self.cfg.name,
                 [k["kernel"] for k in run.kernels])

    def _command(self, link: ControlLink, msg: Any) -> bool:
        """Act on a control message; True when the run is over for this worker."""
        if msg is None:
            return False
        if msg.msg_type == MsgType.FINISH:
            link.send(MsgType.DONE, self.report())
            return True
        if msg.msg_type == MsgType.ABORT:
            raise RunAborted(f"source aborted the run: {msg.body.get('reason')}")
        return False

    def _forward(self, link: ControlLink, parts: list[Any], push: zmq.Socket, copy: bool) -> None:
        header = admit(parts, link.run_id, self.drops)
        if header is None:
            return
        payload, remade = parts[1], False
        if header.flags & FLAG_FAILED:  # the origin or a worker upstream could not make it
            header.sender = self.cfg.index
            self._send(link, push, header, payload, copy)
            return
        if self._check_chunk is not None and header.encoding == Encoding.BSLZ4:
            try:
                self._check_chunk(payload)
            except ProtocolError as exc:
                self._failed(link, push, header, f"frame {header.frame_id} as it came: {exc}")
                return
        makes = self.chain is not None or (self.compress and header.encoding == Encoding.RAW)
        if self._ring is not None and makes:
            self._make_in_slot(link, header, payload)
            return
        if self.chain is not None:
            try:
                out = self.chain.apply(self._pixels(header, payload), frame_id=header.frame_id)
            except StreamNodeError as exc:  # a kernel failed (or the frame is not raw)
                self._failed(link, push, header, str(exc))  # names the kernel and the frame
                return
            header = frame_header(out, header.run_id, header.frame_id, header.timestamp_ns,
                                  self.cfg.index, header.flags, header.parts)
            payload, copy, remade = out, True, True  # the chain reuses its output buffer
        if self.compress and header.encoding == Encoding.RAW:
            # Compressed here, in parallel workers, so the collector only writes bytes; the
            # chunk is a new buffer, so it goes zero-copy even from a ring slot.
            payload = compression.compress(payload_view(header, payload))
            header = reencoded(header, Encoding.BSLZ4, payload.nbytes, self.cfg.index)
            copy, remade = False, True
        else:
            header.sender = self.cfg.index
        if self.checksum and (remade or not header.flags & FLAG_PAYLOAD_CRC):
            header.seal(payload_crc(payload))  # what leaves here is sealed, as it came
        self._send(link, push, header, payload, copy)
        self.frames += 1
        self.bytes += header.payload_bytes

    def _pixels(self, header: FrameHeader, payload: Any) -> np.ndarray:
        """The frame's pixels for the chain: decoded into the buffer made at START when it came
        compressed (bitshuffle's codec runs without the GIL), else a view of the payload."""
        if header.encoding == Encoding.BSLZ4 and self.unpacked is not None:
            return compression.decompress(payload, self.unpacked.shape, self.unpacked.dtype,
                                          out=self.unpacked)
        return payload_view(header, payload)

    def _make_in_slot(self, link: ControlLink, header: FrameHeader, payload: Any) -> None:
        """A shared-memory fan-in: what this worker makes goes straight into its output slot,
        the last kernel's output or the compressed chunk, so a frame costs no new buffer and
        no copy. A frame that cannot be made takes the slot as its failure record."""
        assert self._ring is not None
        slot = self._claim(link)
        try:
            out = self._pixels(header, payload)
            if self.chain is not None:
                into = None if self.compress else \
                    slot[:self.out_nbytes].view(self.out_dtype).reshape(self.out_shape)
                out = self.chain.apply(out, frame_id=header.frame_id, into=into)
            made = frame_header(out, header.run_id, header.frame_id, header.timestamp_ns,
                                self.cfg.index, header.flags, header.parts)
            if self.compress:
                made = reencoded(made, Encoding.BSLZ4, compression.compress_into(out, slot),
                                 self.cfg.index)
        except StreamNodeError as exc:  # a kernel failed (or the frame is not raw)
            self.failed += 1
            if self.failed <= WARN_LIMIT:
                log.warning("worker %s: %s", self.cfg.name, exc)
            packed, body = failure_record(header, self.out_shape, self.out_dtype, str(exc),
                                          self.cfg.index)
            slot[:len(body)] = np.frombuffer(body, np.uint8)
            self._ring.commit(FrameHeader.parse(packed), slot)
            return
        if self.checksum:
            made.seal(payload_crc(slot[:made.payload_bytes]))
        self._ring.commit(made, slot)
        self.frames += 1
        self.bytes += made.payload_bytes

    def _claim(self, link: ControlLink) -> np.ndarray:
        """A free output slot (all its bytes), waiting for the collector while still hearing
        the source (backpressure)."""
        assert self._ring is not None
        while (slot := self._ring.reserve_bytes(100)) is None:
            self.stalls += 1
            link.tick()
            if link.sock.poll(0) and self._command(link, link.recv_ready()):
                raise RunAborted("run finished while a frame waited for the collector")
        return slot

    def _failed(self, link: ControlLink, push: zmq.Socket, header: FrameHeader,
                reason: str) -> None:
        """The frame cannot go on: a record saying why goes in its place (it is not lost)."""
        self.failed += 1
        if self.failed <= WARN_LIMIT:
            log.warning("worker %s: %s", self.cfg.name, reason)
        packed, body = failure_record(header, self.out_shape, self.out_dtype, reason,
                                      self.cfg.index)
        self._send(link, push, FrameHeader.parse(packed), body, False)

    def _send(self, link: ControlLink, push: zmq.Socket, header: FrameHeader, payload: Any,
              copy: bool) -> None:
        """Send, waiting for the collector's pipe or ring while still hearing the source
        (backpressure). The send itself never blocks: the pipe that poll() saw writable may
        vanish before it."""
        packed = header.pack() if self._ring is None else b""
        while True:
            if self._ring is not None:
                if self._ring.put(header, payload, 100):  # copied once, into the slot
                    return
            elif push.poll(100, zmq.POLLOUT):
                try:
                    send_frame(push, packed, payload, zmq.NOBLOCK, copy=copy)
                    return
                except zmq.Again:
                    pass
            self.stalls += 1
            link.tick()
            if link.sock.poll(0) and self._command(link, link.recv_ready()):
                raise RunAborted("run finished while a frame waited for the collector")
