"""Kernels in a real pipeline: the file holds exactly what the numpy references compute offline,
and a kernel that fails on a frame costs that frame only, recorded with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import finish
from stream_node import ExitCode, SyntheticDetector, read_run, stamped_id
from stream_node.kernels import build_chain
from test_pipeline import start_roles

SHAPE = (128, 256)


@pytest.fixture
def chain_file(tmp_path):
    rng = np.random.default_rng(5)
    pedestal = rng.uniform(0.0, 1.0, (3, *SHAPE)).astype(np.float32)
    gain = rng.uniform(0.5, 1.5, (3, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "pedestal.npy", pedestal)
    np.save(tmp_path / "gain.npy", gain)
    spec = [{"kernel": "gain_correction", "pedestal": str(tmp_path / "pedestal.npy"),
             "gain": str(tmp_path / "gain.npy")},
            {"kernel": "photonise", "photon_energy_kev": 1.0, "threshold": 0.5},
            {"kernel": "bin2x2"}]
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(spec))
    return path, spec


@pytest.mark.timeout(180)
@pytest.mark.parametrize("compress", ["none", "bslz4"])
def test_worker_chain_writes_what_the_references_compute(node, ipc, tmp_path, chain_file,
                                                         compress):
    path, spec = chain_file
    out = tmp_path / "run.h5"
    source, _collector, _ = start_roles(
        node, ipc, out, 2, frames=60,
        extra_source=("--kernels", str(path), "--compress", compress))
    code, _stdout, err = finish(source, timeout=150)
    assert code == ExitCode.OK, err
    run = read_run(out)
    reference = build_chain(spec, SHAPE, np.uint16, backend="reference")
    det = SyntheticDetector(SHAPE, "uint16")
    assert run.frames.shape == (60, 64, 128)
    for i in range(60):
        expected = reference.apply(det.frame(i), frame_id=i)
        assert run.frames[i].dtype == expected.dtype
        assert np.array_equal(run.frames[i], expected), f"frame {i}"
    workers = run.counters["reports"]["workers"]
    assert sum(w["frames"] for w in workers.values()) == 60
    assert all("kernels" in w for w in workers.values())


def fail_on_frame(frame: np.ndarray, out: np.ndarray, frame_id: int = 0) -> None:
    """A user kernel with a bug that shows on one frame (synthetic frames carry their id)."""
    if stamped_id(frame) == frame_id:
        raise ValueError("cannot handle this frame")
    out[...] = frame


@pytest.mark.timeout(180)
def test_a_failing_user_kernel_costs_only_its_frame(node, ipc, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the workers import it
    spec = [{"kernel": "python:test_kernel_pipeline.fail_on_frame", "frame_id": 7}]
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "run.h5"
    source, _collector, _ = start_roles(node, ipc, out, 1, frames=30,
                                       extra_source=("--kernels", str(path)))
    code, _, err = finish(source, timeout=150)
    assert code == ExitCode.FRAMES_MISSING, err
    run = read_run(out)
    assert list(run.missing) == [7]
    assert "fail_on_frame" in run.missing[7] and "frame 7" in run.missing[7], run.missing
    assert "cannot handle this frame" in run.missing[7]
    assert run.received.sum() == 29
    assert run.counters["reports"]["workers"]["w0"]["failed"] == 1
