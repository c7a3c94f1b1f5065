"""A served node's state, its runs and the commands an operator may give it.

`stream-node serve` keeps its stages up series after series; the control API, the status page
and `stream-node ctl` all look at one `ServiceCore`. The serving node tells it what happens
(`set_state`, `begin_run`, `update_run`, `draining`, `end_run`) and registers hooks for the
operator's commands; the core only decides whether a command makes sense in the present state
(else `Refused`, HTTP 409) and keeps the record of the last runs. It never touches the data path:
every method takes one lock for a few assignments, and the hooks run outside it.

Commands never queue: one that arrives while another's hook is still running is refused, except
`abort`, which must always get through.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from stream_node._version import __version__
from stream_node.deploy import run_config
from stream_node.model.errors import ExitCode, StreamNodeError

log = logging.getLogger(__name__)


class NodeState(str, Enum):
    """What a served node is doing; the value is what the API and the page show."""

    IDLE = "idle"  # up, not connected to a detector, no run
    ARMED = "armed"  # connected to the detector, ready and waiting for a series
    RUNNING = "running"  # a run is taking frames
    DRAINING = "draining"  # no new frames; the stages finish and the file is finalised
    ERROR = "error"  # the node cannot run; `detail` says why, the node leaves it itself


COMMANDS = ("start", "stop", "abort")
# The states each command makes sense in; anything else is refused with the reason.
VALID_IN: dict[str, tuple[NodeState, ...]] = {
    "start": (NodeState.IDLE, NodeState.ARMED),
    "stop": (NodeState.ARMED, NodeState.RUNNING),
    "abort": (NodeState.ARMED, NodeState.RUNNING, NodeState.DRAINING),
}


class Refused(StreamNodeError):
    """A command that makes no sense in the node's present state; `reason` says why and what
    would be valid. The API answers it with 409, `stream-node ctl` with exit code 2."""

    exit_code = ExitCode.USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def now_iso() -> str:
    """Local time with its UTC offset, to the second: what a beamline log shows."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One run as the operator sees it: numbers, file, and how it ended."""

    run: int  # counts from 1 for the life of the service
    run_id: str  # the data path's 64-bit run id, in hex
    series: str | None
    file: str
    state: str  # running, draining, done, failed, aborted
    started: str
    ended: str | None = None
    frames_expected: int | None = None
    frames_written: int = 0
    missing: int = 0
    exit_code: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Hook = Callable[..., Any]
StageSnapshot = Callable[[], dict[str, Any]]


class ServiceCore:
    """The one place a served node's state, settings and run history live (thread-safe)."""

    def __init__(self, node: str, history: int = 20, config: dict[str, Any] | None = None
                 ) -> None:
        if history < 1:
            raise ValueError("history must be >= 1")
        self.node = node
        self._lock = threading.Lock()
        self._busy: list[str] = []  # the commands whose hooks are running now
        self._state = NodeState.IDLE
        self._detail = ""
        self._config = run_config.defaults()
        self._config.update(run_config.checked(config or {}))
        self._runs: deque[RunRecord] = deque(maxlen=history)
        self._current: RunRecord | None = None
        self._asked: set[str] = set()  # stop/abort already asked of the current run
        self._count = 0
        self._totals = {"failed_runs": 0, "frames_written": 0, "missing": 0}
        self._hooks: dict[str, Hook] = {}
        self._stages: Callable[[], list[dict[str, Any]]] | Sequence[StageSnapshot] = list
        self._frame: Callable[[], bytes | None] = lambda: None

    # --- what the serving node registers -------------------------------------------------

    def set_hooks(self, on_start: Hook | None = None, on_stop: Hook | None = None,
                  on_abort: Hook | None = None) -> None:
        """The node's handlers: `on_start(config)` gets a copy of the next-run settings;
        each returns once the node has taken the command (or raises Refused/ConfigError)."""
        with self._lock:
            self._hooks = {name: hook for name, hook in
                           (("start", on_start), ("stop", on_stop), ("abort", on_abort)) if hook}

    def set_stages(self, snapshot: Callable[[], list[dict[str, Any]]] | Sequence[StageSnapshot]
                   ) -> None:
        """Where the stages' status dicts come from: one callable giving them all, or one
        callable per stage (then a failing stage is reported in its own place)."""
        self._stages = snapshot

    def set_frame(self, provider: Callable[[], bytes | None]) -> None:
        """Where the newest frame comes from, as PNG bytes (None while there is none)."""
        self._frame = provider

    @property
    def state(self) -> NodeState:
        with self._lock:
            return self._state

    # --- the operator's commands -----------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start a run with the present settings (the node begins it: `begin_run`)."""
        config = self._admit("start")
        return self._call("start", config)

    def stop(self) -> dict[str, Any]:
        """End the run at the last frame sent (it drains normally), or disarm."""
        self._admit("stop")
        return self._call("stop")

    def abort(self) -> dict[str, Any]:
        """Abandon the run now; the frames that did not come are recorded missing."""
        self._admit("abort")
        return self._call("abort")

    def command(self, name: str) -> dict[str, Any]:
        if name not in COMMANDS:
            raise KeyError(name)
        return getattr(self, name)()

    def _admit(self, name: str) -> dict[str, Any] | None:
        """Check `name` against the state, under the lock; mark it busy. Refused otherwise."""
        with self._lock:
            if name not in self._hooks:
                raise Refused(f"{name}: this node does not serve runs (no {name} handler)")
            if self._state not in VALID_IN[name]:
                raise Refused(self._why_not(name))
            if self._busy and name != "abort":
                raise Refused(f"{name}: the node is still carrying out {self._busy[0]}; "
                              "commands do not queue, ask again when it is done")
            if self._current is not None and name in self._asked:
                raise Refused(f"{name}: already asked of run {self._current.run}; it is "
                              f"{self._state.value}")
            if self._current is not None and name != "start":
                self._asked.add(name)
            self._busy.append(name)
            return copy.deepcopy(self._config) if name == "start" else None

    def _why_not(self, name: str) -> str:
        detail = f" ({self._detail})" if self._detail else ""
        here = [c for c in COMMANDS if self._state in VALID_IN[c]]
        return (f"{name}: the node is {self._state.value}{detail}; {name} is valid when "
                f"{' or '.join(s.value for s in VALID_IN[name])}; now valid: "
                f"{', '.join(here) or 'none (the node leaves this state by itself)'}")

    def _call(self, name: str, *args: Any) -> dict[str, Any]:
        hook = self._hooks[name]
        try:
            hook(*args)
        except BaseException:
            with self._lock:
                if self._current is not None:
                    self._asked.discard(name)
            raise
        finally:
            with self._lock:
                self._busy.remove(name)
        log.info("%s: %s accepted", self.node, name)
        with self._lock:
            return {"command": name, "accepted": True, "state": self._state.value,
                    "run": self._current.run if self._current else None}

    # --- the next run's settings -----------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._config)

    def configure(self, updates: dict[str, Any]) -> dict[str, Any]:
        """Change some settings (all or none of them); they apply to the next run, so a change
        during a run is accepted and leaves that run alone."""
        checked = run_config.checked(updates)
        with self._lock:
            self._config.update(checked)
            return {"config": copy.deepcopy(self._config), "applies_to": "next run"}

    def file_name(self, series: str | None, run: int, run_id: int,
                  now: datetime | None = None) -> str:
        """The next run's file name inside `directory`, from `file_template`."""
        with self._lock:
            template = self._config["file_template"]
        return run_config.expand_template(template, node=self.node, series=series, run=run,
                                          run_id=run_id, now=now or datetime.now())

    def next_run(self) -> int:
        """The number `begin_run` will give the next run (for its file name)."""
        with self._lock:
            return self._count + 1

    # --- what the serving node reports -----------------------------------------------------

    def set_state(self, state: NodeState | str, detail: str = "") -> None:
        with self._lock:
            self._state = NodeState(state)
            self._detail = detail

    def begin_run(self, series: str | None, file: str, run_id: int,
                  frames_expected: int | None) -> RunRecord:
        with self._lock:
            if self._current is not None:  # the node lost track of a run: keep the record
                log.warning("%s: run %d began before run %d ended", self.node,
                            self._count + 1, self._current.run)
                self._finish(self._current, int(ExitCode.ERROR), "superseded by the next run")
            self._count += 1
            record = RunRecord(run=self._count, run_id=f"{run_id:#018x}", series=series,
                               file=file, state="running", started=now_iso(),
                               frames_expected=frames_expected)
            self._current = record
            self._asked = set()
            self._runs.append(record)
            self._state, self._detail = NodeState.RUNNING, ""
            return copy.copy(record)

    def update_run(self, frames_written: int, missing: int) -> None:
        with self._lock:
            if self._current is not None:
                self._current.frames_written = int(frames_written)
                self._current.missing = int(missing)

    def draining(self) -> None:
        with self._lock:
            self._state = NodeState.DRAINING
            if self._current is not None:
                self._current.state = "draining"

    def end_run(self, exit_code: int, frames_written: int, missing: int, message: str = "",
                then: NodeState | str = NodeState.IDLE) -> RunRecord | None:
        """Finalise the current run; the node is `then` afterwards (idle, or armed for the
        next series)."""
        with self._lock:
            record = self._current
            self._state, self._detail = NodeState(then), ""
            if record is None:
                log.warning("%s: end_run without a run", self.node)
                return None
            record.frames_written, record.missing = int(frames_written), int(missing)
            self._finish(record, int(exit_code), message)
            return copy.copy(record)

    def _finish(self, record: RunRecord, exit_code: int, message: str) -> None:
        record.exit_code, record.message, record.ended = exit_code, message, now_iso()
        if "abort" in self._asked or exit_code == ExitCode.ABORTED:
            record.state = "aborted"
        elif exit_code in (ExitCode.OK, ExitCode.FRAMES_MISSING):  # missing says how many
            record.state = "done"
        else:
            record.state = "failed"
            self._totals["failed_runs"] += 1
        self._totals["frames_written"] += record.frames_written
        self._totals["missing"] += record.missing
        self._current, self._asked = None, set()

    # --- what everyone reads ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The whole picture for the API and the page; never raises for a stage that fails."""
        stages = self._stage_statuses()
        with self._lock:
            current = self._current
            counters = dict(self._totals, runs=self._count)
            if current is not None:
                counters["frames_written"] += current.frames_written
                counters["missing"] += current.missing
            return {
                "api": "v1", "node": self.node, "state": self._state.value,
                "detail": self._detail, "safe_to_arm": self._state is NodeState.ARMED,
                "busy": list(self._busy),
                "current": current.as_dict() if current else None,
                "runs": [r.as_dict() for r in reversed(self._runs)],
                "config": copy.deepcopy(self._config), "stages": stages,
                "counters": counters, "version": __version__, "time": now_iso(),
            }

    def _stage_statuses(self) -> list[dict[str, Any]]:
        source = self._stages
        if callable(source):
            try:
                return [dict(s) for s in source()]
            except Exception as exc:
                return [{"error": f"stage snapshot failed: {exc!r}"}]
        out = []
        for i, snapshot in enumerate(source):
            try:
                out.append(dict(snapshot()))
            except Exception as exc:
                out.append({"error": f"stage {i} snapshot failed: {exc!r}"})
        return out

    def frame_png(self) -> bytes | None:
        """The newest frame as PNG, or None (also when the provider fails: a picture is not
        worth an error)."""
        try:
            png = self._frame()
        except Exception as exc:
            log.debug("%s: frame provider failed: %s", self.node, exc)
            return None
        return bytes(png) if png else None
