"""End to end through real processes, real sockets and a real HDF5 file."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import finish, wait_run_started
from stream_node import ExitCode, SyntheticDetector, load_run, read_run, run_local_pipeline

SHAPE = "128x256"


def start_roles(node, endpoints, path, workers, frames=300, dtype="uint16", extra_source=(),
                extra_collector=(), extra_worker=(), ready_timeout=20):
    control, fanout, fanin = endpoints("control"), endpoints("fanout"), endpoints("fanin")
    timing = ("--peer-timeout", "3", "--ready-timeout", str(ready_timeout))
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "3", *timing, *extra_collector)
    procs = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                  "--name", f"w{i}", "--index", str(i), *timing, *extra_worker)
             for i in range(workers)]
    source = node("source", "--control", control, "--data", fanout, "--workers", str(workers),
                  "--frames", str(frames), "--shape", SHAPE, "--dtype", dtype, *timing,
                  *extra_source)
    return source, collector, procs


def assert_ledger(run, frames, dtype="uint16"):
    """Every id 0..frames-1 once in the file, byte-equal to what the source generated."""
    assert run.missing == {}
    assert run.frame_ids.tolist() == list(range(frames))
    assert run.received.all()
    det = SyntheticDetector((128, 256), dtype)
    for i in range(frames):
        assert run.frames[i].tobytes() == det.frame(i).tobytes(), f"frame {i} differs"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 3])
def test_every_frame_written_once_byte_equal(node, endpoints, tmp_path, workers):
    path = tmp_path / "run.h5"
    source, collector, procs = start_roles(node, endpoints, path, workers)
    code, out, err = finish(source)
    assert code == ExitCode.OK, err
    assert "missing    0" in out and "300 written of 300 sent" in out
    for proc in (collector, *procs):
        assert finish(proc)[0] == ExitCode.OK
    run = read_run(path)
    assert_ledger(run, 300)
    reports = run.counters["reports"]["workers"]
    assert sum(r["frames"] for r in reports.values()) == 300
    assert run.counters["frames_written"] == 300 and run.counters["duplicates"] == 0
    if workers == 3:
        with __import__("h5py").File(path) as f:
            used = set(f["entry/frames/worker"][()].tolist())
        assert len(used) > 1, "work was not shared between workers"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dtype", ["uint32", "float32"])
def test_other_dtypes_travel_bit_exact(node, ipc, tmp_path, dtype):
    path = tmp_path / "run.h5"
    source, _collector, _procs = start_roles(node, ipc, path, 2, frames=50, dtype=dtype)
    code, _, err = finish(source)
    assert code == ExitCode.OK, err
    run = read_run(path)
    assert run.frames.dtype == np.dtype(dtype)
    assert_ledger(run, 50, dtype)


@pytest.mark.timeout(120)
def test_demo_pipeline_in_process_api(tmp_path):
    path = tmp_path / "demo.h5"
    summary = run_local_pipeline(path, frames=200, shape=(128, 256), workers=2)
    assert (summary.frames_sent, summary.frames_written, summary.missing) == (200, 200, 0)
    assert summary.exit_code == ExitCode.OK
    assert_ledger(read_run(path), 200)
    assert load_run(path, frames=slice(10, 20)).frames.shape == (10, 128, 256)


@pytest.mark.timeout(120)
def test_killed_ring_worker_loses_nothing_silently(node, tmp_path):
    """SIGKILL one of two ring workers mid-run: frames it held in the ring go to the other; any
    frame that died in its socket queue is in the file's missing record with a reason."""
    import os
    import signal

    from conftest import Endpoints

    path = tmp_path / "run.h5"
    source, _collector, procs = start_roles(node, Endpoints(tmp_path, "ring"), path, 2,
                                           frames=600, extra_source=("--rate", "300"))
    wait_run_started(source)
    os.kill(procs[0].pid, signal.SIGKILL)
    code, _out, err = finish(source)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(600))  # every id accounted for ...
    assert not written & set(run.missing)  # ... exactly once
    assert all("drain timeout" in reason and "worker w0 ended without a final report" in reason
               for reason in run.missing.values())
    det = SyntheticDetector((128, 256), "uint16")
    for i in sorted(written)[::50]:
        assert run.frames[i].tobytes() == det.frame(i).tobytes()
    assert run.counters["reports"]["workers"]["w0"] == {"error": "no final report"}
