"""Bitshuffle/LZ4 chunks (kernels/compression.py): exact round trips for every frame a worker
compresses, decoding into a buffer made once, and clear errors for chunks that are not right."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from stream_node.kernels.compression import (
    CHUNK_HEADER,
    chunk_bound,
    compress,
    compress_into,
    decompress,
    hdf5_filter,
)
from stream_node.model.errors import ProtocolError


def frame(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    return rng.poisson(3.0, shape).astype(dtype)


SHAPES = [(512, 1024), (7, 13), (1, 1), (3, 5, 7), (1000,), (33, 1)]
DTYPES = ["uint16", "uint32", "float32"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_a_frame_round_trips_bit_exact(shape, dtype):
    original = frame(shape, dtype)
    chunk = compress(original)
    assert chunk.dtype == np.uint8 and chunk.ndim == 1
    back = decompress(chunk, shape, dtype)
    assert back.shape == shape and back.dtype == np.dtype(dtype)
    assert back.tobytes() == original.tobytes()


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "float64"])
def test_other_frame_dtypes_round_trip_too(dtype):
    original = frame((17, 19), dtype)
    assert decompress(compress(original), (17, 19), dtype).tobytes() == original.tobytes()


def test_special_float_values_survive_bit_exact():
    original = np.array([[np.nan, -0.0, np.inf], [-np.inf, 1e-45, 3.4e38]], np.float32)
    back = decompress(compress(original), original.shape, np.float32)
    assert back.view(np.uint32).tolist() == original.view(np.uint32).tolist()


def test_a_non_contiguous_frame_is_compressed_as_its_values():
    base = frame((64, 96), "uint16")
    view = base[::2, 1::3]
    assert not view.flags.c_contiguous
    back = decompress(compress(view), view.shape, view.dtype)
    assert np.array_equal(back, view)


def test_the_chunk_header_says_the_frame_bytes_and_block_bytes():
    original = frame((7, 13), "uint32")
    chunk = compress(original)
    nbytes, block_bytes = CHUNK_HEADER.unpack_from(chunk, 0)
    assert nbytes == original.nbytes
    assert block_bytes == 8192 and block_bytes % original.itemsize == 0


def test_poisson_frames_shrink():
    original = frame((512, 1024), "uint16")
    assert compress(original).nbytes < original.nbytes / 2


def test_decompress_writes_into_the_buffer_it_is_given():
    out = np.full((64, 96), 0xFFFF, np.uint16)
    for seed in (1, 2):  # the same buffer, frame after frame
        original = frame((64, 96), "uint16", seed)
        back = decompress(compress(original), out.shape, out.dtype, out=out)
        assert back is out
        assert out.tobytes() == original.tobytes()


def test_decompress_takes_any_buffer_holding_the_chunk():
    original = frame((40, 40), "float32")
    chunk = compress(original)
    for held in (chunk.tobytes(), bytearray(chunk.tobytes()), memoryview(chunk)):
        assert decompress(held, original.shape, original.dtype).tobytes() == original.tobytes()


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_compress_into_a_slot_makes_the_same_chunk(dtype):
    """A worker compresses into its output slot: the bytes are `compress`'s, a buffer of
    `chunk_bound` bytes holds even noise that does not shrink, a smaller one is refused."""
    rng = np.random.default_rng(3)
    for frame in (np.zeros((64, 96), dtype), rng.integers(0, 2**15, (64, 96)).astype(dtype)):
        slot = np.empty(chunk_bound(frame.shape, frame.dtype), np.uint8)
        n = compress_into(frame, slot)
        assert bytes(slot[:n]) == compress(frame).tobytes()
    with pytest.raises(ValueError, match="chunk_bound"):
        compress_into(frame, np.empty(frame.nbytes, np.uint8))


def test_chunks_are_what_hdf5_reads_back_through_the_filter(tmp_path):
    frames = [frame((30, 50), "uint32", seed) for seed in range(3)]
    with h5py.File(tmp_path / "direct.h5", "w") as f:
        data = f.create_dataset("data", shape=(3, 30, 50), chunks=(1, 30, 50), dtype="uint32",
                                **hdf5_filter())
        for i, original in enumerate(frames):
            data.id.write_direct_chunk((i, 0, 0), compress(original).tobytes())
    with h5py.File(tmp_path / "direct.h5", "r") as f:
        for i, original in enumerate(frames):
            assert f["data"][i].tobytes() == original.tobytes()


# -- chunks that are not right ------------------------------------------------------------------

def test_a_chunk_shorter_than_its_header_is_refused():
    with pytest.raises(ProtocolError, match="chunk of 5 bytes has no header"):
        decompress(compress(frame((8, 8), "uint16"))[:5], (8, 8), np.uint16)
    with pytest.raises(ProtocolError, match="chunk of 0 bytes has no header"):
        decompress(b"", (8, 8), np.uint16)


def test_a_chunk_of_another_frame_size_is_refused_naming_both():
    chunk = compress(frame((8, 8), "uint16"))
    with pytest.raises(ProtocolError, match=r"holds 128 bytes .* a \(8, 9\) uint16 frame has "
                                            r"144"):
        decompress(chunk, (8, 9), np.uint16)
    with pytest.raises(ProtocolError, match=r"a \(8, 8\) uint32 frame has 256"):
        decompress(chunk, (8, 8), np.uint32)


def test_a_chunk_whose_block_size_does_not_fit_the_dtype_is_refused():
    chunk = compress(frame((8, 8), "uint8"))
    CHUNK_HEADER.pack_into(chunk, 0, 64, 8191)
    with pytest.raises(ProtocolError, match="in blocks of 8191"):
        decompress(chunk, (16, 2), np.uint16)


def test_a_truncated_chunk_is_refused_as_corrupt():
    original = frame((256, 256), "uint16")
    chunk = compress(original)
    # A prefix of the chunk, as a view: the bytes past its end stay readable memory.
    for cut in (chunk.nbytes - 1, chunk.nbytes // 2, CHUNK_HEADER.size + 4):
        with pytest.raises(ProtocolError, match="corrupt bitshuffle/LZ4 chunk"):
            decompress(chunk[:cut], original.shape, original.dtype)


def test_a_chunk_with_trailing_bytes_is_refused_as_corrupt():
    original = frame((64, 64), "uint16")
    chunk = np.concatenate([compress(original), np.zeros(5, np.uint8)])
    with pytest.raises(ProtocolError, match="corrupt bitshuffle/LZ4 chunk"):
        decompress(chunk, original.shape, original.dtype)


DAMAGED_BLOCK_LENGTH = textwrap.dedent("""
    import sys
    import numpy as np
    from stream_node.kernels.compression import compress, decompress
    from stream_node.model.errors import ProtocolError

    original = np.random.default_rng(0).poisson(3.0, (256, 256)).astype(np.uint16)
    for length in (0, 1000, 0xFFFFFFF0):  # the first block's u32 BE length, damaged
        chunk = compress(original)
        chunk[12:16] = np.frombuffer(length.to_bytes(4, "big"), np.uint8)
        try:
            decompress(chunk, original.shape, original.dtype)
        except ProtocolError as exc:
            print(length, exc, flush=True)
        else:
            sys.exit(f"block length {length}: no error")
""")


def test_a_chunk_whose_block_length_is_damaged_is_refused_not_a_crash():
    # In a child process: the failure this guards against kills the process.
    done = subprocess.run([sys.executable, "-c", DAMAGED_BLOCK_LENGTH], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.count("corrupt bitshuffle/LZ4 chunk") == 3, done.stdout
