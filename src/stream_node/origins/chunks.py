"""Compressed payloads as detectors send them, checked and decoded without surprises.

A DECTRIS `bs16-lz4<` / `bs32-lz4<` blob (SIMPLON v1) and a stream2 `bslz4` byte string are both
HDF5 filter-32008 chunks: a 12-byte big-endian header (uncompressed bytes: u64, block bytes: u32),
then one `u32 BE size + LZ4 block` per block of bit-shuffled data, then the trailing bytes that
do not fill a group of 8 elements, stored raw. Such a chunk goes into the file as it came
(`write_direct_chunk`); `check_bslz4` checks its header at the origin, and walks its block
structure (`kernels.chunk_walk`: tens of us per 4 MiB frame, compiled) in the workers, in
parallel, so a truncated or garbled blob is caught in the run, not by a reader months later.
A blob whose structure is intact but whose LZ4 bytes are damaged passes that walk; `verify=full`
on the endpoint decompresses every frame as well (the cost is in bench/protocols.py).

Plain LZ4 (`lz4<` in v1: one raw LZ4 block; `lz4` in stream2: the HDF5 LZ4 filter framing) is not
what the file stores: those frames are decompressed here, at the origin, into raw frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import lz4.block
import numpy as np

from stream_node.kernels import compression
from stream_node.kernels.chunk_walk import block_problem
from stream_node.model.contract import FrameGeometry
from stream_node.model.errors import ProtocolError

HEADER = compression.CHUNK_HEADER
_BLOCKED_MULT = 8  # bitshuffle transposes groups of 8 elements
# bitshuffle's own block when none is asked for (BSHUF_TARGET_BLOCK_SIZE_B): what a blob sent
# without the filter's header was made with, by a simulator calling bitshuffle directly.
DEFAULT_BLOCK_BYTES = 8192


def _with_header(buf: np.ndarray, nbytes: int, itemsize: int) -> np.ndarray | None:
    """A blob some detector simulators send without the filter's 12-byte header (bitshuffle's
    blocks alone): the chunk it is, header added, when its blocks walk exactly to its end with
    bitshuffle's default block; None when they do not (then it is no such blob either)."""
    framed = np.empty(HEADER.size + buf.nbytes, np.uint8)
    HEADER.pack_into(framed, 0, nbytes, DEFAULT_BLOCK_BYTES)
    framed[HEADER.size:] = buf
    return framed if block_problem(framed, nbytes, DEFAULT_BLOCK_BYTES, itemsize) is None else None


def check_bslz4(blob: Any, nbytes: int, itemsize: int, walk: bool = True) -> np.ndarray:
    """The blob as a uint8 view after checking it is a filter-32008 chunk of `nbytes` bytes of
    `itemsize`-byte elements; ProtocolError saying what is wrong otherwise. `walk=False` checks
    the header only: the source does that, and the workers walk the blocks, in parallel.
    A blob without the header (some simulators send bitshuffle's blocks alone) comes back as a
    new array with the header added, so the file gets a chunk every reader decodes."""
    buf = np.frombuffer(blob, np.uint8)
    total, block_bytes = HEADER.unpack_from(buf, 0) if buf.nbytes >= HEADER.size else (-1, 0)
    if total != nbytes:
        framed = _with_header(buf, nbytes, itemsize) if buf.nbytes >= 4 else None
        if framed is not None:
            return framed
        if buf.nbytes < HEADER.size:
            raise ProtocolError(f"bitshuffle/LZ4 blob of {buf.nbytes} bytes has no 12-byte "
                                "header")
        raise ProtocolError(f"bitshuffle/LZ4 blob holds {total} bytes, the frame has {nbytes}")
    if block_bytes == 0 or block_bytes % (_BLOCKED_MULT * itemsize):
        raise ProtocolError(f"bitshuffle/LZ4 blob has block size {block_bytes} bytes, not a "
                            f"multiple of {_BLOCKED_MULT * itemsize}")
    problem = block_problem(buf, nbytes, block_bytes, itemsize) if walk else None
    if problem:
        raise ProtocolError(f"corrupt bitshuffle/LZ4 blob ({buf.nbytes} bytes): {problem}")
    return buf


def lz4_block(blob: Any, nbytes: int) -> bytes:
    """One raw LZ4 block of `nbytes` bytes (SIMPLON v1 `lz4<`)."""
    try:
        raw = lz4.block.decompress(memoryview(blob), uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(f"corrupt LZ4 blob: {exc}") from None
    if len(raw) != nbytes:
        raise ProtocolError(f"LZ4 blob holds {len(raw)} bytes, the frame has {nbytes}")
    return raw


def lz4_hdf5(blob: Any, nbytes: int) -> bytearray:
    """Data in the HDF5 LZ4 filter framing (stream2 `lz4`): a 12-byte header (total bytes u64 BE,
    block bytes u32 BE), then per block `u32 BE size + block`, a block of full size stored raw."""
    buf = memoryview(blob).cast("B")
    if buf.nbytes < HEADER.size:
        raise ProtocolError(f"LZ4 blob of {buf.nbytes} bytes has no 12-byte header")
    total, block = HEADER.unpack_from(buf, 0)
    if total != nbytes or (total and not block):
        raise ProtocolError(f"LZ4 blob holds {total} bytes in blocks of {block}, the frame "
                            f"has {nbytes}")
    out = bytearray(nbytes)
    pos, done = HEADER.size, 0
    while done < total:
        want = min(block, total - done)
        if pos + 4 > buf.nbytes:
            raise ProtocolError("corrupt LZ4 blob: a block's size field is cut off")
        (size,) = struct.unpack_from(">I", buf, pos)
        pos += 4
        if pos + size > buf.nbytes:
            raise ProtocolError("corrupt LZ4 blob: a block runs past the end")
        if size == want:
            out[done:done + want] = buf[pos:pos + size]
        else:
            try:
                part = lz4.block.decompress(buf[pos:pos + size], uncompressed_size=want)
            except lz4.block.LZ4BlockError as exc:
                raise ProtocolError(f"corrupt LZ4 blob: {exc}") from None
            if len(part) != want:
                raise ProtocolError("corrupt LZ4 blob: a block decompresses to the wrong size")
            out[done:done + want] = part
        pos += size
        done += want
    return out


def packed_array(array: np.ndarray) -> dict[str, Any]:
    """An array as START metadata can carry it (msgpack has no arrays): compressed as one
    filter-32008 chunk; the file writer stores it as a dataset (see RunWriter)."""
    array = np.ascontiguousarray(array)
    return {"__array__": "bslz4", "dtype": array.dtype.str, "shape": list(array.shape),
            "data": compression.compress(array).tobytes()}


def chunk_checker(geometry: FrameGeometry) -> Callable[[Any], np.ndarray]:
    """`check_bslz4` with its blocks walked, for chunks of `geometry` passed through as they
    came: the source checks their header only, and the stage after it (a worker, or the
    collector when no worker is on the path) walks each one."""
    nbytes, itemsize = geometry.nbytes, geometry.dtype.itemsize
    return lambda blob: check_bslz4(blob, nbytes, itemsize)
