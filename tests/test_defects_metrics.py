"""Issue #18 item 7.1: the source's `/metrics` in the default (not reliable) mode.

The source reports `in_flight` as None when it keeps no credit window; the exporter turned that
into a counter sample and every scrape answered HTTP 500, so the ring's metrics were never seen.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_run_started
from stream_node.links.ring_links import default_ring_slots
from stream_node.ops.metrics import SnapshotCollector
from test_status import FRAME_BYTES, finish_all, free_port, start_watched


def scrape(port: int) -> dict:
    """One GET of /metrics; an HTTP error fails with the status and the body the server sent."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            text = reply.read().decode()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"/metrics answered {exc.code}: {exc.read()[:500]!r}") from None
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.mark.timeout(90)
def test_source_metrics_are_served_with_the_ring_in_the_default_mode(node, ipc, tmp_path):
    port = free_port()
    ring = f"ring://dm{os.getpid()}-{tmp_path.name}"
    source, others, _ = start_watched(node, ipc, tmp_path / "run.h5", workers=1, frames=300,
                                      rate=100, fanout=ring,
                                      source=("--metrics-port", str(port)))
    wait_run_started(source)
    deadline = time.monotonic() + 30
    while True:  # scrape until frames went out (or the deadline says they never do)
        families = scrape(port)
        out = [s for s in families["stream_node_frames"].samples
               if s.labels.get("direction") == "out"]
        if (out and out[0].value > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a poll interval: the loop checks the scraped state
    assert out and out[0].value > 0
    assert out[0].labels["role"] == "source"
    slots = families["stream_node_ring_slots"].samples[0].value
    occupancy = families["stream_node_ring_occupancy_slots"].samples[0].value
    assert slots == default_ring_slots(FRAME_BYTES) and 0 <= occupancy <= slots
    assert families["stream_node_ring_occupancy_slots"].type == "gauge"
    finish_all(source, others, 300)


def test_a_counter_the_node_does_not_keep_is_left_out_not_a_scrape_error():
    """In-process: a None value (a counter this mode has no use for) is not exported."""
    snap = {"role": "source", "name": "source", "counters": {"frames_out": 3, "in_flight": None,
                                                             "retries": 0}}
    names = {m.name for m in SnapshotCollector(lambda: snap).collect()}
    assert "stream_node_retried_frames" in names
    assert not any("in_flight" in name for name in names)


def test_in_flight_is_a_gauge_when_the_source_keeps_a_credit_window():
    """Reliable mode: frames in flight go up and down, so they are a gauge, not a `_total`."""
    snap = {"role": "source", "name": "source", "counters": {"in_flight": 5}}
    families = {m.name: m for m in SnapshotCollector(lambda: snap).collect()}
    assert families["stream_node_in_flight_frames"].type == "gauge"
    assert families["stream_node_in_flight_frames"].samples[0].value == 5
