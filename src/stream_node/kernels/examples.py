"""Example user kernels: what a scientist writes to add a step to a worker's chain.

A user kernel has the built-ins' calling convention, ``fn(frame, out, **params) -> int | None``:
read `frame`, write `out` (preallocated, by default the frame's shape and dtype; a spec entry's
"out_shape"/"out_dtype" change that), return a count for the chain's counters or None. Name it
in a spec as ``{"kernel": "python:stream_node.kernels.examples.zero_below", "low": 1.5}``.
Allocate nothing per frame if it has to keep up; a numba-jitted one is compiled when the chain is
built.
"""

from __future__ import annotations

import os
import time

import numpy as np
from numba import njit


def scale(frame: np.ndarray, out: np.ndarray, factor: float = 1.0) -> None:
    """out = frame * factor, in numpy (writes straight into `out`: no temporary)."""
    np.multiply(frame, factor, out=out, casting="unsafe")


@njit(cache=True, nogil=True)
def zero_below(frame: np.ndarray, out: np.ndarray, low: float = 0.0) -> int:
    """out = frame, but 0 where frame < low; returns how many pixels were zeroed (numba)."""
    f = frame.reshape(frame.size)
    o = out.reshape(out.size)
    zeroed = 0
    for i in range(f.size):
        below = f[i] < low
        zeroed += below
        o[i] = 0 if below else f[i]
    return zeroed


def delay(frame: np.ndarray, out: np.ndarray, seconds: float = 0.0) -> None:
    """out = frame after `seconds` (or $STREAM_NODE_EXAMPLE_DELAY_S in this worker): a worker
    made slow on purpose, to test and measure what one slow worker does to a run."""
    time.sleep(seconds or float(os.environ.get("STREAM_NODE_EXAMPLE_DELAY_S", 0)))
    out[...] = frame
