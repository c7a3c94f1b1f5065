"""The run file writer (storage/writer.py) on real HDF5 files: each frame once at its index,
duplicates counted, the ledger of missing frames, compressed chunks as they come, read back
with read_run and with plain h5py + hdf5plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter for plain h5py reads)
import numpy as np
import pytest

from stream_node import read_run
from stream_node.kernels.compression import compress
from stream_node.model.errors import ConfigError, OutputExistsError, StorageError
from stream_node.storage.writer import COUNTERS, REASON_BYTES, RunWriter

SHAPE = (6, 10)
FIRST = 1000


def pixels(index: int, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.poisson(4.0, SHAPE).astype(dtype)


@pytest.fixture
def writer(tmp_path):
    """Make RunWriters; every one is closed at teardown, whatever the test did."""
    made: list[RunWriter] = []

    def make(name: str = "run.h5", frames: int = 5, **kwargs) -> RunWriter:
        kwargs.setdefault("first_frame_id", FIRST)
        w = RunWriter(tmp_path / name, SHAPE, kwargs.pop("dtype", "uint16"), frames, **kwargs)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def test_frames_are_written_at_their_index_in_any_order(writer):
    w = writer(metadata={"run_id": 7, "run_id_hex": "0x7", "start": {"frames": 5}})
    for index, worker in ((3, 1), (0, 0), (4, 2)):
        assert w.write(index, pixels(index), timestamp_ns=100 + index, worker=worker)
    assert (w.frames_written, w.last_index, w.last_written) == (3, 4, FIRST + 4)
    assert w.has(3) and not w.has(1)
    w.finalize(5, {1: "never came", 2: "never came"}, {})
    w.close()
    run = read_run(w.path)
    assert run.frame_ids.tolist() == [FIRST + i for i in range(5)]
    assert run.received.tolist() == [True, False, False, True, True]
    for i in (0, 3, 4):
        assert run.frames[i].tobytes() == pixels(i).tobytes()
    assert not run.frames[1].any() and not run.frames[2].any()  # a missing frame reads as 0
    assert run.metadata["run_id"] == 7 and run.metadata["start"] == {"frames": 5}
    with h5py.File(w.path, "r") as f:
        frames = f["entry/frames"]
        assert frames["worker"][()].tolist() == [0, -1, -1, 1, 2]
        assert frames["timestamp_ns"][()].tolist() == [100, 0, 0, 103, 104]


def test_a_duplicate_is_counted_and_the_first_copy_kept(writer):
    w = writer(frames=3)
    assert w.write(1, pixels(1), 0, worker=0)
    assert not w.write(1, pixels(99), 0, worker=1)  # a late copy from another worker
    assert not w.write(1, pixels(1), 0, worker=0)
    assert (w.duplicates, w.frames_written) == (2, 1)
    w.write(0, pixels(0), 0, 0)
    w.write(2, pixels(2), 0, 0)
    w.finalize(3, {}, {})
    w.close()
    run = read_run(w.path)
    assert run.frames[1].tobytes() == pixels(1).tobytes()
    assert run.counters["duplicates"] == 2 and run.counters["frames_written"] == 3
    assert run.complete


def test_missing_frames_are_recorded_with_their_reasons(writer):
    w = writer(frames=6)
    for index in (0, 2, 5):
        w.write(index, pixels(index), 0, 0)
    assert w.missing_indexes(6).tolist() == [1, 3, 4]
    reasons = {1: "worker w1 ended without a final report", 3: "drain timeout",
               4: "kernel 'photonise' failed on frame 1004: ValueError: bad"}
    w.finalize(6, reasons, {"dropped_foreign": 4})
    w.close()
    run = read_run(w.path)
    assert run.missing == {FIRST + i: reason for i, reason in reasons.items()}
    assert not run.complete
    assert run.counters["missing"] == 3 and run.counters["dropped_foreign"] == 4
    assert set(COUNTERS) <= set(run.counters)


def test_a_reason_longer_than_its_field_is_cut_not_refused(writer):
    w = writer(frames=1)
    w.finalize(1, {0: "x" * (REASON_BYTES + 50)}, {})
    w.close()
    assert read_run(w.path).missing == {FIRST: "x" * REASON_BYTES}


def test_a_long_reason_with_non_ascii_text_still_reads_back(writer):
    w = writer(frames=1)
    reason = "x" * (REASON_BYTES - 1) + "Å too far"  # "Å" is 2 bytes and straddles the cut
    w.finalize(1, {0: reason}, {})
    w.close()
    assert read_run(w.path).missing[FIRST].startswith("x" * (REASON_BYTES - 1))


def test_an_existing_file_is_refused_without_overwrite_and_left_alone(writer, tmp_path):
    (tmp_path / "run.h5").write_bytes(b"an earlier run")
    with pytest.raises(OutputExistsError, match="exists: pass --overwrite"):
        writer()
    assert (tmp_path / "run.h5").read_bytes() == b"an earlier run"
    w = writer(overwrite=True)
    w.write(0, pixels(0), 0, 0)
    w.finalize(1, {}, {})
    w.close()
    assert read_run(w.path).frames[0].tobytes() == pixels(0).tobytes()


def test_a_file_that_cannot_be_created_is_a_storage_error(writer, tmp_path):
    with pytest.raises(StorageError, match="cannot create output file"):
        writer(name="no-such-dir/run.h5")


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_compressed_chunks_are_written_as_they_come_and_read_back_bit_exact(writer, dtype):
    w = writer(frames=4, compression="bslz4", dtype=dtype)
    chunks = {i: compress(pixels(i, dtype)) for i in range(4)}
    for index in (2, 0, 3, 1):
        assert w.write(index, chunks[index], 0, worker=index % 2)
    assert w.bytes_stored == sum(c.nbytes for c in chunks.values())
    assert w.bytes_written == 4 * pixels(0, dtype).nbytes
    w.finalize(4, {}, {})
    w.close()
    with h5py.File(w.path, "r") as f:  # what a scientist without stream-node would do
        data = f["entry/data/data"]
        assert data.chunks == (1, *SHAPE)
        for i in range(4):
            assert data[i].tobytes() == pixels(i, dtype).tobytes()
            assert data.id.read_direct_chunk((i, 0, 0))[1] == chunks[i].tobytes()
    run = read_run(w.path)
    assert run.frames.dtype == np.dtype(dtype)
    assert all(run.frames[i].tobytes() == pixels(i, dtype).tobytes() for i in range(4))
    assert run.counters["bytes_stored"] == w.bytes_stored


def test_flushed_frames_are_readable_while_the_run_goes_on(writer):
    w = writer(frames=4, compression="bslz4")
    w.write(1, compress(pixels(1)), 0, 0)
    w.write(3, compress(pixels(3)), 0, 0)
    w.flush()
    reader = textwrap.dedent("""
        import sys, h5py, hdf5plugin, numpy as np
        with h5py.File(sys.argv[1], "r", libver="latest", swmr=True) as f:
            received = f["entry/frames/received"][()]
            print(",".join(map(str, np.flatnonzero(received).tolist())))
            for i in np.flatnonzero(received):
                sys.stdout.write(f["entry/data/data"][i].tobytes().hex() + "\\n")
    """)
    done = subprocess.run([sys.executable, "-c", reader, str(w.path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    flagged, *frames = done.stdout.split()
    assert flagged == "1,3"
    assert frames == [pixels(1).tobytes().hex(), pixels(3).tobytes().hex()]


def test_a_run_of_unknown_length_grows_and_is_trimmed_to_its_count(writer):
    w = writer(frames=0)
    for index in (0, 40, 7):
        w.write(index, pixels(index), 0, 0)
    assert w.capacity >= 41
    w.finalize(45, {i: "lost" for i in w.missing_indexes(45).tolist()}, {})
    w.close()
    run = read_run(w.path)
    assert run.frames.shape == (45, *SHAPE) and len(run.frame_ids) == 45
    assert run.received.nonzero()[0].tolist() == [0, 7, 40]
    assert run.frames[40].tobytes() == pixels(40).tobytes()
    assert len(run.missing) == 42


def test_rotating_files_present_one_virtual_dataset(writer, tmp_path):
    w = writer(frames=5, frames_per_file=2)
    for index in range(5):
        w.write(index, pixels(index), 0, 0)
    with pytest.raises(StorageError, match="beyond the run's 5 frames"):
        w.write(5, pixels(5), 0, 0)
    w.finalize(5, {}, {})
    w.close()
    assert sorted(p.name for p in tmp_path.glob("run_*.h5")) == [
        "run_000001.h5", "run_000002.h5", "run_000003.h5"]
    run = read_run(w.path)
    assert all(run.frames[i].tobytes() == pixels(i).tobytes() for i in range(5))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"compression": "gzip"}, "compression 'gzip': use 'bslz4' or none"),
    ({"frames": 0, "frames_per_file": 10}, "needs the run's frame count"),
])
def test_settings_that_cannot_work_are_config_errors(writer, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        writer(**kwargs)
    assert not (tmp_path / "run.h5").exists()


def test_origin_columns_and_partial_frames_are_recorded(writer):
    w = writer(frames=3, columns=("exposure_ns",))
    for index in range(3):
        w.write(index, pixels(index), 0, 0, flags=1 if index == 2 else 0, parts=4)
    w.finalize(3, {}, {}, per_frame={"exposure_ns": {0: 10, 2: 30}},
               partial={2: b"\x05"})
    w.close()
    with h5py.File(w.path, "r") as f:
        assert f["entry/frames/exposure_ns"][()].tolist() == [10, -1, 30]
        assert f["entry/frames/flags"][()].tolist() == [0, 0, 1]
        assert f["entry/partial/frame_id"][()].tolist() == [FIRST + 2]
        assert f["entry/partial/missing_parts"][()].tolist() == [[5]]


def test_an_origin_column_may_not_replace_a_record_of_the_writer(writer, tmp_path):
    with pytest.raises(ConfigError, match="would overwrite /entry/frames/worker"):
        writer(columns=("worker",))


def test_closing_twice_is_harmless(writer):
    w = writer(frames=1)
    w.finalize(1, {0: "never came"}, {})
    w.close()
    w.close()
    assert not w.is_open
    assert read_run(w.path).missing == {FIRST: "never came"}
