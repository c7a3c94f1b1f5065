"""The `latest` tap, `subscribe`, `stream-node view` and the live terminal view, on real runs."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from rich.console import Console

import stream_node
from conftest import finish, free_tcp_endpoint, wait_run_started
from stream_node import ExitCode, SyntheticDetector, query_status, read_run, stamped_id
from stream_node.ops.live import LiveView
from test_pipeline import assert_ledger
from test_status import finish_all, start_watched

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("compress", ["none", "bslz4"])
def test_subscribe_yields_the_newest_frames_with_their_headers(node, ipc, tmp_path, compress):
    tap = free_tcp_endpoint()
    source, others, _ = start_watched(node, ipc, tmp_path / "run.h5", workers=2, frames=300,
                                      rate=100, collector=("--tap", tap, "--tap-rate", "20"),
                                      source=("--compress", compress))
    frames = stream_node.subscribe(tap, timeout_s=20)
    seen = [next(frames) for _ in range(5)]
    frames.close()
    detector = SyntheticDetector((128, 256), "uint16")
    ids = [header.frame_id for header, _ in seen]
    assert ids == sorted(set(ids)), ids  # newest first is never older than the last one
    for header, frame in seen:
        assert frame.shape == (128, 256) and frame.dtype == np.uint16
        assert stamped_id(frame) == header.frame_id  # the frame is the one its header names
        assert np.array_equal(frame, detector.frame(header.frame_id))
        assert header.run_id != 0
    finish_all(source, others, 300)


def _rate(summary: str) -> float:
    return float(re.search(r"rate\s+(\d+) frames/s", summary).group(1))


@pytest.mark.timeout(120)
def test_a_stalled_subscriber_costs_the_run_no_frame_and_no_speed(node, ipc, tmp_path):
    """The tap's worst case: a subscriber that connects and never reads. The tap offers every
    frame (rate limit far above the run's), its queue fills, and from then on each frame is
    dropped for the tap at once; the file must still get every frame. The data rate with and
    without the subscriber is printed (a measurement, not asserted: 2 shared cores)."""
    frames, rates = 600, {}
    for attached in (False, True):
        tap = free_tcp_endpoint()
        path = tmp_path / f"run-{attached}.h5"
        stalled = zmq.Context.instance().socket(zmq.SUB)
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.RCVBUF, 1 << 16)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            if attached:
                stalled.connect(tap)
            source, others, _ = start_watched(
                node, ipc, path, workers=2, frames=frames, rate=0,
                collector=("--tap", tap, "--tap-rate", "100000"))
            code, out, err = finish(source)
            assert code == ExitCode.OK, err
            rates[attached] = _rate(out)
            for proc in others:
                assert finish(proc)[0] == ExitCode.OK
        finally:
            stalled.close()
        assert_ledger(read_run(path), frames)
    print(f"\nrun with no subscriber: {rates[False]:.0f} frames/s; with a stalled subscriber: "
          f"{rates[True]:.0f} frames/s ({rates[True] / rates[False]:.2f}x)")


@pytest.mark.timeout(90)
def test_the_tap_drops_for_a_stalled_subscriber_and_counts_it(node, ipc, tmp_path):
    tap = free_tcp_endpoint()
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 1 << 16)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(tap)
    try:
        source, others, status = start_watched(
            node, ipc, tmp_path / "run.h5", workers=1, frames=400, rate=100,
            collector=("--tap", tap, "--tap-rate", "100000"))
        wait_run_started(source)
        counters, deadline = {}, time.monotonic() + 30
        while time.monotonic() < deadline:  # poll the collector's status while it runs
            answer = query_status([status["collector"]], 2)[status["collector"]]
            counters = answer.get("tap") or counters
            if counters.get("dropped", 0) > 0 or "error" in answer:
                break
            time.sleep(0.1)  # a poll interval: the loop checks the state it waits for
        assert counters["dropped"] > 0 and counters["sent"] > 0, counters
        finish_all(source, others, 400)
    finally:
        stalled.close()


@pytest.mark.timeout(90)
def test_live_view_shows_every_node_with_rates_and_a_progress_bar(node, ipc, tmp_path):
    source, others, status = start_watched(node, ipc, tmp_path / "run.h5", workers=2,
                                           frames=300, rate=150)
    out = io.StringIO()
    view = LiveView(list(status.values()), interval_s=0.2,
                    console=Console(file=out, width=150, force_terminal=False))
    wait_run_started(source)
    shown = view.watch()  # returns once the run is over: every node stopped answering
    finish_all(source, others, 300)
    text = out.getvalue()
    for word in ("source", "collector", "worker w0", "worker w1", "frames/s", "GB/s",
                 "frames written", "ETA"):
        assert word in text, text[-3000:]
    assert re.search(r"\d+/300", text), text[-3000:]
    assert {st["role"] for st in shown.values()} == {"source", "worker", "collector"}
    assert all(st["state"] == "gone" for st in shown.values())


@pytest.mark.timeout(90)
def test_demo_shows_the_live_view_unless_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal (capsys is not one)
    monkeypatch.setenv("COLUMNS", "120")
    summary = stream_node.run_local_pipeline(tmp_path / "live.h5", frames=100, shape=(64, 64),
                                             rate=100, live=True)
    assert summary.missing == 0
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)  # colours, cursor
    assert "collector" in err and "worker w1" in err and "frames written" in err, err
    quiet = subprocess.run([sys.executable, "-m", "stream_node", "demo", "--frames", "20",
                            "--shape", "32x32", "--quiet", "--output", str(tmp_path / "q.h5")],
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert "20 written of 20 sent" in quiet.stdout and "frames written" not in quiet.stderr


@pytest.mark.timeout(90)
def test_view_writes_the_newest_frame_as_png(node, ipc, tmp_path):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    tap, png = free_tcp_endpoint(), tmp_path / "latest.png"
    source, others, _ = start_watched(node, ipc, tmp_path / "run.h5", workers=1, frames=400,
                                      rate=100, collector=("--tap", tap))
    viewer = node("view", tap, "--png", str(png), "--every", "0.3", "--count", "2",
                  "--timeout", "20")
    code, _, err = finish(viewer)
    assert code == ExitCode.OK, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.part"))  # written atomically
    finish_all(source, others, 400)


@pytest.mark.timeout(30)
def test_view_of_a_silent_tap_ends_with_peer_timeout(node, tmp_path):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    viewer = node("view", free_tcp_endpoint(), "--png", str(tmp_path / "x.png"),
                  "--timeout", "1")
    code, _, err = finish(viewer)
    assert code == ExitCode.PEER_TIMEOUT and "no frame from the tap" in err, err


@pytest.mark.timeout(120)
def test_live_analysis_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "live_analysis.py"),
                           str(tmp_path / "run.h5")], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"analysed [1-9]\d* frames live; the file has all 300, missing 0",
                     proc.stdout), proc.stdout[-2000:]


@pytest.mark.timeout(30)
def test_view_without_a_display_says_to_use_png(node, monkeypatch):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    code, _, err = finish(node("view", free_tcp_endpoint(), "--timeout", "1"))
    assert code == ExitCode.CONFIG and "use --png PATH" in err, err
