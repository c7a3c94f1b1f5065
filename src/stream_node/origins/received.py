"""What every detector protocol shares: a ZeroMQ socket to the detector, a bounded wait for the
series header before START, the emit loop, and the ledger of protocol errors.

A protocol module says how to read one message (`handle`); this base hands good frames on,
answers the source's control plane about every 100 ms, and ends the series on the end message,
on a new series, or after `timeout` seconds of silence. Every problem is a `ProtocolFault`: it is
counted by kind, logged (the first few of each kind), and, when it costs a frame, that frame id is
recorded missing with the reason, so the file's ledger says what the detector failed to deliver.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections import Counter
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import zmq

from stream_node.kernels import compression
from stream_node.links.base import FrameOutput
from stream_node.model.contract import MAX_ID_JUMP, frame_nbytes
from stream_node.model.errors import ConfigError, PeerTimeout, ProtocolError
from stream_node.model.frame import Encoding, FrameHeader, MsgType, dtype_code
from stream_node.origins import chunks
from stream_node.origins.base import Emitted, Origin, OriginOptions, RunControl, Stall

log = logging.getLogger(__name__)

WARN_LIMIT = 5  # log the first few faults of each kind; the counters hold them all
RCVHWM = 64  # messages queued from the detector; beyond them the detector's PUSH waits


class ProtocolFault(ProtocolError):
    """A message the protocol does not allow: `kind` is the counter it goes to, `frame_id` the
    frame it cost (None if none)."""

    def __init__(self, kind: str, message: str, frame_id: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.frame_id = frame_id


class SeriesOver(Exception):
    """The series ended: the end message came, or the detector began another series (whose
    first message, `carry`, then begins the next run of a serving node)."""

    def __init__(self, reason: str | None = None, carry: list[Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # None: ended properly
        self.carry = carry


class DetectorConnection:
    """A serving node's connection to a detector that pushes (DECTRIS v1 and v2), kept from one
    series to the next: the detector may arm again the moment a series ends, and a socket made
    per series would miss what it sends before the connection is back."""

    def __init__(self, address: str) -> None:
        self.address = split_options(address)[0]
        self.sock = zmq.Context.instance().socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                                     | zmq.EVENT_DISCONNECTED)
        self.up = False
        self.carry: list[list[Any]] = []  # a next series' first message, read during the last
        self.last_series: Any = None  # the series just written: its end message may come late
        try:
            self.sock.connect(self.address)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"cannot connect to the detector at {self.address}: {exc}") from None

    def connected(self) -> bool:
        """Whether the ZeroMQ handshake with the detector's sender is done (and not lost)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            self.up = recv_monitor_message(self._monitor)["event"] == \
                zmq.EVENT_HANDSHAKE_SUCCEEDED
        return self.up

    def waiting(self, timeout_ms: int) -> bool:
        """True once a message (a series' header, normally) is there to read."""
        return bool(self.carry) or bool(self.sock.poll(timeout_ms, zmq.POLLIN))

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)


def split_options(address: str) -> tuple[str, dict[str, str]]:
    """`tcp://host:port?a=1&b=2` -> ("tcp://host:port", {"a": "1", "b": "2"})."""
    base, _, query = address.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    parts = urlsplit(base)
    if parts.scheme not in ("tcp", "ipc", "inproc") or not (parts.netloc or parts.path):
        raise ConfigError(f"detector address {address!r}: expected tcp://HOST:PORT or ipc://PATH")
    return base, opts


PLACEHOLDER = b"\x00sn-large%02d"  # 11 bytes standing for a large string in a message


def swap_out(buf: np.ndarray, where: np.ndarray, count: int,
             head: bytes) -> tuple[bytes, dict[bytes, memoryview]]:
    """`buf` (a whole message) with each of its first `count` ranges in `where` (rows: head
    offset, data offset, length) replaced by `head` + an 11-byte placeholder, and placeholder ->
    the slice of `buf` it stands for. A serialiser (cbor2, msgpack) copies every string it
    decodes; given the short message instead, it copies a few hundred bytes, and the caller's
    hook puts the slices back where the placeholders came out."""
    view, pieces, pos = memoryview(buf), [], 0
    large: dict[bytes, memoryview] = {}
    for i in range(count):
        start, data, length = (int(v) for v in where[i])
        mark = PLACEHOLDER % i
        pieces += [view[pos:start], head, mark]
        large[mark] = view[data:data + length]
        pos = data + length
    pieces.append(view[pos:])
    return b"".join(pieces), large


def json_part(part: Any) -> dict:
    """A JSON object from one message part; ProtocolError if it is not one (orjson: a DECTRIS
    frame has three of these, and json's 1.3 us each were most of the origin's own time)."""
    try:
        value = orjson.loads(memoryview(part))
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"JSON part is a {type(value).__name__}, not an object")
    return value


class ReceivedOrigin(Origin):
    """A detector that sends what it sends; `handle` turns each message into frames."""

    protocol = "detector"  # names the protocol in every error message
    socket_type = zmq.PULL

    def __init__(self, address: str, options: OriginOptions, known: tuple[str, ...] = ()) -> None:
        self.address, self.opts = split_options(address)
        common = ("timeout", "verify", "decompress")
        unknown = set(self.opts) - {*common, *known}
        if unknown:
            raise ConfigError(f"{self.protocol} endpoint {address!r}: unknown option(s) "
                              f"{sorted(unknown)}; known: {', '.join((*common, *known))}")
        self.timeout_s = self.seconds("timeout", options.timeout_s)
        # header: the source checks each chunk's header, the workers walk its blocks (the
        # walk is most of a compressed frame's cost here, and workers scale out); structure:
        # the source walks too; full: it also decodes every frame once.
        self.verify = self.opts.get("verify", "header")
        # decompress=1: compressed frames become raw pixels here (a file without filter 32008,
        # or workers recompressing with --compress); default: they pass through untouched.
        self.decompress = self.flag("decompress")
        self._scratch: np.ndarray | None = None  # verify=full decodes here, frame after frame
        if self.verify not in ("header", "structure", "full"):
            raise ConfigError(f"{self.protocol}: verify={self.verify!r}: use header, structure "
                              "or full")
        self.options = options
        self.errors: Counter[str] = Counter()
        self.missing: dict[int, str] = {}
        self.per_frame: dict[str, dict[int, int]] = {name: {} for name in self.columns}
        self.received: set[int] = set()
        self.sent = 0
        self.highest = -1
        self.pending: list[list[Any]] = []  # messages read before START, emitted first
        self.ctx = zmq.Context.instance()
        self.kept: DetectorConnection | None = options.connection
        self._timeout_ms = -2  # the socket's RCVTIMEO as last set here (-1: wait for ever)
        if self.kept is not None:  # a serving node's: the previous series may have left a carry
            self.sock = self.kept.sock
            self._backlog, self.kept.carry = self.kept.carry, []
            return
        self._backlog = []
        self.sock = self.ctx.socket(self.socket_type)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self._connect()
        except BaseException:
            self.sock.close(linger=0)
            raise

    def flag(self, name: str) -> bool:
        """A yes/no endpoint option (`?name=1`); absent means no."""
        value = self.opts.get(name, "0").lower()
        if value not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{self.protocol}: {name}={value!r}: use 1 or 0")
        return value in ("1", "true", "yes")

    def seconds(self, name: str, default: float) -> float:
        """A duration endpoint option (`?name=S`): a typo must name the option, not end in a
        ValueError, and a wait of 0 s, < 0 or nan would end the run before the detector spoke."""
        if name not in self.opts:
            return default
        text = self.opts[name]
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{self.protocol}: {name}={text!r}: use a number of seconds > 0, "
                              f"e.g. ?{name}=30")
        return value

    def _connect(self) -> None:
        try:
            self.sock.connect(self.address)
        except zmq.ZMQError as exc:
            raise ConfigError(f"{self.protocol}: cannot connect to {self.address}: {exc}") from None

    # -- receiving ---------------------------------------------------------------------------

    def recv(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message, or None after `timeout_ms`: one blocking receive with a timeout
        (a try-then-poll costs a failed call and a poll for every message that is not yet
        there, CPU the detector's sender on the same host then lacks)."""
        if self._backlog:
            return self._backlog.pop(0)
        if timeout_ms != self._timeout_ms:
            self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._timeout_ms = timeout_ms
        try:
            return self.sock.recv_multipart(copy=False)
        except zmq.Again:
            return None

    def wait_for(self, what: str, found: callable) -> list[zmq.Frame]:  # type: ignore[valid-type]
        """Read messages until `found(parts)` is true, for at most the silence timeout; every
        other message is a fault (counted). Used before START, to learn the series' geometry."""
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            parts = self.recv(int(left * 1000) + 1)
            if parts is None:
                break
            try:
                if found(parts):
                    return parts
            except ProtocolFault as fault:
                self.fault(fault)
        seen = f" (ignored before it: {dict(self.errors)})" if self.errors else ""
        raise PeerTimeout(f"{self.protocol}: no {what} from {self.address} within "
                          f"{self.timeout_s:.1f} s{seen}: is the detector armed and streaming "
                          "to this address? (endpoint option ?timeout=S waits longer)")

    # -- faults --------------------------------------------------------------------------------

    def fault(self, fault: ProtocolFault) -> None:
        self.errors[fault.kind] += 1
        reason = f"{self.protocol}: {fault}"
        if self.errors[fault.kind] <= WARN_LIMIT:
            log.warning("%s", reason)
        elif self.errors[fault.kind] == WARN_LIMIT + 1:
            log.warning("%s: more %s errors are counted, not logged", self.protocol, fault.kind)
        fid = fault.frame_id
        if fid is not None and fid not in self.received and self._in_run(fid):
            self.missing.setdefault(fid, reason)

    def _in_run(self, frame_id: int) -> bool:
        """An id of this series: inside its count, or, when the detector did not say how many,
        at most MAX_ID_JUMP beyond the highest so far (an absurd id is a fault, never a
        reason to wait for or record every id up to it)."""
        if frame_id < self.first_id:
            return False
        if self.count is not None:
            return frame_id < self.first_id + self.count
        return frame_id <= max(self.highest, self.first_id) + MAX_ID_JUMP

    # -- frames --------------------------------------------------------------------------------

    @cached_property
    def frame_nbytes(self) -> int:
        return frame_nbytes(self.shape, self.dtype)

    def check_id(self, frame_id: int, where: str) -> None:
        if not self._in_run(frame_id):
            last = (f"..{self.first_id + self.count - 1}" if self.count is not None else
                    f".. (at most {MAX_ID_JUMP} beyond the highest so far, {self.highest})")
            raise ProtocolFault("out_of_range", f"{where}: frame {frame_id} is outside the "
                                f"series' frames {self.first_id}{last}")
        if frame_id in self.received:
            raise ProtocolFault("duplicate", f"{where}: frame {frame_id} arrived twice; the "
                                "first one is kept")

    def payload(self, kind: str, blob: Any, frame_id: int, where: str) -> Any:
        """The run's payload for a frame that came as `kind` ("raw" or "bslz4"), converted if
        the run's encoding differs (rare: a detector that changes compression mid-series)."""
        nbytes = self.frame_nbytes
        try:
            if kind == "bslz4":
                buf = chunks.check_bslz4(blob, nbytes, self.dtype.itemsize,
                                         walk=self.verify != "header")
                if self.encoding == Encoding.RAW:  # a new array: it may be sent zero-copy
                    return compression.decompress(buf, self.shape, self.dtype)
                if self.verify == "full":  # decoded only to prove it decodes: one scratch
                    if self._scratch is None:
                        self._scratch = np.empty(self.shape, self.dtype)
                    compression.decompress(buf, self.shape, self.dtype, out=self._scratch)
                # the blob as it came, or a new one with the header it came without
                return blob if buf.nbytes == memoryview(blob).nbytes else buf
            size = memoryview(blob).nbytes
            if size != nbytes:
                raise ProtocolError(f"raw data has {size} bytes, a {self.shape} {self.dtype} "
                                    f"frame has {nbytes}")
            if self.encoding == Encoding.BSLZ4:
                array = np.frombuffer(blob, self.dtype).reshape(self.shape)
                return compression.compress(array)
            return blob
        except ProtocolFault:
            raise
        except ProtocolError as exc:
            raise ProtocolFault("corrupt" if kind != "raw" else "wrong_size",
                                f"{where}: frame {frame_id}: {exc}", frame_id) from None

    def deliver(self, out: FrameOutput, ctl: RunControl, frame_id: int, payload: Any,
                timestamp_ns: int | None = None) -> None:
        nbytes = memoryview(payload).nbytes
        header = FrameHeader(MsgType.FRAME, run_id=self.run_id, frame_id=frame_id,
                             shape=self.shape, dtype_code=dtype_code(self.dtype),
                             encoding=self.encoding, payload_bytes=nbytes,
                             timestamp_ns=time.time_ns() if timestamp_ns is None else timestamp_ns)
        stall: Stall | None = None
        while not out.put(header, payload, 100):
            stall = stall or Stall()
            ctl.stalled(stall)
        self.received.add(frame_id)
        self.missing.pop(frame_id, None)
        self.highest = max(self.highest, frame_id)
        self.sent += 1

    def record(self, column: str, frame_id: int, value: Any) -> None:
        if value is not None:
            self.per_frame[column][frame_id] = int(value)

    # -- the run ---------------------------------------------------------------------------------

    @abstractmethod
    def handle(self, parts: list[zmq.Frame], out: FrameOutput, ctl: RunControl) -> None:
        """Act on one message: deliver its frame, or raise ProtocolFault / SeriesOver."""

    def complete(self) -> bool:
        """True once every frame of a series of known length has arrived (or is accounted for)."""
        return False

    def silent(self) -> SeriesOver:
        """What silence means for this protocol (default: a series without its end message)."""
        self.fault(ProtocolFault("no_end", f"the stream stopped without an end message: "
                                 f"silent for {self.timeout_s:.1f} s after {self.sent} frames"))
        return SeriesOver(f"not received: the stream stopped without an end message "
                          f"(silent for {self.timeout_s:.1f} s)")

    def emit(self, out: FrameOutput, run_id: int, ctl: RunControl) -> Emitted:
        self.run_id = run_id
        end: SeriesOver | None = None
        last_message = next_poll = time.monotonic()
        pending, self.pending = self.pending, []
        while end is None:
            now = time.monotonic()
            if now >= next_poll:
                ctl.poll()
                next_poll = now + 0.1
            if ctl.stopping:  # ended on purpose: the run is what arrived until now
                self.count = None
                end = SeriesOver("not received: the run was stopped before it came")
                break
            if pending:
                parts: list[Any] | None = pending.pop(0)
            else:
                parts = self.recv(100)
            if parts is None:
                if time.monotonic() - last_message > self.timeout_s:
                    end = self.silent()
                continue
            last_message = time.monotonic()
            try:
                self.handle(parts, out, ctl)
            except SeriesOver as over:
                end = over
                if over.carry is not None and self.kept is not None:
                    self.kept.carry.append(over.carry)
            except ProtocolFault as fault:
                self.fault(fault)
            except ProtocolError as exc:  # a foreign message: counted, never fatal
                self.fault(ProtocolFault("undecodable", f"undecodable message ({exc})"))
            if end is None and self.complete():
                end = SeriesOver(None)
        out.end()
        if self.kept is not None:
            self.kept.last_series = self.series_id
        return self.emitted(end)

    def ended_before(self, series: Any) -> bool:
        """The end message of the series a kept connection just finished: that series ended
        when its last frame came (its count was known), so the message is no fault."""
        return self.kept is not None and series is not None and series == self.kept.last_series

    def emitted(self, end: SeriesOver | None) -> Emitted:
        if self.count is None:  # the last id seen, or the last one reported missing
            last = max(self.highest, max(self.missing, default=-1))
        else:
            last = self.first_id + self.count - 1
        why = (end.reason if end is not None and end.reason else
               "not received before the end of the series")
        missing = dict(self.missing)
        for frame_id in range(self.first_id, last + 1):
            if frame_id not in self.received and frame_id not in missing:
                missing[frame_id] = f"{self.protocol}: frame {frame_id} {why}"
        counters = {f"{self.protocol}_{kind}": n for kind, n in sorted(self.errors.items())}
        return Emitted(sent=self.sent, last_id=last, missing=missing, counters=counters,
                       per_frame={k: v for k, v in self.per_frame.items() if v})

    def close(self) -> None:
        if self.kept is None:  # a kept connection outlives the series
            self.sock.close(linger=0)
