"""Prometheus exposition of a node's status snapshot on an optional HTTP port.

Built from the same snapshot the status socket answers with, at scrape time: nothing is counted
twice and the data path pays nothing. Counters are exported as counters (Prometheus computes the
rates), levels as gauges; every series carries `role` and `node` labels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)

from stream_node._version import __version__
from stream_node.model.errors import ConfigError
from stream_node.ops.status import Snapshot

PREFIX = "stream_node"
STATES = ("waiting", "running", "draining", "done")
DIRECTED = {"frames_in", "frames_out", "bytes_in", "bytes_out"}
# Per-node event counters: their metric names (unit last, as Prometheus asks) and HELP lines.
EVENTS = {
    "stalls": ("stalls", "Times a frame waited because the next hop could not take it"),
    "retries": ("retried_frames", "Frames sent again after a peer failed"),
    "failed": ("failed_frames", "Frames a kernel could not process (recorded missing)"),
    "missing": ("missing_frames", "Frames recorded missing in the file's ledger"),
    "duplicates": ("duplicate_frames", "Frames that arrived more than once (written once)"),
    "partial": ("partial_frames", "Frames written with some of their data missing"),
    "bytes_stored": ("stored_bytes", "Bytes written to disk, after compression"),
}
# Levels that travel among the counters but go up and down: exported as gauges.
LEVELS = {
    "in_flight": ("in_flight_frames", "Frames sent and not yet acknowledged (reliable mode)"),
}

class SnapshotCollector:
    """A prometheus_client collector that turns one status snapshot into metric families."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.started = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        labels = {"role": str(snap.get("role", "?")), "node": str(snap.get("name", "?"))}
        names, values = list(labels), list(labels.values())

        def gauge(name: str, doc: str, value: Any) -> Iterator[Metric]:
            if value is not None:
                g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
                g.add_metric(values, float(value))
                yield g

        info = InfoMetricFamily(f"{PREFIX}_run", "The run this node takes part in",
                                labels=names)
        info.add_metric(values, {"run_id": f"{int(snap.get('run_id') or 0):#018x}",
                                 "version": __version__})
        yield info
        state = StateSetMetricFamily(f"{PREFIX}_state", "Where the node is in its run",
                                     labels=names)
        state.add_metric(values, {s: s == snap.get("state") for s in STATES})
        yield state

        counters = snap.get("counters") or {}
        for unit in ("frames", "bytes"):
            family = CounterMetricFamily(f"{PREFIX}_{unit}", f"{unit.capitalize()} taken in "
                                         "or handed on, by direction",
                                         labels=[*names, "direction"])
            for direction in ("in", "out"):
                if f"{unit}_{direction}" in counters:
                    family.add_metric([*values, direction], counters[f"{unit}_{direction}"])
            yield family
        for key, value in sorted(counters.items()):
            # None: a value this node does not keep in its mode (the source's in_flight
            # without --reliable); a sample of None would fail the whole scrape.
            if key in DIRECTED or value is None:
                continue
            if key in LEVELS:
                yield from gauge(*LEVELS[key], value)
            else:
                name, doc = EVENTS.get(key, (key, key.replace("_", " ").capitalize()))
                family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
                family.add_metric(values, value)
                yield family
        dropped = CounterMetricFamily(f"{PREFIX}_dropped_messages",
                                      "Messages refused, by reason (foreign run, malformed ...)",
                                      labels=[*names, "reason"])
        for reason, n in sorted((snap.get("dropped") or {}).items()):
            dropped.add_metric([*values, reason], n)
        yield dropped
        tap = snap.get("tap")
        if tap:
            family = CounterMetricFamily(f"{PREFIX}_tap_frames", "Frames offered to the "
                                         "latest-frame tap, by outcome",
                                         labels=[*names, "outcome"])
            for outcome in ("sent", "dropped", "skipped"):
                family.add_metric([*values, outcome], tap.get(outcome, 0))
            yield family

        ring = snap.get("ring") or {}
        yield from gauge("ring_occupancy_slots", "Ring slots holding frames not yet released",
                         ring.get("occupancy"))
        yield from gauge("ring_slots", "Slots in the ring", ring.get("slots"))
        yield from gauge("queue_depth_frames", "Frames queued inside the node",
                         snap.get("queue_depth"))
        yield from gauge("frames_expected", "Frames in the run, when known",
                         snap.get("frames_expected"))
        yield from gauge("memory_bound_bytes", "Most memory the node's links and ring can hold",
                         snap.get("memory_bound_bytes"))
        yield from gauge("uptime_seconds", "Seconds since the node started serving metrics",
                         time.monotonic() - self.started)


class MetricsServer:
    """`/metrics` on `port` (all interfaces, as Prometheus exporters do), from a thread of its
    own; port 0 picks a free one (`port` then says which)."""

    def __init__(self, port: int, snapshot: Snapshot, host: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        try:
            self.httpd, self.thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror} "
                              "(choose a free port with --metrics-port)") from None
        self.host = host
        self.port = int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
