"""Where a run's frames come from, named by the source's `--from` endpoint.

An origin knows the run's frame geometry before the run starts and then emits every frame of the
run into the source's output (a ring or a PUSH fan-out). Two kinds exist:

- generated origins (`synthetic:`, `file://PATH`) compute a frame by its id straight into the
  buffer the output reserved (a ring slot or a new send buffer): the frame is written once;
- received origins (detector protocols, the UDP receiver) get frames they cannot choose and hand
  each on as it came; what the detector never delivered they report as missing, with why, so
  the collector's ledger names it instead of waiting for it.

Each kind registers its endpoint scheme in `ORIGINS`; the source never branches on a scheme.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stream_node.endpoints import FrameOutput
from stream_node.errors import ConfigError
from stream_node.frame import Encoding, frame_header
from stream_node.replay import FILE, FileReplay
from stream_node.synthetic import SyntheticDetector


@dataclass
class Stall:
    """When a frame began to wait for an output that could not take it."""

    since: float = field(default_factory=time.monotonic)


class RunControl(Protocol):
    """What an origin may ask of the source while it emits: keep the control plane alive."""

    def poll(self) -> None:
        """Answer control messages now; raises if the run was aborted or the collector lost."""

    def pace(self, due: float) -> None:
        """Wait until monotonic time `due` while answering control messages."""

    def stalled(self, stall: Stall) -> None:
        """The output could not take a frame: count it; raises once no consumer lives."""

    @property
    def stopping(self) -> bool:
        """The run is being ended early on purpose (a signal): hand on no further frame."""


@dataclass
class Emitted:
    """What an origin did in a run; END carries it to the collector."""

    sent: int = 0
    last_id: int = -1  # the run's last frame id (planned or observed)
    missing: dict[int, str] = field(default_factory=dict)  # ids that will never come, and why
    partial: dict[int, bytes] = field(default_factory=dict)  # id -> bitmap of missing parts
    per_frame: dict[str, dict[int, int]] = field(default_factory=dict)  # column -> id -> value
    counters: dict[str, int] = field(default_factory=dict)  # origin-specific (packets lost...)


@dataclass
class OriginOptions:
    """The source's settings an origin may use (others ignore them)."""

    frames: int = 1000
    shape: tuple[int, ...] = (512, 1024)
    dtype: str = "uint16"
    seed: int = 0
    rate: float = 0.0
    recorded_rate: bool = False
    timeout_s: float = 10.0  # received origins: how long the detector may stay silent


class Origin(ABC):
    """One run's frames. `shape`, `dtype`, `first_id` and `count` are known before START."""

    shape: tuple[int, ...]
    dtype: np.dtype
    first_id: int = 0
    count: int | None = None  # None: the detector says at the end
    encoding: Encoding = Encoding.RAW  # BSLZ4: frames arrive compressed and pass through
    columns: tuple[str, ...] = ()  # names of the per-frame values `Emitted.per_frame` carries
    needs_ring = False  # True: frames are received straight into slots (data must be ring://)
    series_id: int | None = None  # the detector's own id of this run: it becomes the run id

    @property
    def frame_bytes(self) -> int:
        """The largest payload a frame can have (a compressed one is never larger: LZ4 blocks
        that do not shrink are stored raw, plus a 12-byte header and 4 bytes per block)."""
        raw = int(np.prod(self.shape)) * self.dtype.itemsize
        return raw if self.encoding == Encoding.RAW else raw + raw // 1024 + 64

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """What START says about where the frames come from; "detector" goes to the NXmx
        detector group of the file."""

    def prepare(self, out: FrameOutput, run_id: int) -> None:  # noqa: B027  (most need nothing)
        """Called once the output exists and before the source says it is ready: an origin
        that listens (binds sockets) does it here, so nothing a detector sends after the
        source's "ready" can be lost."""

    @abstractmethod
    def emit(self, out: FrameOutput, run_id: int, ctl: RunControl) -> Emitted:
        """Hand every frame of the run to `out`, then end it."""

    def close(self) -> None:  # noqa: B027  (most origins hold nothing)
        """Release what the origin holds (files, sockets, threads)."""


class GeneratedOrigin(Origin):
    """Frames computed by id into the output's own buffer: the frame is written exactly once."""

    def __init__(self, options: OriginOptions) -> None:
        self.options = options

    @abstractmethod
    def ids(self) -> Iterator[int]: ...

    @abstractmethod
    def fill(self, frame_id: int, out: np.ndarray) -> None: ...

    def due_s(self, n: int, frame_id: int) -> float | None:
        """Seconds after the run's start when frame number n may leave (None: at once)."""
        return n / self.options.rate if self.options.rate > 0 else None

    def emit(self, out: FrameOutput, run_id: int, ctl: RunControl) -> Emitted:
        done = Emitted(last_id=self.first_id + (self.count or 0) - 1)
        t0 = next_check = time.monotonic()
        for n, frame_id in enumerate(self.ids()):
            due = self.due_s(n, frame_id)
            if due is not None:
                ctl.pace(t0 + due)
            if ctl.stopping:  # the run ends with the frames sent: END says which is last
                done.last_id = frame_id - 1
                break
            stall = Stall()
            while (buffer := out.reserve(self.shape, self.dtype, 100)) is None:
                ctl.stalled(stall)
            now = time.monotonic()
            if now >= next_check:
                ctl.poll()
                next_check = now + 0.1
            self.fill(frame_id, buffer)  # in place: a ring slot or a new send buffer
            header = frame_header(buffer, run_id, frame_id)
            while not out.commit(header, buffer):
                ctl.stalled(stall)
                out.reserve(self.shape, self.dtype, 100)  # wait until some worker can take it
            done.sent += 1
        out.end()
        return done


class SyntheticOrigin(GeneratedOrigin):
    """`synthetic:` — Poisson frames stamped with their id (see `SyntheticDetector`)."""

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(options)
        if address:
            raise ConfigError(f"synthetic:{address}: the synthetic origin takes no address")
        self.detector = SyntheticDetector(options.shape, options.dtype, options.seed)
        self.shape, self.dtype = self.detector.shape, self.detector.dtype
        self.count = options.frames

    def metadata(self) -> dict[str, Any]:
        return {"source": "synthetic:", "seed": self.options.seed,
                "detector": {"description": "stream-node synthetic detector"}}

    def ids(self) -> Iterator[int]:
        return iter(range(self.first_id, self.first_id + (self.count or 0)))

    def fill(self, frame_id: int, out: np.ndarray) -> None:
        self.detector.frame(frame_id, out=out)


class ReplayOrigin(GeneratedOrigin):
    """`file://PATH` — a written run, frames in id order; ids it lacks stay missing."""

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(options)
        self.replay = FileReplay(address)
        self.shape, self.dtype = self.replay.shape, self.replay.dtype
        self.first_id = self.replay.first_id
        total = self.replay.count
        self.count = min(options.frames, total) if options.frames else total

    def metadata(self) -> dict[str, Any]:
        return {"source": f"{FILE}{self.replay.path}", "replay_of_run_id": self.replay.run_id,
                "detector": {"description": f"replay of {self.replay.path}"}}

    def ids(self) -> Iterator[int]:
        return self.replay.ids(self.count)

    def due_s(self, n: int, frame_id: int) -> float | None:
        if self.options.recorded_rate:
            return self.replay.recorded_offset_s(frame_id)
        return super().due_s(n, frame_id)

    def fill(self, frame_id: int, out: np.ndarray) -> None:
        self.replay.frame(frame_id, out=out)

    def close(self) -> None:
        self.replay.close()


OriginFactory = Callable[[str, OriginOptions], Origin]

# scheme (what precedes "://" or ":") -> factory(address after the scheme, options)
ORIGINS: dict[str, OriginFactory] = {
    "synthetic": SyntheticOrigin,
    "file": ReplayOrigin,
}


def register_origin(scheme: str, factory: OriginFactory) -> None:
    ORIGINS[scheme] = factory


# Origins that live in their own modules register themselves when imported; a run imports
# only the one it names (the protocols pull in cbor2, lz4 and a Numba block walk).
PLUGINS = {"udp": "stream_node.udp", "dectris": "stream_node.protocols",
           "dectris2": "stream_node.protocols", "karabo": "stream_node.protocols"}


def open_origin(endpoint: str, options: OriginOptions) -> Origin:
    """The origin an endpoint names: `synthetic:`, `file://PATH`, `SCHEME://ADDRESS`, or
    `PROTOCOL+TRANSPORT://ADDRESS` (a protocol spoken over a ZeroMQ transport, e.g.
    `dectris+tcp://host:9999`; the factory gets `tcp://host:9999`)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, sep, rest = endpoint.partition(":")
    elif "+" in scheme:
        scheme, transport = scheme.split("+", 1)
        rest = f"{transport}://{rest}"
    if sep and scheme not in ORIGINS and scheme in PLUGINS:
        importlib.import_module(PLUGINS[scheme])
    factory = ORIGINS.get(scheme) if sep else None
    if factory is None:
        known = ", ".join(f"{s}://" if s != "synthetic" else "synthetic:"
                          for s in sorted({*ORIGINS, *PLUGINS}))
        raise ConfigError(f"unknown frame origin {endpoint!r}: use one of {known}")
    return factory(rest, options)
