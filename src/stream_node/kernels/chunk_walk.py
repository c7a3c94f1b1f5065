"""The block structure of a filter-32008 (bitshuffle/LZ4) chunk, walked without decoding it.

bitshuffle's decompressor is not told how long a chunk is: a damaged block length sends it
reading past the chunk, and the process dies (SIGSEGV), not the frame. So every chunk from
outside is walked before it is decoded (`compression.decompress`) or passed on
(`origins.chunks.check_bslz4`): tens of us per 4 MiB frame, compiled at import.
"""

from __future__ import annotations

import struct

import numpy as np
from numba import njit

_BLOCKED_MULT = 8  # bitshuffle transposes groups of 8 elements
_AHEAD = 16  # blocks the walk touches ahead of itself


@njit(cache=True, nogil=True)
def _walk_blocks(buf: np.ndarray, nbytes: int, block_bytes: int, elem: int) -> int:
    """0 if `buf` (a whole chunk) holds exactly the blocks its header announces, else the
    negative reason: -1 a block size field is cut off, -2 a block runs past the end, -3 the
    trailing raw bytes do not fill the rest, -4 an empty block.

    Each block's place depends on the size field before it, so a plain walk waits for one
    memory load per block, and a frame just received is rarely in cache (about 100 ns a block,
    160 us for 2048 blocks). So the walk also reads, without waiting for them, the two cache
    lines where the block `_AHEAD` places on should start if blocks were of the average size:
    those loads run in parallel and the walk mostly finds its lines there (about 4x faster)."""
    full = nbytes // block_bytes
    leftover = (nbytes // elem) % _BLOCKED_MULT * elem
    last = nbytes % block_bytes - leftover
    blocks = full + (1 if last > 0 else 0)
    pos = 12
    end = buf.shape[0]
    stride = _AHEAD * ((end - 12) // max(blocks, 1))
    touched = 0
    for _ in range(blocks):
        if pos + 4 > end:
            return -1
        ahead = pos + stride
        if ahead + 64 < end:
            touched += buf[ahead] + buf[ahead + 64]
        size = ((np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16)
                | (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3]))
        if size == 0:
            return -4
        pos += 4 + size
        if pos > end:
            return -2
    if pos + leftover != end:
        return -3
    # The result depends on `touched` (never negative), so the compiler keeps the loads.
    return 0 if touched >= 0 else -5


def _warm() -> None:
    """Compile (or load from the cache) the walk now, at import, never on a frame: on a chunk
    of one 4-byte block (the walk reads sizes, not LZ4 bytes)."""
    header = struct.pack(">QI", 128, 8192)  # 64 uint16, the filter's 12-byte header
    _walk_blocks(np.frombuffer(header + struct.pack(">I", 4) + bytes(4), np.uint8), 128, 8192, 2)


_WALK_REASONS = {-1: "a block's size field is cut off", -2: "a block runs past the end",
                 -3: "bytes after the last block do not match", -4: "an empty block"}


def block_problem(buf: np.ndarray, nbytes: int, block_bytes: int, itemsize: int) -> str | None:
    """Why `buf` (a whole chunk, uint8, whose header says `nbytes` in blocks of `block_bytes`)
    is not a chunk of `itemsize`-byte elements bitshuffle can decode; None when it is."""
    code = _walk_blocks(buf, nbytes, block_bytes, itemsize)
    return _WALK_REASONS.get(code, f"walk code {code}") if code else None


_warm()
