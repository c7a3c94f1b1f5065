"""DECTRIS stream v2 (`dectris2+tcp://DCU:31001`): one CBOR message per ZeroMQ message, PUSH/PULL.

Messages are CBOR maps (RFC 8949, usually behind the self-describe tag 55799) whose first key is
`type`: `start` (series configuration), `image` (one exposure, every channel), `end`. Arrays are
RFC 8746 multi-dimensional arrays (tag 40: `[[y, x], typed array]`, row-major) of typed arrays
(tags 64-87 over a byte string); a compressed byte string is DECTRIS tag 56500
`["bslz4", element size, chunk]` (bitshuffle/LZ4, HDF5 filter-32008 framing: passed through to
the file untouched) or `["lz4", 0, data]` (HDF5 LZ4 filter framing: decompressed here).
Decoding is cbor2's; this module gives the tags their meaning and keeps the pixel data where it
arrived: the byte strings of typed arrays and compressed data are slices of the ZeroMQ message,
not copies (see `decode`).

One channel becomes the run's frames (`?channel=NAME`, default the first of `channels`); the others
are counted, not stored. `image_id` becomes the frame id, `series_id` the run's `series_id`, the
rational start/stop/real times (seconds) the per-frame datasets `*_time_ns`. The start message
does not say the pixel type, so the origin reads the first image before START (bounded by the
silence timeout) and emits it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import cbor2
import numpy as np
import zmq
from numba import njit

from stream_node.links.base import FrameOutput
from stream_node.model.errors import ProtocolError
from stream_node.model.frame import Encoding
from stream_node.model.instrument import Instrument
from stream_node.origins.base import OriginOptions, RunControl
from stream_node.origins.chunks import lz4_hdf5, packed_array
from stream_node.origins.dectris import header_instrument, nxmx_fields, nxmx_table
from stream_node.origins.received import (
    ProtocolFault,
    ReceivedOrigin,
    SeriesOver,
    swap_out,
)

MULTI_DIM, COMPRESSED = 40, 56500
TIMES = (("start_time", "start_time_ns"), ("stop_time", "stop_time_ns"),
         ("real_time", "real_time_ns"))
NXMX2 = nxmx_table(2)


def typed_dtype(tag: int) -> np.dtype | None:
    """The numpy dtype of an RFC 8746 typed-array tag (64..87), None for others."""
    if not 64 <= tag <= 87 or tag == 76:  # 76 is reserved
        return None
    floating, signed, little, size = (tag >> 4) & 1, (tag >> 3) & 1, (tag >> 2) & 1, tag & 3
    if floating:
        kind, nbytes = "f", 2 << size
    else:
        kind, nbytes = ("i" if signed else "u"), 1 << size
    if tag == 68:  # uint8, clamped arithmetic: same bytes
        return np.dtype("u1")
    return np.dtype(("<" if little else ">") + kind + str(nbytes))


@dataclass
class Compressed:
    algorithm: str
    elem_size: int
    data: Any  # bytes, or a memoryview slice of the message


@dataclass
class Typed:
    dtype: np.dtype
    data: Any  # bytes, a memoryview slice of the message, or Compressed


@dataclass
class MultiDim:
    shape: tuple[int, ...]
    array: Any  # Typed (or a plain CBOR array)


LARGE = 4096  # byte strings this long are sliced from the message, never copied
MAX_LARGE = 64  # at most this many per message are sliced; a message with more is copied


@njit(cache=True, nogil=True)
def _large_strings(buf: np.ndarray, threshold: int, out: np.ndarray) -> int:
    """Where the definite-length byte strings of at least `threshold` bytes lie in one CBOR item:
    rows (head offset, data offset, length) in `out`; returns how many, or a negative number if
    the item is cut short (-1), malformed (-2), nested too deep (-3) or has too many (-4).

    Only the heads are read (major type and length, RFC 8949 section 3): enough to step over
    every item. Decoding stays cbor2's; this only finds what it should not copy."""
    n = buf.shape[0]
    left = np.empty(64, np.int64)  # items still to read per open container; -1: indefinite
    depth, left[0], pos, found = 0, 1, 0, 0
    while depth >= 0:
        if left[depth] == 0:
            depth -= 1
            continue
        if pos >= n:
            return -1
        head = pos
        major, info = buf[pos] >> 5, buf[pos] & 31
        pos += 1
        if major == 7 and info == 31:  # "break": ends the innermost indefinite container
            if left[depth] != -1:
                return -2
            depth -= 1
            continue
        if left[depth] > 0:
            left[depth] -= 1
        indefinite = info == 31
        arg = np.int64(info)
        if 24 <= info < 28:
            size = 1 << (info - 24)
            if pos + size > n:
                return -1
            arg = np.int64(0)
            for k in range(size):  # a uint64 above 2**63 wraps negative: only lengths matter
                arg = (arg << 8) | np.int64(buf[pos + k])
            pos += size
        elif 28 <= info <= 30 or (indefinite and major in (0, 1, 6)):
            return -2
        if major in (0, 1, 7):
            continue
        if major != 6 and not indefinite and arg < 0:
            return -1  # a length beyond any message
        if major in (2, 3) and not indefinite:
            if major == 2 and arg >= threshold:
                if found == out.shape[0]:
                    return -4
                out[found, 0], out[found, 1], out[found, 2] = head, pos, arg
                found += 1
            pos += arg
            if pos > n:
                return -1
            continue
        if depth + 1 == left.shape[0]:
            return -3
        depth += 1
        if indefinite:
            left[depth] = -1  # indefinite string (its chunks), array or map
        elif major == 4:
            left[depth] = arg
        elif major == 5:
            left[depth] = 2 * arg
        else:  # a tag: one item follows
            left[depth] = 1
    return found


class _Slices(dict):
    """Placeholder -> the slice of the message it stands for; `used` those the hook took."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[bytes] = set()

    def take(self, value: Any) -> Any:
        if value in self:
            self.used.add(value)
            return self[value]
        return value


TYPED = {tag: dtype for tag in range(64, 88) if (dtype := typed_dtype(tag)) is not None}


def _tag_hook(large: _Slices, first: Any, second: Any) -> Any:
    """cbor2's tag hook: called as (decoder, tag) by cbor2 5 and (tag, immutable) by cbor2 6.
    `large` maps the placeholders `decode` put in the message to the slices they stand for."""
    tag = first if isinstance(first, cbor2.CBORTag) else second
    if tag.tag == COMPRESSED:
        value = tag.value
        if (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[2], bytes)):
            return Compressed(value[0], int(value[1]), large.take(value[2]))
        raise ValueError("tag 56500 is not [algorithm, modifier, bytes]")
    dtype = TYPED.get(tag.tag)
    if dtype is not None:
        value = tag.value
        if isinstance(value, bytes):
            return Typed(dtype, large.take(value))
        if not isinstance(value, Compressed):
            raise ValueError(f"typed array tag {tag.tag} over a non-byte string")
        return Typed(dtype, value)
    if tag.tag == MULTI_DIM:
        value = tag.value
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and isinstance(value[0], (list, tuple))):
            raise ValueError("tag 40 is not [dimensions, array]")
        return MultiDim(tuple(int(n) for n in value[0]), value[1])
    return tag


_where = np.empty((MAX_LARGE, 3), np.int64)  # `decode`'s scratch (one origin per process)


def decode(message: Any) -> dict:
    """A message as cbor2 decodes it, except that the byte strings of typed arrays and
    compressed data are read-only slices of `message` (no copy: cbor2 copies every byte string
    it decodes). Each large byte string is swapped for a short placeholder in a small copy of
    the message, which cbor2 decodes; the tag hook swaps the slices back in. A large byte string
    outside those tags (user data) makes the message go to cbor2 whole instead."""
    buf = np.frombuffer(message, np.uint8)
    count = _large_strings(buf, LARGE, _where)
    large = _Slices()
    small: Any = message
    if count > 0:
        small, slices = swap_out(buf, _where, count, b"\x4b")  # byte string of 11 bytes
        large.update(slices)
    try:
        body = cbor2.loads(small, tag_hook=partial(_tag_hook, large))
        if len(large.used) != len(large):  # a placeholder outside typed arrays: no slicing
            body = cbor2.loads(message, tag_hook=partial(_tag_hook, _Slices()))
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise ProtocolFault("undecodable", f"undecodable CBOR message ({exc})") from None
    if isinstance(body, cbor2.CBORTag) and body.tag == 55799:  # self-described CBOR
        body = body.value
    if not hasattr(body, "get") or not isinstance(body.get("type"), str):
        raise ProtocolFault("unknown_htype", "message is not a map with a text 'type'")
    return body


def plain_array(value: Any, what: str) -> np.ndarray:
    """A small array from the start message (flatfield, mask, table), decompressed."""
    shape = None
    if isinstance(value, MultiDim):
        shape, value = value.shape, value.array
    if not isinstance(value, Typed):
        raise ProtocolError(f"{what} is not a typed array")
    data = value.data
    if isinstance(data, Compressed):
        from stream_node.kernels.compression import decompress

        if data.algorithm != "bslz4":
            raise ProtocolError(f"{what}: unsupported compression {data.algorithm!r}")
        n = int.from_bytes(data.data[:8], "big") // value.dtype.itemsize
        return decompress(data.data, shape or (n,), value.dtype)
    array = np.frombuffer(data, value.dtype)
    return array.reshape(shape) if shape else array


class Stream2Origin(ReceivedOrigin):
    protocol = "dectris2"
    columns = ("start_time_ns", "stop_time_ns", "real_time_ns")

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(address, options, known=("channel",))
        try:
            self.start = self.wait_for("start message", self._start)
            first = self.wait_for("first image (its pixel type and compression)",
                                  self._first_image)
            self.pending.append(first)
        except BaseException:
            self.close()
            raise

    def _start(self, parts: list[zmq.Frame]) -> bool:
        body = decode(parts[0].buffer)
        kind = body["type"]
        if kind == "end" and self.ended_before(body.get("series_id")):
            return False
        if kind in ("image", "end"):
            what = f"image {body.get('image_id')}" if kind == "image" else "series end"
            raise ProtocolFault("out_of_sequence", f"{kind} message ({what}) before any start "
                                "message: ignored")
        if kind != "start":
            raise ProtocolFault("unknown_htype", f"unknown message type {kind!r}: ignored")
        self.body = body
        self.series_id = int(body.get("series_id", 0))
        channels = list(body.get("channels") or [])
        self.channel = self.opts.get("channel") or (channels[0] if channels else None)
        self.channels = channels
        n = body.get("number_of_images")
        self.count = int(n) if isinstance(n, int) and n > 0 else None
        return True

    def _first_image(self, parts: list[zmq.Frame]) -> bool:
        body = decode(parts[0].buffer)
        if body["type"] == "start":
            raise ProtocolFault("out_of_sequence", "a second start message before any image")
        if body["type"] != "image":
            raise ProtocolFault("unknown_htype", f"{body['type']!r} while waiting for the first "
                                "image")
        array = self._channel_array(body, body.get("image_id"))
        if not isinstance(array.array, Typed) or len(array.shape) != 2:
            raise ProtocolFault("invalid", "image data is not a 2-D typed array")
        self.shape, self.dtype = array.shape, array.array.dtype.newbyteorder("=")
        if array.array.dtype.byteorder == ">":
            raise ProtocolFault("invalid", "big-endian image data is not supported")
        data = array.array.data
        bslz4 = isinstance(data, Compressed) and data.algorithm == "bslz4"
        self.encoding = Encoding.BSLZ4 if bslz4 and not self.decompress else Encoding.RAW
        return True

    def _channel_array(self, body: Any, image_id: Any) -> MultiDim:
        data = body.get("data")
        if not hasattr(data, "get") or self.channel not in data:
            frame_id = image_id if isinstance(image_id, int) else None
            raise ProtocolFault("invalid", f"image {image_id}: no data for channel "
                                f"{self.channel!r}", frame_id)
        array = data[self.channel]
        if not isinstance(array, MultiDim):
            raise ProtocolFault("invalid", f"image {image_id}: channel {self.channel!r} is not a "
                                "multi-dimensional array (tag 40)", image_id)
        return array

    def instrument(self) -> Instrument | None:
        body = self.body
        fields = nxmx_fields(body, NXMX2)
        translation = body.get("detector_translation")
        if isinstance(translation, (list, tuple)) and len(translation) == 3:
            fields["distance"] = translation[2]
        axes = {}
        for name, axis in (body.get("goniometer") or {}).items():
            if hasattr(axis, "get"):
                start, step = axis.get("start"), axis.get("increment")
                if isinstance(start, (int, float)) and isinstance(step, (int, float)):
                    axes[str(name)] = (float(start), float(step))
        return header_instrument(fields, axes)

    def metadata(self) -> dict[str, Any]:
        body = self.body
        detector = nxmx_fields(body, NXMX2)
        translation = body.get("detector_translation")
        if isinstance(translation, (list, tuple)) and len(translation) == 3:
            detector["distance"] = {"value": translation[2], "units": "m"}
        energies = body.get("threshold_energy")
        if hasattr(energies, "get") and self.channel in energies:
            detector["threshold_energy"] = {"value": energies[self.channel], "units": "eV"}
        for key, name in (("flatfield", "flatfield"), ("pixel_mask", "pixel_mask")):
            arrays = body.get(key)
            if hasattr(arrays, "get") and self.channel in arrays:
                try:
                    detector[name] = packed_array(plain_array(arrays[self.channel], key))
                except ProtocolError as exc:
                    self.fault(ProtocolFault("invalid", f"start message: {exc}"))
        table = body.get("countrate_correction_lookup_table")
        if table is not None:
            try:
                detector["countrate_correction_table"] = packed_array(
                    plain_array(table, "countrate_correction_lookup_table"))
            except ProtocolError as exc:
                self.fault(ProtocolFault("invalid", f"start message: {exc}"))
        config = {k: v for k, v in body.items()
                  if isinstance(v, (int, float, str, bool)) and k != "type"}
        return {"source": f"dectris2+{self.address}", "protocol": "DECTRIS stream v2 (CBOR)",
                "series_id": self.series_id, "series_unique_id": body.get("series_unique_id"),
                "channel": self.channel, "channels": self.channels,
                "detector_config": config, "detector": detector}

    def complete(self) -> bool:
        return self.count is not None and len(self.received) + len(self.missing) >= self.count

    def handle(self, parts: list[zmq.Frame], out: FrameOutput, ctl: RunControl) -> None:
        body = decode(parts[0].buffer)
        kind = body["type"]
        series = body.get("series_id")
        if kind == "image":
            self._image(body, out, ctl)
        elif kind == "end":
            if series != self.series_id:
                raise ProtocolFault("foreign_series", f"end of series {series} during series "
                                    f"{self.series_id}: ignored")
            raise SeriesOver(None)
        elif kind == "start":
            if series == self.series_id:
                raise ProtocolFault("out_of_sequence", f"a second start message of series "
                                    f"{series} mid-series (after {self.sent} frames): ignored")
            self.fault(ProtocolFault("out_of_sequence", f"start of series {series} before the "
                                     f"end of series {self.series_id}: series ended"))
            raise SeriesOver(f"not received: the detector began series {series} before ending "
                             f"series {self.series_id}", carry=parts)
        else:
            raise ProtocolFault("unknown_htype", f"unknown message type {kind!r}: ignored")

    def _image(self, body: Any, out: FrameOutput, ctl: RunControl) -> None:
        frame_id = body.get("image_id")
        where = f"image {frame_id}"
        if not isinstance(frame_id, int):
            raise ProtocolFault("invalid", "image message without an integer image_id")
        if body.get("series_id") != self.series_id:
            raise ProtocolFault("foreign_series", f"{where} of series {body.get('series_id')} "
                                f"during series {self.series_id}: ignored")
        self.check_id(frame_id, where)
        array = self._channel_array(body, frame_id)
        typed = array.array
        if array.shape != self.shape or not isinstance(typed, Typed) or typed.dtype != self.dtype:
            got = typed.dtype if isinstance(typed, Typed) else type(typed).__name__
            raise ProtocolFault("wrong_size", f"{where}: array {list(array.shape)} {got}, the "
                                f"series has {list(self.shape)} {self.dtype}", frame_id)
        data = typed.data
        if isinstance(data, Compressed):
            if data.algorithm == "bslz4":
                if data.elem_size != self.dtype.itemsize:
                    raise ProtocolFault("invalid", f"{where}: bslz4 element size "
                                        f"{data.elem_size}, pixels have {self.dtype.itemsize}",
                                        frame_id)
                payload = self.payload("bslz4", data.data, frame_id, where)
            elif data.algorithm == "lz4":
                try:
                    raw = lz4_hdf5(data.data, self.frame_nbytes)
                except ProtocolError as exc:
                    raise ProtocolFault("corrupt", f"{where}: {exc}", frame_id) from None
                payload = self.payload("raw", raw, frame_id, where)
            else:
                raise ProtocolFault("invalid", f"{where}: unsupported compression "
                                    f"{data.algorithm!r}", frame_id)
        else:
            payload = self.payload("raw", data, frame_id, where)
        others = len(body["data"]) - 1
        if others:
            self.errors["other_channels_not_stored"] += others
        for name, column in TIMES:
            value = body.get(name)
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[1]:
                self.record(column, frame_id, value[0] * 1_000_000_000 // value[1])
        self.deliver(out, ctl, frame_id, payload)


def _warm() -> None:
    """Compile (or load from the cache) the head walk now, at import, never on a frame."""
    _large_strings(np.frombuffer(cbor2.dumps({"a": b"x" * 8}), np.uint8), 4, _where)


_warm()
