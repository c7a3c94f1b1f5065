"""`stream-node serve`: one host's stages kept up for days, series after series.

The workers and the collector of this host run as `--serve` processes (each waits for the next
START when its run is over); a stage that dies is started again and rejoins at the next run (the
run it died in records what it lost, as a one-shot run does). The source, when this host has
it, runs here (`SeriesLoop`), beside the HTTP API (`deploy.api`) that the operator, the page and
`stream-node ctl` use. A host without the source serves its stages and the API's status; its
commands are refused with the name of the host that holds the runs.

Signals: the first SIGINT/SIGTERM ends the current run at the last frame sent (it drains and
closes its file) and then every stage; the second aborts the current run; the third kills.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from stream_node.deploy.api import ApiServer
from stream_node.deploy.launcher import Child, Launcher
from stream_node.deploy.run_states import NodeState, ServiceCore
from stream_node.deploy.series import SeriesLoop
from stream_node.deploy.topology import Command, Topology
from stream_node.model.errors import ExitCode
from stream_node.ops.picture import NewestFrame
from stream_node.ops.status_client import query_status
from stream_node.stages.source import SourceConfig

log = logging.getLogger(__name__)

RESTART_S = (1.0, 30.0)  # a dead stage is started again after 1 s, doubling up to 30 s
STEADY_S = 60.0  # a stage that lived this long is healthy again: its next restart is quick
STATUS_S = 0.5  # how long the API waits for a stage's status answer


class Service(Launcher):
    def __init__(self, topo: Topology, node: str, global_args: list[str],
                 source: SourceConfig | None, api: tuple[str, int] | None,
                 token: str | None, json_lines: bool = False,
                 series_wait_s: float = 30.0) -> None:
        super().__init__(topo, node, global_args, json_lines)
        self.core = ServiceCore(self.node)
        self.source_config = source
        self.series_wait_s = series_wait_s
        self.api_address = api
        self.token = token
        self.loop: SeriesLoop | None = None
        self.status_endpoints: dict[str, str] = {}  # stage label -> its status endpoint
        self.restarts: dict[str, int] = {}
        self._due: dict[str, tuple[float, Command]] = {}  # restarts waiting for their time
        self._started: dict[int, float] = {}  # pid -> when it started
        self.tap: str | None = None  # this host's collector's tap

    def run(self) -> int:
        api: ApiServer | None = None
        newest: NewestFrame | None = None
        loop_thread: threading.Thread | None = None
        with self._supervising() as wake_r, \
                tempfile.TemporaryDirectory(prefix="stream-node-serve-") as tmp:
            try:
                commands = self._served(self.topo.commands(
                    self.node, self.topo.write_kernels(Path(tmp))), Path(tmp))
                for command in commands:
                    self._spawn(command)
                self.core.set_stages(self.stages)
                if self.tap is not None:
                    newest = NewestFrame(self.tap)
                    self.core.set_frame(newest.png)
                if self.source_config is not None:
                    self.loop = SeriesLoop(self.source_config, self.core,
                                           series_wait_s=self.series_wait_s)
                    loop_thread = threading.Thread(target=self._serve_series, name="series",
                                                   daemon=True)
                    loop_thread.start()
                else:
                    self.core.set_state(NodeState.IDLE, "this host's stages serve the runs of "
                                        "the host with the source")
                if self.api_address is not None:
                    api = ApiServer(self.core, *self.api_address, token=self.token)
                    log.warning("serve: node %s: API and status page at %s", self.node, api.url)
                self._watch(wake_r, loop_thread)
            finally:
                if api is not None:
                    api.close()
                if newest is not None:
                    newest.close()
        log.info("serve: node %s stopped (%d runs)", self.node, self.core.next_run() - 1)
        return int(ExitCode.OK)

    # -- the stages ---------------------------------------------------------------------------

    def _served(self, commands: list[Command], tmp: Path) -> list[Command]:
        """This host's stage processes, each told to serve run after run and to answer status
        (on an ipc endpoint of its own where the topology gives none)."""
        out = []
        for command in commands:
            if command.role == "source":
                continue  # it runs here, in `SeriesLoop`
            args = list(command.args)
            if command.role in ("worker", "collector"):
                args.append("--serve")
            elif command.role == "view":
                args.append("--follow")  # a viewer of one run would end (and restart) each run
            own = f"ipc://{tmp}/{command.label.replace('/', '-')}"
            if "--status" not in args and command.role != "view":
                args += ["--status", f"{own}.status"]
            if "--status" in args:
                self.status_endpoints[command.label] = args[args.index("--status") + 1]
            if command.role == "collector":  # the page's picture of the newest frame
                if "--tap" not in args:
                    args += ["--tap", f"{own}.tap", "--tap-rate", "2"]
                self.tap = args[args.index("--tap") + 1]
            out.append(Command(command.label, command.role, args, command.output,
                               command.auxiliary))
        return out

    def _spawn(self, command: Command) -> None:
        self._start(command)
        self._started[self.children[-1].proc.pid] = time.monotonic()

    def stages(self) -> list[dict[str, Any]]:
        """Every stage's status for the API: the source's own, the others' by their status
        endpoints (a stage that does not answer says so in its place)."""
        out = []
        if self.loop is not None:
            out.append({"label": f"{self.node}/source", **self.loop.status()})
        answers = query_status(list(self.status_endpoints.values()), STATUS_S)
        for label, endpoint in self.status_endpoints.items():
            snap = {"label": label, **answers[endpoint]}
            snap["restarts"] = self.restarts.get(label, 0)
            out.append(snap)
            counters = snap.get("counters") or {}
            if snap.get("role") == "collector" and snap.get("state") in ("running", "draining"):
                self.core.update_run(int(snap.get("frames") or 0),
                                     int(counters.get("missing") or 0))
        return out

    # -- the source ---------------------------------------------------------------------------

    def _serve_series(self) -> None:
        assert self.loop is not None
        try:
            self.loop.serve()
        except Exception as exc:  # the series loop must not die silently: the node says so
            log.exception("serve: the source failed")
            self.core.set_state(NodeState.ERROR, f"the source failed: {exc}")

    # -- waiting, restarting, stopping --------------------------------------------------------

    def _watch(self, wake_r: int, loop_thread: threading.Thread | None) -> None:
        stopping = 0
        with selectors.DefaultSelector() as sel:
            sel.register(wake_r, selectors.EVENT_READ)
            for child in self.children:
                sel.register(child.pidfd, selectors.EVENT_READ, child)
            while True:
                if stopping and not any(c.proc.poll() is None for c in self.children):
                    return
                due = min((t for t, _ in self._due.values()), default=None)
                timeout = 0.2 if due is None else max(0.0, min(due - time.monotonic(), 0.2))
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 512)
                        continue
                    child: Child = key.data
                    child.proc.wait()
                    sel.unregister(key.fileobj)
                    self._ended(child)
                    if not stopping:
                        self._schedule_restart(child)
                now = time.monotonic()
                for label, (when, command) in list(self._due.items()):
                    if when <= now and not stopping:
                        del self._due[label]
                        self.restarts[label] = self.restarts.get(label, 0) + 1
                        log.warning("serve: starting %s again (restart %d)", label,
                                    self.restarts[label])
                        self._spawn(command)
                        sel.register(self.children[-1].pidfd, selectors.EVENT_READ,
                                     self.children[-1])
                while self.signals:
                    self.signals.pop(0)
                    stopping += 1
                    self._stop_step(stopping, loop_thread)
                if stopping == 1 and (loop_thread is None or not loop_thread.is_alive()):
                    stopping = 2  # the run is closed: the stages leave now
                    self._stop_step(2, None)

    def _schedule_restart(self, child: Child) -> None:
        label = child.command.label
        lived = time.monotonic() - self._started.pop(child.proc.pid, time.monotonic())
        count = self.restarts.get(label, 0)
        wait = RESTART_S[0] if lived >= STEADY_S else min(RESTART_S[0] * 2 ** count,
                                                          RESTART_S[1])
        log.warning("serve: %s %s; starting it again in %.0f s (it rejoins at the next run)",
                    label, child.ended_as, wait)
        self._due[label] = (time.monotonic() + wait, child.command)

    def _stop_step(self, step: int, loop_thread: threading.Thread | None) -> None:
        alive = [c for c in self.children if c.proc.poll() is None]
        if step == 1:
            log.warning("serve: stopping: the current run ends at the last frame sent and "
                        "closes its file, then every stage leaves (signal again to abort)")
            if self.loop is not None:
                self.loop.terminate()
        elif step == 2:
            if self.loop is not None and self.loop.current is not None:
                log.warning("serve: aborting the current run")
                self.loop.current.abort("the serving node was stopped")
            for child in alive:
                child.signal(signal.SIGTERM)
        else:
            log.warning("serve: killing every stage")
            for child in alive:
                child.signal(signal.SIGKILL)
