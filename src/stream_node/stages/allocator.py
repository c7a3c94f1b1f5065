"""glibc malloc settings for a process that receives large ZeroMQ messages.

libzmq allocates every received message with malloc, and frees it once the last numpy view of it
is gone. By default glibc serves a block above its mmap threshold (dynamic, from 128 KiB) with
mmap and gives it back with munmap, and it trims a heap whose free top grows past its trim
threshold. At 1-16 MiB per message, both make every message's pages fault in again. Measured on
the development machine, receiving 0.77 MB DECTRIS frames: 25-35 page faults and 110-130 us of
system time per frame, about half of the receiving core, and the cause of 2x swings in ingest
rate. With the settings below: no page faults, 50-70 us.

The buffers then stay in the heap and are reused. The memory a process keeps is the peak of
messages in flight, which the high-water marks bound (README, "Memory"), plus at most
TRIM_THRESHOLD of freed buffers kept for reuse.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: frames up to 16 MiB fit
TRIM_THRESHOLD = 256 << 20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_message_buffers() -> bool:
    """Set glibc's mmap and trim thresholds for this process. Every stream-node node calls this
    at start.

    Returns False, and changes nothing, in three cases: off Linux, without glibc's mallopt (musl's
    does nothing), or when the user has tuned malloc through its environment variables (theirs
    win).
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
