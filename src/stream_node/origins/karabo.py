"""European XFEL karabo-bridge (`karabo+tcp://HOST:PORT`), as the `karabo_bridge` package
serialises it.

A message is one train. Protocol 2.2: a multipart message of (header, data) pairs; per source a
msgpack header `{"source", "content": "msgpack", "metadata": {..., "timestamp.tid"}}` with the
source's non-array data as a msgpack map, then per array a header `{"source", "content": "array",
"path", "dtype", "shape"}` and the raw array bytes (taken here without a copy). Protocol 1.0: one
msgpack part, a map of sources, each with its metadata under "metadata" and its arrays inline in
msgpack-numpy's encoding (byte-string keys; the array bytes are sliced from the message, not
copied: see `_unpack_v1`).

Options: `?pattern=req` (default: send `next`, get one train: the bridge's REQ/REP), `pull`, or
`sub` (the bridge's PUSH or PUB); `?source=NAME` and `?path=KEY` choose the array that becomes
the frames (default: the first source's first array of 2 or more dimensions, `image.data` if
there is one); `?trains=N` ends the run after N trains (default: the source's `--frames`).

The train id becomes the frame id (the first train taken is the run's first id); a train the
bridge skipped is recorded missing with that reason. The bridge has no end message: the run ends
after N trains or when the bridge has been silent for the timeout. The chosen source's scalar data
of the first train goes to the run's metadata; each train's timestamp to the frame's.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgpack
import numpy as np
import zmq
from numba import njit

from stream_node.links.base import FrameOutput
from stream_node.model.errors import ConfigError, ProtocolError
from stream_node.origins.base import OriginOptions, RunControl
from stream_node.origins.received import (
    ProtocolFault,
    ReceivedOrigin,
    SeriesOver,
    split_options,
    swap_out,
)

PATTERNS = {"req": zmq.REQ, "pull": zmq.PULL, "sub": zmq.SUB}


LARGE = 4096  # protocol 1.0: bin values this long are sliced from the message, not copied
MAX_LARGE = 64  # at most this many per message are sliced; a message with more is copied


@njit(cache=True, nogil=True)
def _large_bins(buf: np.ndarray, threshold: int, out: np.ndarray) -> int:
    """Where the bin values of at least `threshold` bytes lie in one msgpack object: rows
    (head offset, data offset, length) in `out`; returns how many, or a negative number if the
    object is cut short (-1), malformed (-2), nested too deep (-3) or has too many (-4).

    Only the type bytes and lengths of the msgpack spec are read, to step over each value;
    decoding stays msgpack's (which copies every bin value it decodes)."""
    n = buf.shape[0]
    left = np.empty(64, np.int64)  # values still to read per open array or map
    depth, left[0], pos, found = 0, 1, 0, 0
    while depth >= 0:
        if left[depth] == 0:
            depth -= 1
            continue
        left[depth] -= 1
        if pos >= n:
            return -1
        b = np.int64(buf[pos])
        head = pos
        pos += 1
        items = np.int64(-1)  # an array or map: how many values follow
        width = 0  # bytes of a length field that follows
        if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            continue
        if b <= 0x8F:
            items = 2 * (b & 0x0F)
        elif b <= 0x9F:
            items = b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F
        elif b == 0xC1:
            return -2
        elif b <= 0xC9 or 0xD9 <= b <= 0xDF:  # bin, ext, str: a length; array, map: a count
            if b <= 0xC6:
                width = 1 << (b - 0xC4)
            elif b <= 0xC9:
                width = 1 << (b - 0xC7)
            elif b <= 0xDB:
                width = 1 << (b - 0xD9)
            else:
                width = 2 if b in (0xDC, 0xDE) else 4
            if pos + width > n:
                return -1
            size = np.int64(0)
            for k in range(width):
                size = (size << 8) | np.int64(buf[pos + k])
            pos += width
            if b >= 0xDC:
                items = size * (2 if b >= 0xDE else 1)
            else:
                if b <= 0xC6 and size >= threshold:
                    if found == out.shape[0]:
                        return -4
                    out[found, 0], out[found, 1], out[found, 2] = head, pos, size
                    found += 1
                pos += size + (1 if 0xC7 <= b <= 0xC9 else 0)  # ext: its type byte
        elif b <= 0xCB:
            pos += 4 if b == 0xCA else 8
        elif b <= 0xD3:
            pos += 1 << ((b - 0xCC) & 3)
        else:  # fixext 1..16 and its type byte
            pos += 1 + (1 << (b - 0xD4))
        if pos > n:
            return -1
        if items > 0:
            if depth + 1 == left.shape[0]:
                return -3
            depth += 1
            left[depth] = items
    return found


_where = np.empty((MAX_LARGE, 3), np.int64)  # `_unpack_v1`'s scratch (one origin per process)


def _unpack(data: Any, hook: Any = None) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False,
                               object_hook=hook or partial(_nd, {}))
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable msgpack ({exc})") from None


def _unpack_v1(message: Any) -> Any:
    """A protocol 1.0 message as msgpack decodes it, except that the arrays' data are
    read-only slices of the message: each large bin value is swapped for a short placeholder in
    a small copy of the message, and `_nd` swaps the slice back in. A large bin value that is
    not an array's data makes the message go to msgpack whole instead."""
    buf = np.frombuffer(message, np.uint8)
    count = _large_bins(buf, LARGE, _where)
    if count <= 0:
        return _unpack(message)
    small, large = swap_out(buf, _where, count, b"\xc4\x0b")  # bin 8 of 11 bytes
    body = _unpack(small, partial(_nd, large))
    return body if not large else _unpack(message)  # `_nd` pops what it used


def _nd(large: dict[bytes, memoryview], obj: dict) -> Any:
    """msgpack-numpy's encoding (protocol 1.0): an array is a map with byte-string keys
    `{b"nd": True, b"type": "<u2", b"kind": b"", b"shape": [...], b"data": bytes}`, a numpy
    scalar `{b"nd": False, b"type", b"data"}`. Structured arrays (kind b"V") stay maps.
    `large`: placeholders for array data and the slices of the message they stand for."""
    nd = obj.get(b"nd")
    if nd is None or b"data" not in obj or obj.get(b"kind", b"") != b"":
        return obj
    try:
        dtype = np.dtype(obj[b"type"])
        data = obj[b"data"]
        data = large.pop(data, data)
        if nd is True:
            return np.frombuffer(data, dtype).reshape(obj[b"shape"])
        return np.frombuffer(data, dtype)[0]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"msgpack-numpy array {obj.get(b'type')} {obj.get(b'shape')} does "
                            f"not fit its data ({exc})") from None


class Train:
    """One decoded train: per source its metadata, data and arrays (name -> array)."""

    def __init__(self, parts: list[Any]) -> None:
        self.meta: dict[str, dict] = {}
        self.data: dict[str, dict] = {}
        self.arrays: dict[str, dict[str, np.ndarray]] = {}
        if len(parts) == 1:
            self._v1(parts[0])
        elif len(parts) % 2:
            raise ProtocolError(f"{len(parts)} message parts: protocol 2.2 has header/data pairs")
        else:
            self._v22(parts)
        if not self.meta:
            raise ProtocolError("no source in the message")

    def _v1(self, part: Any) -> None:
        body = _unpack_v1(memoryview(part))
        if not isinstance(body, dict):
            raise ProtocolError("protocol 1.0 message is not a map of sources")
        for source, values in body.items():
            if not isinstance(values, dict):
                raise ProtocolError(f"source {source!r} is not a map")
            self.meta[source] = values.get("metadata", {})
            self.data[source] = {k: v for k, v in values.items()
                                 if k != "metadata" and not isinstance(v, np.ndarray)}
            self.arrays[source] = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}

    def _v22(self, parts: list[Any]) -> None:
        for head_part, body in zip(parts[::2], parts[1::2], strict=True):
            head = _unpack(memoryview(head_part))
            if not isinstance(head, dict) or "source" not in head:
                raise ProtocolError("a header part is not a map with a source")
            source, content = head["source"], head.get("content")
            if content == "msgpack":
                self.meta[source] = head.get("metadata", {})
                data = _unpack(memoryview(body))
                self.data[source] = data if isinstance(data, dict) else {}
                self.arrays.setdefault(source, {})
            elif content == "array":
                try:
                    array = np.frombuffer(body, np.dtype(head["dtype"])).reshape(head["shape"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise ProtocolError(f"source {source!r} array {head.get('path')!r}: "
                                        f"{head.get('dtype')} {head.get('shape')} does not fit "
                                        f"its {memoryview(body).nbytes} bytes ({exc})") from None
                self.arrays.setdefault(source, {})[head.get("path", "?")] = array
            else:
                raise ProtocolError(f"unknown content {content!r} for source {source!r}")

    def train_id(self, source: str) -> int:
        tid = self.meta.get(source, {}).get("timestamp.tid")
        if not isinstance(tid, int):
            raise ProtocolError(f"source {source!r} has no integer timestamp.tid")
        return tid

    def timestamp_ns(self, source: str) -> int | None:
        meta = self.meta.get(source, {})
        try:
            return int(meta["timestamp.sec"]) * 1_000_000_000 + int(meta["timestamp.frac"]) // (
                10 ** 9)
        except (KeyError, TypeError, ValueError):
            return None


class KaraboOrigin(ReceivedOrigin):
    protocol = "karabo"

    def __init__(self, address: str, options: OriginOptions) -> None:
        # Read before the base makes the socket: the pattern decides its type, and a bad
        # value must fail with nothing to close. A pattern is a word (PULL as well as pull).
        chosen = split_options(address)[1]
        self.pattern = chosen.get("pattern", "req").lower()
        if self.pattern not in PATTERNS:
            raise ConfigError(f"karabo: pattern={chosen['pattern']!r}: use req, pull or sub")
        self.socket_type = PATTERNS[self.pattern]
        trains = chosen.get("trains", str(options.frames))
        try:
            self.trains = int(trains)
        except ValueError:
            self.trains = 0
        if self.trains < 1:
            raise ConfigError(f"karabo: trains={trains!r}: use a whole number > 0 (the trains "
                              "the run takes), e.g. ?trains=1000")
        super().__init__(address, options, known=("pattern", "source", "path", "trains"))
        self.asked = False
        if self.pattern == "sub":
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.pattern == "req":  # a lost reply must not wedge the socket: ask again
            self.sock.setsockopt(zmq.REQ_RELAXED, 1)
            self.sock.setsockopt(zmq.REQ_CORRELATE, 1)
        try:
            first = self.wait_for("train", self._first_train)
            self.pending.append(first)
        except BaseException:
            self.close()
            raise

    def recv(self, timeout_ms: int) -> list[zmq.Frame] | None:
        if self.pattern == "req" and not self.asked:
            self.sock.send(b"next")
            self.asked = True
        parts = super().recv(timeout_ms)
        if parts is not None:
            self.asked = False
        return parts

    def _first_train(self, parts: list[zmq.Frame]) -> bool:
        try:
            train = Train([p.buffer for p in parts])
        except ProtocolError as exc:
            raise ProtocolFault("undecodable", f"message of {len(parts)} parts: {exc}") from None
        source = self.opts.get("source") or next(
            (s for s, arrays in train.arrays.items() if any(a.ndim >= 2 for a in arrays.values())),
            next(iter(train.meta)))
        arrays = train.arrays.get(source, {})
        path = self.opts.get("path") or ("image.data" if "image.data" in arrays else next(
            (k for k, a in arrays.items() if a.ndim >= 2), None))
        if path not in arrays:
            raise ProtocolFault("invalid", f"train has no array {path!r} in source {source!r} "
                                f"(sources: {sorted(train.arrays)}; choose with ?source=&path=)")
        self.source, self.path = source, path
        array = arrays[path]
        self.shape, self.dtype = array.shape, array.dtype.newbyteorder("=")
        self.first_id = train.train_id(source)
        self.sources = sorted(train.meta)
        self.first_data = {k: v for k, v in train.data.get(source, {}).items()
                           if isinstance(v, (int, float, str, bool))}
        return True

    def metadata(self) -> dict[str, Any]:
        return {"source": f"karabo+{self.address}", "protocol": "karabo-bridge",
                "pattern": self.pattern, "karabo_source": self.source, "karabo_path": self.path,
                "karabo_sources": self.sources, "first_train_data": self.first_data,
                "detector": {"description": f"karabo-bridge {self.source} {self.path}"}}

    def complete(self) -> bool:
        return self.sent + len(self.missing) >= self.trains

    def silent(self) -> SeriesOver:
        """The bridge has no end message: silence ends the run, and the trains still due (the
        ones after the last, as the bridge numbers them consecutively) are recorded missing."""
        self.errors["silent_end"] += 1
        due = self.trains - self.sent - len(self.missing)
        for tid in range(self.highest + 1, self.highest + 1 + max(due, 0)):
            self.missing[tid] = (f"karabo: train {tid} not delivered: the bridge went silent "
                                 f"for {self.timeout_s:.1f} s")
        return SeriesOver("not received: the bridge went silent")

    def handle(self, parts: list[zmq.Frame], out: FrameOutput, ctl: RunControl) -> None:
        try:
            train = Train([p.buffer for p in parts])
            tid = train.train_id(self.source) if self.source in train.meta else None
        except ProtocolError as exc:
            raise ProtocolFault("undecodable", f"message of {len(parts)} parts: {exc}") from None
        if tid is None:
            raise ProtocolFault("other_source", f"train without source {self.source!r}")
        where = f"train {tid}"
        if tid < self.first_id:
            raise ProtocolFault("out_of_range", f"{where} is older than the run's first train "
                                f"{self.first_id}: ignored")
        if tid in self.received:
            raise ProtocolFault("duplicate", f"{where} arrived twice; the first is kept")
        array = train.arrays.get(self.source, {}).get(self.path)
        if array is None or array.shape != tuple(self.shape) or \
                array.dtype.newbyteorder("=") != self.dtype:
            got = "none" if array is None else f"{list(array.shape)} {array.dtype}"
            raise ProtocolFault("wrong_size", f"{where}: {self.path} is {got}, the run has "
                                f"{list(self.shape)} {self.dtype}", tid)
        for skipped in range(max(self.highest + 1, self.first_id), tid):
            if skipped not in self.received and skipped not in self.missing:
                self.missing[skipped] = f"karabo: train {skipped} not delivered by the bridge"
        self.deliver(out, ctl, tid, array, train.timestamp_ns(self.source))


def _warm() -> None:
    """Compile (or load from the cache) the value walk now, at import, never on a train."""
    _large_bins(np.frombuffer(msgpack.packb({"a": b"x" * 8}), np.uint8), 4, _where)


_warm()
