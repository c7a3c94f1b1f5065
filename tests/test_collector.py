"""The production collector: compressed direct chunks, SWMR, rotation, signals, full disk,
inspect and replay, through real processes and real files."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap

import h5py
import hdf5plugin
import numpy as np
import pytest

from conftest import finish, wait_run_started
from stream_node import ExitCode, SyntheticDetector, read_run
from stream_node.kernels import compression as bslz4
from test_pipeline import SHAPE, assert_ledger, start_roles

DET = SyntheticDetector((128, 256), "uint16")


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_worker_chunks_are_the_bytes_the_hdf5_filter_writes(tmp_path, dtype):
    frame = SyntheticDetector((64, 96), dtype).frame(3)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("d", shape=(1, 64, 96), chunks=(1, 64, 96), dtype=dtype,
                             **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        d[0] = frame
        _, by_hdf5 = d.id.read_direct_chunk((0, 0, 0))
    ours = bslz4.compress(frame)
    assert ours.tobytes() == by_hdf5
    assert bslz4.decompress(ours, frame.shape, frame.dtype).tobytes() == frame.tobytes()


def test_a_chunk_of_another_frame_is_refused():
    chunk = bslz4.compress(np.zeros((8, 8), np.uint16))
    with pytest.raises(Exception, match="a \\(4, 4\\) uint16 frame"):
        bslz4.decompress(chunk, (4, 4), np.uint16)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fanout", ["ring", "ipc"])
def test_compressed_run_reads_back_bit_exact_with_plain_h5py(node, tmp_path, fanout):
    from conftest import Endpoints

    path = tmp_path / "run.h5"
    source, collector, _procs = start_roles(node, Endpoints(tmp_path, fanout), path, 2,
                                           frames=120, extra_source=("--compress", "bslz4"))
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err
    assert finish(collector)[0] == ExitCode.OK
    with h5py.File(path, "r") as f:  # nothing of stream-node: what a scientist would do
        data = f["entry/data/data"]
        # filter 32008 with DECTRIS's parameters: block size 0 (default), LZ4 (2)
        assert tuple(data._filters["32008"])[-2:] == (0, 2)
        for i in range(120):
            assert data[i].tobytes() == DET.frame(i).tobytes()
        stored = data.id.get_storage_size()
        assert stored < data.size * 2 / 3  # Poisson counts compress well
    counters = read_run(path).counters
    assert counters["bytes_stored"] == stored and counters["bytes_written"] == 120 * 128 * 256 * 2


READER = textwrap.dedent("""
    import sys, h5py, numpy as np
    from stream_node import SyntheticDetector
    path, want = sys.argv[1], int(sys.argv[2])
    det = SyntheticDetector((128, 256), "uint16")
    f = h5py.File(path, "r", libver="latest", swmr=True)
    received, data, end = f["entry/frames/received"], f["entry/data/data"], f["entry/end_time"]
    while True:
        received.refresh()
        got = np.flatnonzero(received[()])
        if len(got) >= want:
            break
    # The flags first, then the data: a frame flagged at a flush is in the data from that flush.
    end.refresh()
    running = end[()] in (b"", "")
    data.refresh()
    for i in got:
        assert data[int(i)].tobytes() == det.frame(int(i)).tobytes(), i
    print(len(got), "running" if running else "finished")
""")


@pytest.mark.timeout(120)
def test_a_reader_process_reads_frames_while_the_run_is_written(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    source, _collector, _procs = start_roles(
        node, ipc, path, 2, frames=600, extra_source=("--rate", "150"),
        extra_collector=("--flush-interval", "0.2"))
    wait_run_started(source)
    reader = subprocess.run([sys.executable, "-c", READER, str(path), "60"], capture_output=True,
                            text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    seen, state = reader.stdout.split()
    assert int(seen) >= 60 and state == "running"
    code, _, err = finish(source)
    assert code == ExitCode.OK, err
    assert_ledger(read_run(path), 600)


@pytest.mark.timeout(120)
def test_rotated_files_are_one_dataset_through_the_master(node, ipc, tmp_path):
    path = tmp_path / "big.h5"
    source, collector, _procs = start_roles(node, ipc, path, 2, frames=100,
                                           extra_collector=("--frames-per-file", "40"))
    code, _, err = finish(source)
    assert code == ExitCode.OK, err
    assert finish(collector)[0] == ExitCode.OK
    parts = sorted(p.name for p in tmp_path.glob("big_*.h5"))
    assert parts == ["big_000001.h5", "big_000002.h5", "big_000003.h5"]
    with h5py.File(tmp_path / parts[2]) as f:
        assert f["entry/data/data"].shape == (20, 128, 256)
    os.chdir("/")  # the master finds its data files next to it, wherever the reader is
    with h5py.File(path) as f:
        assert f["entry/data/data"].is_virtual
    assert_ledger(read_run(path), 100)


@pytest.mark.timeout(120)
def test_sigterm_makes_the_collector_finalise_and_record_the_rest(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    source, collector, _procs = start_roles(node, ipc, path, 1, frames=10000,
                                           extra_source=("--rate", "200"))
    wait_run_started(source)
    reader = subprocess.run([sys.executable, "-c", READER, str(path), "20"], capture_output=True,
                            text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    collector.send_signal(signal.SIGTERM)
    assert finish(collector)[0] == ExitCode.ABORTED
    code, _, err = finish(source)
    assert code == ExitCode.ABORTED and "collector stopped" in err, err
    run = read_run(path)
    written = np.flatnonzero(run.received)
    assert len(written) >= 20 and len(written) + len(run.missing) == 10000
    assert set(run.missing) == set(range(10000)) - set(written.tolist())
    assert "SIGTERM" in run.missing[9999]
    for i in written[::7]:
        assert run.frames[i].tobytes() == DET.frame(int(i)).tobytes()
    assert run.metadata["end_time"]


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))


@pytest.mark.timeout(120)
def test_full_disk_stops_the_run_clearly_and_keeps_what_was_written(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    control, fanout, fanin = ipc("control"), ipc("fanout"), ipc("fanin")
    timing = ("--peer-timeout", "3", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--flush-interval", "0.1", *timing, preexec_fn=_small_file_limit)
    node("worker", "--control", control, "--input", fanout, "--output", fanin, *timing)
    source = node("source", "--control", control, "--data", fanout, "--frames", "500",
                  "--shape", SHAPE, "--rate", "400", *timing)
    code, _, err = finish(source)
    ccode, _, cerr = finish(collector)
    assert ccode == ExitCode.IO, cerr
    assert code == ExitCode.IO and str(path) in err and "the last frame written was" in err, err
    # Still a valid file, as of its last flush (SWMR readers open it as it is; h5clear -s would
    # make it look closed): every frame it says it has is there and right.
    with h5py.File(path, "r", swmr=True) as f:
        received = np.flatnonzero(f["entry/frames/received"][()])
        assert len(received) > 5
        for i in received:
            assert f["entry/data/data"][i].tobytes() == DET.frame(int(i)).tobytes()
    assert len(np.flatnonzero(read_run(path).received)) == len(received)


@pytest.mark.timeout(120)
def test_inspect_and_replay_a_run(node, ipc, tmp_path):
    first = tmp_path / "first.h5"
    source, *_ = start_roles(node, ipc, first, 2, frames=80,
                             extra_source=("--compress", "bslz4"))
    assert finish(source)[0] == ExitCode.OK
    out = subprocess.run([sys.executable, "-m", "stream_node", "inspect", str(first)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for text in ("written          80 of 80", "compression", "32008", "missing          0",
                 "run_id_hex", "frames/s"):
        assert text in out.stdout, out.stdout
    second = tmp_path / "second.h5"
    source, *_ = start_roles(node, ipc, second, 1, frames=1000,
                             extra_source=("--from", f"file://{first}"))
    code, stdout, err = finish(source)
    assert code == ExitCode.OK and "80 written of 80 sent" in stdout, err
    replayed = read_run(second)
    assert_ledger(replayed, 80)
    assert replayed.metadata["start"]["replay_of_run_id"] == read_run(first).metadata["run_id"]
    bad = subprocess.run([sys.executable, "-m", "stream_node", "inspect", str(tmp_path / "no.h5")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == ExitCode.CONFIG and "cannot open" in bad.stderr


@pytest.mark.timeout(120)
def test_a_killed_collector_leaves_a_valid_file_up_to_its_last_flush(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    source, collector, _ = start_roles(node, ipc, path, 1, frames=10000,
                                       extra_source=("--rate", "300"),
                                       extra_collector=("--flush-interval", "0.1"))
    wait_run_started(source)
    reader = subprocess.run([sys.executable, "-c", READER, str(path), "30"], capture_output=True,
                            text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    collector.kill()
    finish(collector)
    assert finish(source)[0] == ExitCode.PEER_TIMEOUT
    run = read_run(path)  # opens the never-closed file as of its last flush
    written = np.flatnonzero(run.received)
    assert len(written) >= 30
    for i in written:
        assert run.frames[i].tobytes() == DET.frame(int(i)).tobytes()


@pytest.mark.timeout(120)
def test_frames_that_died_with_a_worker_are_recorded_naming_it(node, ipc, tmp_path):
    """PUSH fan-out: a frozen worker's queue fills; killed, its frames are gone. The ledger has
    every one of them, saying which worker ended without a report."""
    path = tmp_path / "run.h5"
    source, _collector, workers = start_roles(node, ipc, path, 2, frames=400,
                                             extra_source=("--rate", "300"),
                                             extra_collector=("--flush-interval", "0.1"))
    wait_run_started(source)
    workers[0].send_signal(signal.SIGSTOP)  # frames keep coming to it until its queue is full
    reader = subprocess.run([sys.executable, "-c", READER, str(path), "80"], capture_output=True,
                            text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    workers[0].kill()
    code, _, err = finish(source)
    assert code == ExitCode.FRAMES_MISSING, err
    run = read_run(path)
    assert run.missing and len(run.missing) + int(run.received.sum()) == 400
    for reason in run.missing.values():
        assert "worker w0 ended without a final report" in reason, reason
