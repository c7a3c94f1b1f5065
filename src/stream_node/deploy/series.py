"""The source of a serving node: one run per series, for days, with the service's state kept.

Between runs this keeps what is costly or unsafe to make again: the control hub (the stages say
HELLO to it as soon as their run ended and wait there for the next START), and, for a detector
that pushes series (DECTRIS v1 and v2), the connection to it, so a detector that arms again the
moment a series ended finds us listening; its next header waits in that socket's queue while the
last run drains, and starts the next run once that one is closed. Every run gets its own random
run id (the detector's series id is kept in the file's metadata), so no stage ever takes a frame
or a message of one run for another's. Runs of other origins (synthetic, replay, UDP) start
with the API's `start`.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from typing import Any

import zmq

from stream_node.deploy.run_states import NodeState, Refused, ServiceCore
from stream_node.links.control import ControlHub
from stream_node.model.errors import ExitCode, StreamNodeError
from stream_node.ops.serve import serve_status
from stream_node.origins import detector_connection, open_origin, series_origin
from stream_node.origins.base import Origin
from stream_node.stages.source import Source, SourceConfig, origin_options

log = logging.getLogger(__name__)

WAIT_MS = 100  # how often an idle loop looks at its flags (SIGTERM, a start command)
SERIES_WAIT_S = 30.0  # a series that waited longer than this for the last run's drain is refused


class Refusal:
    """Where a refused series goes: every frame is read off the detector's connection (so the
    series after it is not held up) and dropped; the run's record says so."""

    def __init__(self, loop: SeriesLoop) -> None:
        self.loop = loop
        self.dropped = 0

    # FrameOutput
    def put(self, header: Any, payload: Any, timeout_ms: int) -> bool:
        self.dropped += 1
        return True

    def end(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "refused series: frames read and dropped"

    # RunControl
    def poll(self) -> None:
        pass

    def pace(self, due: float) -> None:
        pass

    def stalled(self, stall: Any) -> None:
        pass

    @property
    def stopping(self) -> bool:
        return self.loop._terminating


class SeriesLoop:
    """Runs series after series on one `ServiceCore`; `terminate()` ends the current run
    cleanly (as a first SIGTERM does) and then the loop."""

    def __init__(self, config: SourceConfig, core: ServiceCore,
                 ctx: zmq.Context | None = None, series_wait_s: float = SERIES_WAIT_S) -> None:
        self.cfg = config
        self.series_wait_s = series_wait_s
        self.core = core
        self.ctx = ctx or zmq.Context.instance()
        self.detector = series_origin(config.origin)
        self.current: Source | None = None
        self._terminating = False
        self._wake = threading.Event()
        self._start: dict[str, Any] | None = None  # the settings of an API start not yet run
        self._running = False  # from an accepted start until its run has ended
        self._last_end: float | None = None  # when the last run's frames had all been sent
        self.dead_time_ms: float | None = None
        self._lock = threading.Lock()
        core.set_hooks(self._on_start, self._on_stop, self._on_abort)

    # -- the API's commands (called from the HTTP server's threads) -------------------------

    def _on_start(self, config: dict[str, Any]) -> None:
        if self.detector:
            raise Refused(f"start: runs begin when the detector at {self.cfg.origin} sends a "
                          "series; arm the detector (stop ends a run early)")
        with self._lock:
            if self._start is not None or self._running:
                raise Refused("start: a run is starting or running already")
            self._start, self._running = config, True
        self._wake.set()

    def _on_stop(self) -> None:
        source = self.current
        if source is None:
            raise Refused("stop: no run is in progress")
        source.stop()

    def _on_abort(self) -> None:
        source = self.current
        if source is None:
            raise Refused("abort: no run is in progress")
        source.abort("aborted through the service's API")

    def terminate(self) -> None:
        """End the current run at the last frame sent, then the loop (a signal handler's)."""
        self._terminating = True
        source = self.current
        if source is not None:
            source.stop()
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> int:
        cfg = self.cfg
        hub = ControlHub(self.ctx, cfg.control, 0, None, cfg.liveness, cfg.topology)
        status = serve_status(self.ctx, cfg.status, cfg.metrics_port, self.status)
        connection = detector_connection(cfg.origin) if self.detector else None
        try:
            while not self._terminating:
                origin, series, settings = self._next(hub, connection)
                if origin is None:
                    continue
                self._run(hub, origin, series, settings)
                waited = (time.monotonic() - self._last_end if self._last_end is not None
                          else 0.0)
                if connection is not None and waited > self.series_wait_s and \
                        connection.waiting(0) and not self._terminating:
                    self._refuse(connection, waited)
        finally:
            if connection is not None:
                connection.close()
            status.close()
            hub.close()
            self.core.set_state(NodeState.IDLE, "stopped")
        return int(ExitCode.OK)

    def status(self) -> dict[str, Any]:
        source = self.current
        if source is not None:
            return source.status()
        return {"role": "source", "name": "source", "run_id": 0, "state": "waiting",
                "frames": 0, "bytes": 0, "counters": {}, "dropped": {},
                "dead_time_ms": self.dead_time_ms}

    def _ready(self, hub: ControlHub) -> bool:
        return (hub.waiting("worker") >= self.cfg.workers and hub.waiting("collector") >= 1)

    def _next(self, hub: ControlHub, connection: Any) -> tuple[Origin | None, str | None,
                                                                dict[str, Any]]:
        """Wait for the next run's trigger; (None, ...) when there is none yet."""
        if connection is None:
            ready = self._ready(hub)
            self.core.set_state(NodeState.IDLE, "every stage ready: start a run" if ready else
                                "waiting for stages: " + self._missing(hub))
            self._wake.wait(WAIT_MS / 1000)
            self._wake.clear()
            with self._lock:
                settings, self._start = self._start, None
            if settings is None or self._terminating:
                self._running = False
                return None, None, {}
            run_cfg = self._run_config(settings)
            try:
                origin = open_origin(run_cfg.origin, origin_options(run_cfg))
            except StreamNodeError as exc:
                log.error("serve: the run could not start: %s", exc)
                self.core.set_state(NodeState.ERROR, str(exc))
                self._running = False
                return None, None, {}
            return origin, settings.get("series") or None, settings
        armed = connection.connected() and self._ready(hub)
        if armed and self.core.state != NodeState.ARMED:
            log.warning("source: connected to the detector at %s and every stage is ready: "
                        "safe to arm (waiting for a series)", connection.address)
        self.core.set_state(NodeState.ARMED if armed else NodeState.IDLE,
                            f"waiting for a series from {connection.address}" if armed else
                            ("waiting for stages: " + self._missing(hub)
                             if connection.connected() else
                             f"not connected to the detector at {connection.address}"))
        if not connection.waiting(WAIT_MS) or self._terminating:
            return None, None, {}
        settings = self.core.config
        origin = self._series(self._run_config(settings), connection)
        if origin is None:
            return None, None, {}
        return origin, str(origin.series_id), settings

    @staticmethod
    def _series(run_cfg: SourceConfig, connection: Any) -> Origin | None:
        """The next series on the kept connection (its header read now), or None if none
        began (logged)."""
        options = dataclasses.replace(origin_options(run_cfg), connection=connection)
        try:
            return open_origin(run_cfg.origin, options)
        except StreamNodeError as exc:
            log.error("serve: no series began: %s", exc)
            return None

    def _refuse(self, connection: Any, waited: float) -> None:
        """The last run drained for longer than `series_wait_s` while the next series waited:
        that series is refused loudly, as a failed run, never mixed into another run."""
        origin = self._series(self.cfg, connection)
        if origin is None:
            return
        why = (f"series {origin.series_id} refused: it waited {waited:.1f} s for the last run "
               f"to drain (--series-wait {self.series_wait_s:g} s); its frames were dropped")
        log.error("serve: %s", why)
        self.core.begin_run(str(origin.series_id), "", 0, origin.count)
        sink = Refusal(self)
        try:
            emitted = origin.emit(sink, 0, sink)
        finally:
            origin.close()
        self.core.end_run(int(ExitCode.ABORTED), 0,
                          max(emitted.last_id + 1 - origin.first_id, sink.dropped), why,
                          then=NodeState.ARMED)

    def _drained(self) -> None:
        self._last_end = time.monotonic()
        self.core.draining()

    def _stages_ready(self) -> None:
        """Dead time: from the last series' end arriving to every stage READY for this one."""
        if self._last_end is not None:
            self.dead_time_ms = (time.monotonic() - self._last_end) * 1000
            log.info("serve: every stage ready %.1f ms after the last series ended (dead "
                     "time)", self.dead_time_ms)

    def _missing(self, hub: ControlHub) -> str:
        return (f"workers {hub.waiting('worker')}/{self.cfg.workers}, collector "
                f"{min(hub.waiting('collector'), 1)}/1")

    def _run_config(self, settings: dict[str, Any]) -> SourceConfig:
        """This run's source settings: the node's, with the service's next-run settings."""
        changes: dict[str, Any] = {"run_id": secrets.randbits(63) | 1, "status": None,
                                   "metrics_port": None}
        if settings.get("frames") is not None:
            changes["frames"] = int(settings["frames"])
        if settings.get("kernels") is not None:
            changes["kernels"] = list(settings["kernels"]) or None
        if settings.get("compression") is not None:
            changes["compression"] = settings["compression"]
        if settings.get("rate_hz") is not None:
            changes["rate"] = float(settings["rate_hz"])
        return dataclasses.replace(self.cfg, **changes)

    def _run(self, hub: ControlHub, origin: Origin, series: str | None,
             settings: dict[str, Any]) -> None:
        run_cfg = self._run_config(settings)
        number = self.core.next_run()
        try:
            name = self.core.file_name(series, number, run_cfg.run_id or 0)
            directory = settings.get("directory") or ""
            file = f"{directory.rstrip('/')}/{name}" if directory else name
            source = Source(run_cfg, self.ctx, origin=origin, hub=hub, file=file)
        except StreamNodeError as exc:
            origin.close()
            log.error("serve: run %d not started: %s", number, exc)
            self.core.set_state(NodeState.ERROR, str(exc))
            self._running = False
            return
        source.on_drain = self._drained
        source.on_ready = self._stages_ready
        self.core.begin_run(series, file, source.run_id, origin.count)
        with self._lock:
            self.current = source
        log.info("serve: run %d (%#x), series %s, file %s", number, source.run_id, series, file)
        written = missing = 0
        try:
            summary = source.run()
            code, message = int(summary.exit_code), f"{summary.frames_written} frames written"
            written, missing = summary.frames_written, summary.missing
            print(summary.text(), flush=True)
        except StreamNodeError as exc:
            code, message = int(exc.exit_code), str(exc)
            missing = max(source.sent - written, 0)
            log.error("serve: run %d ended: %s", number, exc)
        finally:
            with self._lock:
                self.current, self._running = None, False
        self.core.end_run(code, written, missing, message,
                          then=NodeState.ARMED if self.detector else NodeState.IDLE)
