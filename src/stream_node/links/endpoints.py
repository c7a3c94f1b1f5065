"""Opening a link by its endpoint: `ring://NAME` (shared memory on this host) or a ZeroMQ address
(`tcp://`, `ipc://`), with credit-based dispatch in reliable mode."""

from __future__ import annotations

from collections.abc import Sequence

import zmq

from stream_node.links.base import FrameInput, FrameOutput, ring_name
from stream_node.links.credit import CreditInput, CreditOutput
from stream_node.links.ring_links import RingInput, RingOutput, default_ring_slots
from stream_node.links.transport import LinkLimits
from stream_node.links.zmq_links import PullInput, PushOutput
from stream_node.model.errors import ConfigError


def open_output(ctx: zmq.Context, endpoint: str, limits: LinkLimits, frame_bytes: int,
                ring_slots: int | None, reliable_window: int = 0,
                resend_after_s: float = 10.0) -> FrameOutput:
    """`reliable_window` > 0: credit-based dispatch that sends a lost worker's frames again
    (stream_node.links.credit); a ring already gives a dead member's frames to another."""
    name = ring_name(endpoint)
    if name is not None:
        if reliable_window:
            raise ConfigError(f"reliable mode is for a ZeroMQ fan-out (tcp://, ipc://), not "
                              f"{endpoint}: the ring already hands the frames of a dead worker "
                              "to another")
        return RingOutput(name, ring_slots or default_ring_slots(frame_bytes), frame_bytes)
    if reliable_window:
        return CreditOutput(ctx, endpoint, limits, frame_bytes, reliable_window, resend_after_s)
    return PushOutput(ctx, endpoint, limits, frame_bytes)


def open_input(ctx: zmq.Context, endpoints: Sequence[str], limits: LinkLimits,
               credit: tuple[bytes, int, int] | None = None) -> FrameInput:
    """`credit` (identity, run id, frames): the reliable mode's end (stream_node.links.credit)."""
    if credit is not None:
        if any(ring_name(e) for e in endpoints):
            raise ConfigError("the source runs in reliable mode, which needs ZeroMQ inputs, "
                              f"not {list(endpoints)}")
        return CreditInput(ctx, endpoints, limits, *credit)
    names = [ring_name(e) for e in endpoints]
    if any(names):
        if len(endpoints) != 1:
            raise ConfigError("a worker reads either one ring:// input or ZeroMQ inputs, "
                              f"not both: {list(endpoints)}")
        return RingInput(names[0])
    return PullInput(ctx, endpoints, limits)
