"""A worker or collector that stays up run after run (`--serve`, started by `stream-node serve`).

Each run is a new stage object on the same process: its compiled kernels, its imports and its
status endpoint stay, while everything of the run (its control link, data sockets, file, ledger)
is made for the run and closed with it, so nothing of run N can reach run N+1. Between runs the
stage waits for START without a deadline. A run that fails is logged and the next one is
awaited; only a file abandoned after a failed write ends the process (HDF5 must not touch that
file again), and `stream-node serve` starts a new one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from stream_node.model.errors import StorageError, StreamNodeError
from stream_node.ops.serve import serve_status

log = logging.getLogger(__name__)


class RunStage(Protocol):
    def run(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


class Served:
    """What a serving stage says about itself between and during runs."""

    def __init__(self, role: str, name: str) -> None:
        self.role, self.name = role, name
        self.current: RunStage | None = None
        self.runs = 0
        self.failed = 0
        self.last_error = ""

    def status(self) -> dict[str, Any]:
        stage = self.current
        snap = stage.status() if stage is not None else {
            "role": self.role, "name": self.name, "run_id": 0, "state": "waiting",
            "frames": 0, "bytes": 0, "counters": {}, "dropped": {}}
        snap["serving"] = {"runs": self.runs, "failed_runs": self.failed,
                           "last_error": self.last_error}
        return snap


def serve_runs(role: str, name: str, make: Callable[[], RunStage], status: str | None,
               metrics_port: int | None) -> int:
    """Run `make()`'s stage for one run after another until SIGTERM/SIGINT; exit code 0."""
    served = Served(role, name)
    node_status = serve_status(zmq.Context.instance(), status, metrics_port, served.status)
    log.info("%s %s: serving runs (pid %d)", role, name, os.getpid())
    try:
        while True:
            served.current = stage = make()
            try:
                stage.run()
            except StorageError as exc:
                writer = getattr(stage, "writer", None)
                if writer is not None and writer.abandoned:
                    # As the one-shot collector does: end before HDF5's exit-time close can
                    # write to the file it gave up on; the serving node starts a new process.
                    print(f"stream-node {role}: error: {exc}", file=sys.stderr, flush=True)
                    node_status.close()
                    zmq.Context.instance().destroy(linger=2000)
                    os._exit(int(exc.exit_code))
                served.failed += 1
                served.last_error = str(exc)
                log.error("%s %s: run failed: %s", role, name, exc)
            except StreamNodeError as exc:
                served.failed += 1
                served.last_error = str(exc)
                log.warning("%s %s: run ended early: %s", role, name, exc)
            served.runs += 1
    except KeyboardInterrupt as exc:
        log.info("%s %s: %s: no more runs (%d served)", role, name, exc or "stopped",
                 served.runs)
        return 0
    finally:
        node_status.close()
