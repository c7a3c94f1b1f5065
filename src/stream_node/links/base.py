"""The two interfaces every link speaks: where a stage puts frames and where it takes them from.

Stages speak to these only, so a topology is a choice of endpoints, not of code paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from stream_node.model.frame import FrameHeader

RING = "ring://"
BATCH = 16  # frames one take() hands over at most
# How long a stage's one wait for frames may last before it looks at its control channel again:
# an END or FINISH that came meanwhile waits at most this long (50 ms was most of a serving
# node's dead time between series).
TAKE_MS = 10


def ring_name(endpoint: str) -> str | None:
    return endpoint[len(RING):] if endpoint.startswith(RING) else None


class FrameOutput(Protocol):
    def reserve(
        self, shape: tuple[int, ...], dtype: np.dtype, timeout_ms: int
    ) -> np.ndarray | None:
        """A buffer to write the next frame into, or None if no consumer can take one yet."""

    def commit(self, header: FrameHeader, buffer: np.ndarray) -> bool:
        """Hand the reserved frame on; False if it must be retried later (peer went away)."""

    def put(self, header: FrameHeader, payload: Any, timeout_ms: int) -> bool:
        """Hand on a frame that arrived in a buffer of its own (a received message): sent as
        it is over ZeroMQ, copied once into a ring slot. False if no consumer took it in time."""

    def end(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> str: ...


class FrameInput(Protocol):
    copies: bool  # True if a payload must be copied before release() (the slot is reused)
    exhausted: bool  # the producer ended the stream and every frame was taken

    def wait_ready(self, timeout_s: float, meanwhile: Callable[[], None]) -> None: ...
    def take(self, timeout_ms: int) -> list[list[Any]]:
        """Up to a batch of [header, payload] buffer pairs; [] if none came in time."""

    def release(self) -> None: ...
    def close(self) -> None: ...
