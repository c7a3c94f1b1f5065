"""The run contract: what START tells every stage about a run, typed, in one place.

The source writes it (`RunContract.to_wire`), workers and the collector read it
(`RunContract.from_wire`); nobody looks a key up in START's body by hand. The wire form is the
JSON object START has always carried, so a file's stored `start` attribute reads as before.
A body that lacks a field the run needs, or gives one of the wrong type, is a `ProtocolError`
naming the field: a foreign or damaged START never half-configures a stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from stream_node.model.errors import ConfigError, ProtocolError
from stream_node.model.frame import Encoding, FrameHeader, dtype_code
from stream_node.model.instrument import Instrument

# Frame ids of a run whose length nobody said (a detector stream without its count): an id
# more than this beyond the highest one so far is a protocol error, not a reason to allocate
# records, chunks and ledger entries for every id in between. 2**20 matches the UDP receiver's
# SN_UDP_MAX_JUMP: at 2 kHz, over eight minutes of frames lost in a row.
MAX_ID_JUMP = 1 << 20


def frame_nbytes(shape: Sequence[int], dtype: np.dtype | str | type) -> int:
    """Bytes of one raw frame; Python integers, so no shape can overflow the product."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class FrameGeometry:
    """Shape, dtype and encoding of the frames on one hop."""

    shape: tuple[int, ...]
    dtype: np.dtype
    encoding: Encoding = Encoding.RAW

    @cached_property  # asked of every frame the collector admits: computed once
    def nbytes(self) -> int:
        """Bytes of one raw frame (a compressed one is smaller, or a few bytes larger)."""
        return frame_nbytes(self.shape, self.dtype)

    @cached_property
    def dtype_code(self) -> int:
        """The frame header's code for the dtype."""
        return dtype_code(self.dtype)

    @property
    def largest_payload(self) -> int:
        """The most bytes a frame's payload can have: a compressed chunk never grows past
        the raw frame by more than bitshuffle/LZ4's block overhead and its header."""
        raw = self.nbytes
        return raw if self.encoding == Encoding.RAW else raw + raw // 1024 + 64

    def to_wire(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(self.dtype),
                "encoding": self.encoding.name.lower()}

    @classmethod
    def from_wire(cls, body: Any, where: str) -> FrameGeometry:
        if not isinstance(body, Mapping):
            raise ProtocolError(f"START: {where}: a {type(body).__name__}, not an object")
        shape = _field(body, "shape", where)
        dtype = _field(body, "dtype", where)
        encoding = body.get("encoding", "raw")
        try:
            if not isinstance(shape, (list, tuple)) or not isinstance(dtype, str):
                raise TypeError("shape is a list of integers, dtype a name")
            geometry = cls(tuple(int(n) for n in shape), np.dtype(dtype),
                           Encoding[str(encoding).upper()])
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"START: {where}: bad shape/dtype/encoding "
                                f"{shape!r} {dtype!r} {encoding!r}: {exc}") from None
        if not geometry.shape or min(geometry.shape) < 1:
            raise ProtocolError(f"START: {where}: shape {geometry.shape} has no pixels")
        return geometry


@dataclass(frozen=True)
class Dispatch:
    """How the source hands frames to workers: "push" (round robin) or "credit" (reliable)."""

    mode: str = "push"
    credit: int = 4  # frames a worker may hold at once in credit mode

    @property
    def reliable(self) -> bool:
        return self.mode == "credit"

    def to_wire(self) -> dict[str, Any]:
        return {"mode": "credit", "credit": self.credit} if self.reliable else {"mode": "push"}


@dataclass(frozen=True)
class RunContract:
    """Everything a stage must know about a run before its first frame.

    `output` is what the collector writes (the kernels' output, compressed as `compression`
    says); `input` is what the source hands to the workers. `origin` holds what the origin says
    about itself beyond the detector (its endpoint, seed, ...), kept for the file.
    """

    output: FrameGeometry
    input: FrameGeometry
    frames: int | None = None  # None: the detector says at the end
    first_frame_id: int = 0
    kernels: tuple[Mapping[str, Any], ...] = ()
    compression: str = "none"  # "bslz4": workers compress (or frames pass through compressed)
    dispatch: Dispatch = field(default_factory=Dispatch)
    per_frame_columns: tuple[str, ...] = ()
    detector: Mapping[str, Any] | None = None
    instrument: Instrument | None = None  # the geometry, for the file's NXmx groups
    rate: float = 0.0
    workers: int = 0
    software_version: str = ""
    origin: Mapping[str, Any] = field(default_factory=dict)
    checksum: bool = False  # payloads carry their CRC-32C; stages that make one seal it
    file: str | None = None  # a serving node's name for this run's file (in the collector's dir)

    @cached_property  # asked of every frame the collector admits
    def encoding(self) -> Encoding:
        """How the frames the collector receives are encoded."""
        return Encoding.BSLZ4 if self.compression == "bslz4" else Encoding.RAW

    @property
    def largest_frame_bytes(self) -> int:
        """The largest raw frame a worker handles: what it receives or what it sends on."""
        return max(self.input.nbytes, self.output.nbytes)

    def frame_problem(self, header: FrameHeader, nbytes: int,
                      highest: int = -1) -> str | None:
        """Why a frame admitted on a link (see `stream_node.stages.admission`) does not belong
        in this run's file, or None when it does; `highest` is the highest index written so
        far (a run of unknown length takes ids up to MAX_ID_JUMP beyond it)."""
        out = self.output
        if header.shape != out.shape or header.dtype_code != out.dtype_code:
            return (f"shape {header.shape} dtype code {header.dtype_code} differ from the run's "
                    f"{out.shape} {out.dtype}")
        if header.encoding != self.encoding:
            return f"encoding {header.encoding} differs from the run's ({self.encoding})"
        if self.encoding == Encoding.RAW and nbytes != out.nbytes:
            return f"payload has {nbytes} bytes, a raw frame of the run has {out.nbytes}"
        index = header.frame_id - self.first_frame_id
        if index < 0 or (self.frames is not None and index >= self.frames):
            last = "" if self.frames is None else self.first_frame_id + self.frames - 1
            return f"id outside the run's ids {self.first_frame_id}..{last}"
        if self.frames is None and index > max(highest, 0) + MAX_ID_JUMP:
            return (f"id {header.frame_id} jumps more than {MAX_ID_JUMP} beyond the highest "
                    "written so far")
        return None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "shape": list(self.output.shape), "dtype": str(self.output.dtype),
            "input": self.input.to_wire(), "kernels": [dict(k) for k in self.kernels],
            "frames": -1 if self.frames is None else self.frames,
            "first_frame_id": self.first_frame_id, **self.origin,
            "per_frame_columns": list(self.per_frame_columns), "rate": self.rate,
            "workers": self.workers, "software_version": self.software_version,
            "dispatch": self.dispatch.to_wire(), "compression": self.compression,
            "checksum": self.checksum,
        }
        if self.file is not None:
            body["file"] = self.file
        if self.detector is not None:
            body["detector"] = dict(self.detector)
        if self.instrument is not None:
            body["instrument"] = self.instrument.to_wire()
        return body

    @classmethod
    def from_wire(cls, body: Any) -> RunContract:
        if not isinstance(body, Mapping):
            raise ProtocolError(f"START: the body is a {type(body).__name__}, not an object")
        output = FrameGeometry.from_wire(body, "output")
        inp = FrameGeometry.from_wire(body["input"], "input") if "input" in body else output
        dispatch = _typed(body, "dispatch", dict, {})
        frames = _typed(body, "frames", int, -1)
        instrument = _typed(body, "instrument", dict, None)
        try:
            geometry = None if instrument is None else Instrument.from_wire(
                instrument, "START: instrument")
        except ConfigError as exc:
            raise ProtocolError(str(exc)) from None
        contract = cls(
            output=output, input=inp, frames=None if frames < 0 else frames,
            first_frame_id=_typed(body, "first_frame_id", int, 0),
            kernels=tuple(_typed(body, "kernels", _kernel_list, ())),
            compression=_typed(body, "compression", str, "none"),
            dispatch=Dispatch(_typed(dispatch, "dispatch.mode", str, "push"),
                              _typed(dispatch, "dispatch.credit", int, 4)),
            per_frame_columns=_typed(body, "per_frame_columns", _names, ()),
            detector=_typed(body, "detector", dict, None), instrument=geometry,
            rate=_typed(body, "rate", float, 0.0), workers=_typed(body, "workers", int, 0),
            software_version=_typed(body, "software_version", str, ""),
            checksum=_typed(body, "checksum", _boolean, False),
            file=_typed(body, "file", str, None),
            origin={k: v for k, v in body.items() if k not in _CONTRACT_KEYS})
        if contract.compression not in ("none", "bslz4"):
            raise ProtocolError(f"START: unknown compression {contract.compression!r}")
        if contract.dispatch.mode not in ("push", "credit") or contract.dispatch.credit < 1:
            raise ProtocolError(f"START: bad dispatch {dict(dispatch)!r}: push, or credit with "
                                "a credit >= 1")
        return contract


_CONTRACT_KEYS = frozenset({
    "shape", "dtype", "input", "kernels", "frames", "first_frame_id", "per_frame_columns",
    "rate", "workers", "software_version", "dispatch", "compression", "detector",
    "instrument", "checksum", "file"})


def _field(body: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in body:
        raise ProtocolError(f"START: {where}: no {key!r}")
    return body[key]


def _typed(body: Mapping[str, Any], key: str, kind: Any, default: Any) -> Any:
    """body[key] converted by `kind` (a type or a checking function); a START whose field cannot
    be is refused naming the field. Booleans are no numbers here: JSON keeps them apart."""
    name = key.rpartition(".")[2]
    value = body.get(name)
    if value is None:
        return default
    try:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in (int, float) and not number:
            raise TypeError(f"{value!r} is not a number")
        if kind in (dict, str) and not isinstance(value, kind):
            raise TypeError(f"{value!r} is not a{'n object' if kind is dict else ' string'}")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"START: {key}: {exc}") from None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value


def _kernel_list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(k, dict) for k in value):
        raise TypeError(f"{value!r} is not a list of kernel objects")
    return [dict(k) for k in value]


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise TypeError(f"{value!r} is not a list of names")
    return tuple(value)
