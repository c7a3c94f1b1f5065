"""What a node serves about itself: the status socket and the Prometheus endpoint, each only
when asked for."""

from __future__ import annotations

import logging

import zmq

from stream_node.ops.status import Snapshot, StatusServer

log = logging.getLogger(__name__)


class NodeStatus:
    """What a node serves about itself: the status socket and the Prometheus endpoint, each
    only when asked for. `close()` stops both; it is safe to call when neither was asked for."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None, metrics_port: int | None,
                 snapshot: Snapshot) -> None:
        self.server = StatusServer(ctx, endpoint, snapshot) if endpoint else None
        self.metrics = None
        if metrics_port is not None:
            from stream_node.ops.metrics import MetricsServer  # prometheus_client only if asked

            try:
                self.metrics = MetricsServer(metrics_port, snapshot)
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.metrics is not None:
            self.metrics.close()


def serve_status(ctx: zmq.Context, endpoint: str | None, metrics_port: int | None,
                 snapshot: Snapshot) -> NodeStatus:
    """Start answering status requests and metrics scrapes for one node."""
    served = NodeStatus(ctx, endpoint, metrics_port, snapshot)
    if endpoint:
        log.info("status: answering on %s", endpoint)
    if served.metrics is not None:
        log.info("status: Prometheus metrics on http://%s:%d/metrics", served.metrics.host,
                 served.metrics.port)
    return served
