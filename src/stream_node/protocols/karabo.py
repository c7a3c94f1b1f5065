"""European XFEL karabo-bridge (`karabo+tcp://HOST:PORT`), as the `karabo_bridge` package
serialises it.

A message is one train. Protocol 2.2: a multipart message of (header, data) pairs; per source a
msgpack header `{"source", "content": "msgpack", "metadata": {..., "timestamp.tid"}}` with the
source's non-array data as a msgpack map, then per array a header `{"source", "content": "array",
"path", "dtype", "shape"}` and the raw array bytes (taken here without a copy). Protocol 1.0: one
msgpack part, a map of sources, each with its metadata under "metadata" and its arrays inline in
msgpack-numpy's encoding (byte-string keys; msgpack hands the array bytes over as a copy).

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

from typing import Any

import msgpack
import numpy as np
import zmq

from stream_node.endpoints import FrameOutput
from stream_node.errors import ConfigError, ProtocolError
from stream_node.origins import OriginOptions, RunControl
from stream_node.protocols.received import ProtocolFault, ReceivedOrigin, SeriesOver

PATTERNS = {"req": zmq.REQ, "pull": zmq.PULL, "sub": zmq.SUB}


def _unpack(data: Any) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, object_hook=_nd)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable msgpack ({exc})") from None


def _nd(obj: dict) -> Any:
    """msgpack-numpy's encoding (protocol 1.0): an array is a map with byte-string keys
    `{b"nd": True, b"type": "<u2", b"kind": b"", b"shape": [...], b"data": bytes}`, a numpy
    scalar `{b"nd": False, b"type", b"data"}`. Structured arrays (kind b"V") stay maps."""
    nd = obj.get(b"nd")
    if nd is None or b"data" not in obj or obj.get(b"kind", b"") != b"":
        return obj
    try:
        dtype = np.dtype(obj[b"type"])
        if nd is True:
            return np.frombuffer(obj[b"data"], dtype).reshape(obj[b"shape"])
        return np.frombuffer(obj[b"data"], dtype)[0]
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
        body = _unpack(memoryview(part))
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
        pattern = address.partition("?")[2]
        chosen = dict(kv.split("=", 1) for kv in pattern.split("&") if "=" in kv)
        if chosen.get("pattern", "req") not in PATTERNS:
            raise ConfigError(f"karabo: pattern={chosen['pattern']!r}: use req, pull or sub")
        self.pattern = chosen.get("pattern", "req")
        self.socket_type = PATTERNS[self.pattern]
        super().__init__(address, options, known=("pattern", "source", "path", "trains"))
        self.trains = int(self.opts.get("trains", options.frames))
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
        self.errors["silent_end"] += 1  # the bridge has no end message: silence ends the run
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
