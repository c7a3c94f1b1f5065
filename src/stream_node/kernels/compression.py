"""Bitshuffle/LZ4 chunks exactly as HDF5 filter 32008 stores them (the DECTRIS `bs*-lz4<` layout),
so workers compress and the collector writes the bytes as a direct chunk, never recompressing.

A chunk is a 12-byte big-endian header (uncompressed bytes: u64, block bytes: u32) followed by
the blocks bitshuffle's `compress_lz4` makes with the filter's default block size; the tests check
that the bytes are identical to what the HDF5 filter itself writes.
"""

from __future__ import annotations

import ctypes
import struct

import bitshuffle
import hdf5plugin
import numpy as np

from stream_node.model.contract import frame_nbytes
from stream_node.model.errors import ProtocolError

CHUNK_HEADER = struct.Struct(">QI")  # uncompressed bytes, block bytes (big-endian)
_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B


def hdf5_filter() -> hdf5plugin.Bitshuffle:
    """The dataset filter whose chunks `compress` makes (nelems=0: default block, LZ4)."""
    return hdf5plugin.Bitshuffle(nelems=0, cname="lz4")


def set_codec_threads(n: int) -> int:
    """Set how many threads bitshuffle's OpenMP uses (in this thread); returns the number now.

    bitshuffle links its own libgomp and, by default, compresses on every core. A worker is one
    of several processes sharing the cores, so it uses one thread; benchmarks do the same to
    measure one core. 0 means bitshuffle was built without OpenMP here.
    """
    with open("/proc/self/maps") as maps:
        path = next((line.split()[-1] for line in maps if "libgomp" in line), None)
    if path is None:
        return 0
    lib = ctypes.CDLL(path)
    lib.omp_set_num_threads(n)
    return int(lib.omp_get_max_threads())


def _block_elems(itemsize: int) -> int:
    return max(_TARGET_BLOCK_BYTES // itemsize // 8 * 8, 128)


def compress(array: np.ndarray) -> np.ndarray:
    """One frame as a filter-32008 chunk (a new uint8 array; bitshuffle releases the GIL)."""
    array = np.ascontiguousarray(array)
    block = _block_elems(array.itemsize)
    body = bitshuffle.compress_lz4(array.reshape(-1), block)
    out = np.empty(CHUNK_HEADER.size + body.nbytes, np.uint8)
    CHUNK_HEADER.pack_into(out, 0, array.nbytes, block * array.itemsize)
    out[CHUNK_HEADER.size:] = body
    return out


def chunk_bound(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The most bytes `compress_into` may write for such a frame (bitshuffle's own bound)."""
    dt = np.dtype(dtype)
    n = frame_nbytes(shape, dt) // dt.itemsize
    return CHUNK_HEADER.size + int(_bound_lz4(n, dt.itemsize, _block_elems(dt.itemsize)))


def compress_into(array: np.ndarray, out: np.ndarray) -> int:
    """`compress`, written into `out` (uint8, C-contiguous, `chunk_bound` bytes at least: a
    worker's output ring slot), so a frame costs no new buffer; returns the chunk's bytes."""
    array = np.ascontiguousarray(array)
    block = _block_elems(array.itemsize)
    if out.nbytes < CHUNK_HEADER.size + _bound_lz4(array.size, array.itemsize, block):
        raise ValueError(f"{out.nbytes} bytes cannot hold the chunk of a {array.nbytes}-byte "
                         "frame in the worst case (chunk_bound)")
    CHUNK_HEADER.pack_into(out, 0, array.nbytes, block * array.itemsize)
    used = _compress_lz4(array.ctypes.data, out.ctypes.data + CHUNK_HEADER.size, array.size,
                         array.itemsize, block)
    if used < 0:
        raise ProtocolError(f"bitshuffle/LZ4 compression failed (code {used})")
    return CHUNK_HEADER.size + int(used)


def _codec() -> ctypes._CFuncPtr:
    """bitshuffle's C decompressor, called through ctypes (which releases the GIL), so a frame
    is decoded straight into a buffer made once rather than into a new array each time."""
    fn = ctypes.CDLL(bitshuffle.ext.__file__).bshuf_decompress_lz4
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                   ctypes.c_size_t]
    fn.restype = ctypes.c_int64
    return fn


_decompress_lz4 = _codec()


def _compressor() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:
    """bitshuffle's C compressor and its bound, through ctypes (the GIL released)."""
    lib = ctypes.CDLL(bitshuffle.ext.__file__)
    fn, bound = lib.bshuf_compress_lz4, lib.bshuf_compress_lz4_bound
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                   ctypes.c_size_t]
    fn.restype = ctypes.c_int64
    bound.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    bound.restype = ctypes.c_size_t
    return fn, bound


_compress_lz4, _bound_lz4 = _compressor()


def decompress(chunk: object, shape: tuple[int, ...], dtype: np.dtype,
               out: np.ndarray | None = None) -> np.ndarray:
    """The frame a filter-32008 chunk holds, written into `out` (C-contiguous, of that shape
    and dtype) when given; ProtocolError if the chunk is not one of that frame."""
    raw = np.frombuffer(chunk, np.uint8)
    dt = np.dtype(dtype)
    if raw.nbytes < CHUNK_HEADER.size:
        raise ProtocolError(f"bitshuffle/LZ4 chunk of {raw.nbytes} bytes has no header")
    nbytes, block_bytes = CHUNK_HEADER.unpack_from(raw, 0)
    expected = frame_nbytes(shape, dt)
    if nbytes != expected or block_bytes % dt.itemsize:
        raise ProtocolError(f"bitshuffle/LZ4 chunk holds {nbytes} bytes in blocks of "
                            f"{block_bytes}, a {shape} {dt} frame has {expected}")
    from stream_node.kernels.chunk_walk import block_problem  # Numba: loaded on first use

    problem = block_problem(raw, nbytes, block_bytes, dt.itemsize)
    if problem:
        raise ProtocolError(f"corrupt bitshuffle/LZ4 chunk ({raw.nbytes} bytes): {problem}")
    if out is None:
        out = np.empty(shape, dt)
    used = _decompress_lz4(raw.ctypes.data + CHUNK_HEADER.size, out.ctypes.data,
                           expected // dt.itemsize, dt.itemsize, block_bytes // dt.itemsize)
    if used != raw.nbytes - CHUNK_HEADER.size:
        raise ProtocolError(f"corrupt bitshuffle/LZ4 chunk (codec returned {used})")
    return out
