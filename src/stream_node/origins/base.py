"""Where a run's frames come from, named by the source's `--from` endpoint.

An origin knows the run's frame geometry before the run starts and then emits every frame of the
run into the source's output (a ring or a PUSH fan-out). Two kinds exist:

- generated origins (`synthetic:`, `file://PATH`) compute a frame by its id straight into the
  buffer the output reserved (a ring slot or a new send buffer): the frame is written once;
- received origins (detector protocols, the UDP receiver) get frames they cannot choose and hand
  each on as it came; what the detector never delivered they report as missing, with why, so
  the collector's ledger names it instead of waiting for it.

`stream_node.origins.open_origin` maps each endpoint scheme to its class; the source never branches
on a scheme.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stream_node.links.base import FrameOutput
from stream_node.model.contract import frame_nbytes
from stream_node.model.frame import Encoding, frame_header
from stream_node.model.instrument import Instrument


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
    connection: Any = None  # a serving node's `DetectorConnection`, kept between series


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
        raw = frame_nbytes(self.shape, self.dtype)
        return raw if self.encoding == Encoding.RAW else raw + raw // 1024 + 64

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """What START says about where the frames come from; "detector" goes to the NXmx
        detector group of the file."""

    def instrument(self) -> Instrument | None:
        """The geometry the detector's own stream says (a DECTRIS header does); None when
        it says none: a geometry file given to the source supplies it."""
        return None

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
