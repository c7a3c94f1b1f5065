"""Status sockets, `stream-node status` and Prometheus metrics, against real running nodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from conftest import finish, free_tcp_endpoint, wait_run_started
from stream_node import ExitCode, query_status, read_run
from stream_node.links.ring_links import default_ring_slots
from stream_node.model.errors import ConfigError
from stream_node.ops.metrics import MetricsServer
from stream_node.ops.status import RateMeter, StatusServer
from test_pipeline import SHAPE, assert_ledger

FRAME_BYTES = 2 * int(SHAPE.split("x")[0]) * int(SHAPE.split("x")[1])  # uint16 frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_watched(node, ipc, path, workers=2, frames=300, rate=100, collector=(), source=(),
                  fanout=None):
    """A pipeline whose every node answers status requests on its own ipc endpoint; the rate
    keeps the run going long enough to be watched. Returns (source, others, status endpoints)."""
    control, fanout, fanin = ipc("control"), fanout or ipc("fanout"), ipc("fanin")
    timing = ("--peer-timeout", "3", "--ready-timeout", "20")
    status = {name: ipc(f"status-{name}")
              for name in ["source", "collector", *(f"w{i}" for i in range(workers))]}
    others = [node("collector", "--control", control, "--input", fanin, "--file", str(path),
                   "--drain-timeout", "3", "--status", status["collector"], *timing, *collector)]
    others += [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                    "--name", f"w{i}", "--index", str(i), "--status", status[f"w{i}"], *timing)
               for i in range(workers)]
    src = node("source", "--control", control, "--data", fanout, "--workers", str(workers),
               "--frames", str(frames), "--shape", SHAPE, "--rate", str(rate),
               "--status", status["source"], *timing, *source)
    return src, others, status


def finish_all(source, others, frames):
    code, out, err = finish(source)
    assert code == ExitCode.OK, err
    assert f"{frames} written of {frames} sent" in out
    for proc in others:
        assert finish(proc)[0] == ExitCode.OK


def status_cli(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream_node", "status", *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


@pytest.mark.timeout(90)
def test_status_prints_every_live_node_and_names_the_dead_one_within_its_timeout(
        node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    source, others, status = start_watched(node, ipc, path, frames=400)
    wait_run_started(source)
    dead = free_tcp_endpoint()  # nothing listens there: a node that died
    proc, took = status_cli(*status.values(), dead, "--timeout", "1", "--json")
    assert proc.returncode == ExitCode.PEER_TIMEOUT, proc.stderr
    # The deadline holds for the dead node (plus interpreter start-up, not a second wait).
    assert took < 8, took
    assert dead in proc.stderr and "no answer within 1 s" in proc.stderr
    answers = json.loads(proc.stdout)
    assert "error" in answers[dead]
    live = [answers[e] for e in status.values()]
    assert [(st["role"], st["name"]) for st in live] == [
        ("source", "source"), ("collector", "collector"), ("worker", "w0"), ("worker", "w1")]
    assert len({st["run_id"] for st in live}) == 1 and live[0]["run_id"] != 0
    for st in live:
        assert st["state"] in ("waiting", "running", "draining"), st
        assert {"frames", "bytes", "counters", "dropped", "rates", "pid", "uptime_s"} <= set(st)
    assert live[0]["frames_expected"] == 400
    assert live[0]["memory_bound_bytes"] > 0 and "link memory bound" in live[0]["memory_bound"]
    assert live[1]["memory_bound_bytes"] > 0

    table, _ = status_cli(*status.values(), "--timeout", "5")
    assert table.returncode == ExitCode.OK, table.stderr
    for word in ("source", "collector", "worker w0", "worker w1", "frames/s", "running"):
        assert word in table.stdout, table.stdout
    finish_all(source, others, 400)
    assert_ledger(read_run(path), 400)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fanout", ["ipc", "ring"])
def test_counters_grow_and_rates_are_measured_while_frames_flow(node, ipc, tmp_path, fanout):
    ring = f"ring://st{os.getpid()}-{tmp_path.name}" if fanout == "ring" else None
    source, others, status = start_watched(node, ipc, tmp_path / "run.h5", workers=1,
                                           frames=400, rate=100, fanout=ring)
    wait_run_started(source)
    deadline = time.monotonic() + 30
    while True:  # the rate needs a few samples of a running collector: poll, with a deadline
        col = query_status([status["collector"]], 2)[status["collector"]]
        if col.get("rates", {}).get("frames_per_s", 0) > 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a poll interval, not a synchronisation: the loop checks the state
    assert col["state"] == "running" and 20 < col["rates"]["frames_per_s"] < 200, col
    assert col["counters"]["frames_in"] == col["frames"] > 0
    assert col["rates"]["gbytes_per_s"] > 0
    src = query_status([status["source"]], 2)[status["source"]]
    assert src["counters"]["frames_out"] >= col["frames"]
    if ring:  # the source's ring: its occupancy and size, read from the status thread
        slots = default_ring_slots(FRAME_BYTES)  # the default: 384 MiB of frames, 16 to 1024
        assert src["ring"]["slots"] == slots and 0 <= src["ring"]["occupancy"] <= slots
        assert "ring" in src["memory_bound"]
    else:
        assert src["ring"] is None
    finish_all(source, others, 400)


@pytest.mark.timeout(90)
def test_prometheus_metrics_are_served_during_a_run(node, ipc, tmp_path):
    port = free_port()
    source, others, _ = start_watched(node, ipc, tmp_path / "run.h5", workers=1, frames=400,
                                      collector=("--metrics-port", str(port)))
    wait_run_started(source)
    deadline = time.monotonic() + 30
    while True:  # scrape until frames have been written (or the deadline says they never are)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            text = reply.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        frames_in = [s for s in families["stream_node_frames"].samples
                     if s.labels.get("direction") == "in"]
        if (frames_in and frames_in[0].value > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a poll interval: the loop checks the scraped state
    labels = {"role": "collector", "node": "collector"}
    assert frames_in[0].value > 0 and frames_in[0].name == "stream_node_frames_total"
    assert frames_in[0].labels == {**labels, "direction": "in"}
    assert families["stream_node_frames"].type == "counter"
    assert families["stream_node_bytes"].samples[0].value == frames_in[0].value * 128 * 256 * 2
    for name in ("stream_node_missing_frames", "stream_node_duplicate_frames",
                 "stream_node_dropped_messages", "stream_node_stored_bytes"):
        assert families[name].type == "counter", name
    assert "stream_node_tap_frames" not in families  # this collector has no tap
    gauges = {name: families[name].samples[0].value for name in (
        "stream_node_frames_expected", "stream_node_memory_bound_bytes",
        "stream_node_uptime_seconds")}
    assert gauges["stream_node_frames_expected"] == 400
    assert gauges["stream_node_memory_bound_bytes"] > 0 and gauges["stream_node_uptime_seconds"] > 0
    state = {s.labels["stream_node_state"]: s.value
             for s in families["stream_node_state"].samples}
    assert state["running"] == 1 and sum(state.values()) == 1
    info = families["stream_node_run_info"].samples[0]
    assert info.labels["run_id"].startswith("0x") and info.value == 1
    finish_all(source, others, 400)


@pytest.mark.timeout(30)
def test_query_status_answers_by_its_deadline_and_reports_what_failed(ipc):
    snapshot = {"role": "worker", "name": "w9", "run_id": 7, "state": "running", "frames": 3,
                "bytes": 30}
    server = StatusServer(zmq.Context.instance(), ipc("status"), lambda: dict(snapshot))
    broken = StatusServer(zmq.Context.instance(), ipc("broken"), lambda: 1 / 0)
    try:
        dead, bad = free_tcp_endpoint(), "nonsense://x"
        t0 = time.monotonic()
        answers = query_status([ipc("status"), dead, bad, ipc("broken")], timeout_s=0.5)
        assert time.monotonic() - t0 < 1.5
        assert answers[ipc("status")]["name"] == "w9" and answers[ipc("status")]["pid"] > 0
        assert "no answer within 0.5 s" in answers[dead]["error"]
        assert "cannot ask" in answers[bad]["error"]
        assert "snapshot failed" in answers[ipc("broken")]["error"]
        # Any REQ client can ask (the reply envelope is a REQ's); unknown requests are named.
        req = zmq.Context.instance().socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ipc("status"))
        req.send(b'{"request": "restart"}')
        assert req.poll(5000)
        assert "unknown request 'restart'" in json.loads(req.recv())["error"]
        req.close()
    finally:
        server.close()
        broken.close()


@pytest.mark.timeout(30)
def test_busy_status_endpoint_and_metrics_port_are_refused_clearly():
    endpoint, port = free_tcp_endpoint(), free_port()
    server = StatusServer(zmq.Context.instance(), endpoint, dict)
    metrics = MetricsServer(port, dict, host="127.0.0.1")
    try:
        with pytest.raises(ConfigError, match="status endpoint"):
            StatusServer(zmq.Context.instance(), endpoint, dict)
        with pytest.raises(ConfigError, match=f"metrics on port {port}"):
            MetricsServer(port, dict, host="127.0.0.1")
    finally:
        server.close()
        metrics.close()


def test_rate_meter_averages_over_its_window():
    meter = RateMeter(window_s=1.0)
    assert meter.rates()["frames_per_s"] == 0.0
    for i in range(11):  # 100 frames/s of 1 MB for 2 s, sampled every 0.2 s
        meter.sample(i * 0.2, i * 20, i * 20 * 10**6)
    assert meter.rates()["frames_per_s"] == pytest.approx(100)
    assert meter.rates()["gbytes_per_s"] == pytest.approx(0.1)
    assert meter.samples[0][0] >= 0.8  # old samples leave the window


def test_rate_meter_starts_again_when_the_counters_do():
    """A served stage's counters begin at 0 with each run: its rate is never negative."""
    meter = RateMeter(window_s=1.0)
    for i in range(5):
        meter.sample(i * 0.2, 100 + i * 20, 0)
    meter.sample(1.0, 0, 0)  # the next run
    assert meter.rates()["frames_per_s"] == 0.0
    meter.sample(1.2, 10, 0)
    assert meter.rates()["frames_per_s"] == pytest.approx(50)


def test_status_needs_an_endpoint():
    proc, _ = status_cli()
    assert proc.returncode == ExitCode.USAGE
