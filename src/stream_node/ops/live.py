"""A live terminal view of a run (rich): one row per node, and a progress bar with ETA.

It only asks the nodes' status sockets (`query_status`), so it runs anywhere that reaches them,
costs the data path nothing, and shows a dead node as a row that does not answer.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from stream_node.model.errors import ExitCode
from stream_node.ops.status_client import query_status

ROLE_ORDER = {"source": 0, "worker": 1, "collector": 2}


def _label(st: dict[str, Any]) -> str:
    role, name = st.get("role", "?"), st.get("name", "?")
    return role if name == role else f"{role} {name}"


def _count(n: float) -> str:
    return f"{n:,.0f}"


class LiveView:
    """Renders the status of `endpoints`; `watch` refreshes it every `interval_s`."""

    def __init__(self, endpoints: Sequence[str], interval_s: float = 0.5,
                 console: Console | None = None) -> None:
        self.endpoints = list(endpoints)
        self.interval_s = interval_s
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, auto_refresh=False)
        self.task = self.progress.add_task("frames written", total=None, start=False)

    def poll(self, timeout_s: float | None = None) -> dict[str, dict[str, Any]]:
        return query_status(self.endpoints, timeout_s or max(self.interval_s, 0.5))

    def render(self, statuses: dict[str, dict[str, Any]]) -> RenderableType:
        """The table of nodes and, once the collector says how many frames the run has, the
        progress bar (its ETA comes from the rate the written count grows)."""
        table = Table(box=box.SIMPLE_HEAD, title=self._title(statuses), title_justify="left",
                      padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
        table.add_column("node", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for name in ("frames", "frames/s", "GB/s", "ring", "drops", "missing", "stalls"):
            table.add_column(name, justify="right", no_wrap=True)
        rows = sorted(statuses.items(), key=lambda kv: (
            ROLE_ORDER.get(kv[1].get("role", ""), 3), kv[1].get("name", kv[0])))
        for endpoint, st in rows:
            if "error" in st:  # the whole message goes to stderr; the row stays one line
                table.add_row(endpoint, "[red]no answer[/red]", *[""] * 7)
                continue
            rates, counters = st.get("rates") or {}, st.get("counters") or {}
            ring = st.get("ring")
            dropped = sum((st.get("dropped") or {}).values())
            table.add_row(
                _label(st), str(st.get("state")),
                _count(st.get("frames", 0)), _count(rates.get("frames_per_s", 0.0)),
                f"{rates.get('gbytes_per_s', 0.0):.2f}",
                f"{ring['occupancy']}/{ring['slots']}" if ring else "",
                f"[yellow]{dropped}[/yellow]" if dropped else "0",
                str(counters.get("missing", "")), str(counters.get("stalls", "")))
        self._advance(statuses)
        parts: list[RenderableType] = [table]
        if self.progress.tasks[0].total:
            parts.append(self.progress.get_renderable())
        return Group(*parts)

    def _title(self, statuses: dict[str, dict[str, Any]]) -> str:
        runs = {st["run_id"] for st in statuses.values() if st.get("run_id")}
        answered = sum("error" not in st and not st.get("gone") for st in statuses.values())
        run = ", ".join(f"{r:#018x}" for r in sorted(runs)) or "not started"
        return f"run {run} | {answered}/{len(statuses)} nodes answering"

    def _advance(self, statuses: dict[str, dict[str, Any]]) -> None:
        collectors = [st for st in statuses.values() if st.get("role") == "collector"]
        expected = [st.get("frames_expected") for st in collectors if st.get("frames_expected")]
        if not collectors or not expected:
            return
        written = sum(st.get("frames", 0) for st in collectors)
        if not self.progress.tasks[0].started:
            self.progress.start_task(self.task)
        self.progress.update(self.task, total=max(expected), completed=written)

    def watch(self, stop: threading.Event | None = None,
              transient: bool = False) -> dict[str, dict[str, Any]]:
        """Refresh until `stop` is set, or until the run is over: every node that answered has
        stopped answering, or all of them say they are done. A node that stops answering keeps
        its last row, marked gone. `transient`: clear the view at the end (for a caller that
        prints a summary instead). Returns the last statuses shown."""
        stop = stop or threading.Event()
        shown: dict[str, dict[str, Any]] = {}
        with Live(console=self.console, auto_refresh=False, transient=transient) as live:
            while not stop.is_set():
                statuses = self.poll()
                answering = {e for e, st in statuses.items() if "error" not in st}
                for endpoint, st in statuses.items():
                    if endpoint in answering or "error" in shown.get(endpoint, st):
                        shown[endpoint] = st
                    else:  # it answered before: the run ended for it, or it died
                        shown[endpoint] = {**shown[endpoint], "state": "gone", "gone": True}
                live.update(self.render(shown), refresh=True)
                seen = {e for e, st in shown.items() if "error" not in st}
                done = all(statuses[e].get("state") == "done" for e in answering)
                if seen and (not answering or (done and answering == seen)):
                    break
                stop.wait(self.interval_s)
        return shown


def show_status(endpoints: Sequence[str], timeout_s: float, as_json: bool = False,
                live: bool = False, interval_s: float = 0.5,
                console: Console | None = None) -> ExitCode:
    """`stream-node status`: print every node's status once (a table, or JSON for scripts), or
    keep a live view until the run is over. PEER_TIMEOUT if any node did not answer; the ones
    that did are printed all the same."""
    # Not a terminal (a log, a pipe): wide enough that rows never wrap.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    if live:
        view = LiveView(endpoints, interval_s, console)
        statuses = view.watch()
        # After a run every node has left: that is the end of the watch, not a failure.
        return ExitCode.OK if any("error" not in st for st in statuses.values()) else (
            ExitCode.PEER_TIMEOUT)
    statuses = query_status(endpoints, timeout_s)
    if as_json:
        print(json.dumps(statuses, indent=2, default=str))
    else:
        console.print(LiveView(endpoints, console=console).render(statuses))
    silent = [e for e, st in statuses.items() if "error" in st]
    for endpoint in silent:
        print(f"stream-node status: {endpoint}: {statuses[endpoint]['error']}", file=sys.stderr)
    return ExitCode.PEER_TIMEOUT if silent else ExitCode.OK


@contextmanager
def watching(endpoints: Sequence[str], interval_s: float = 0.5,
             console: Console | None = None) -> Iterator[None]:
    """Show the live view of `endpoints` from a thread while the body runs (nothing if none);
    it is cleared at the end, when the nodes are gone and the caller has the final word."""
    if not endpoints:
        yield
        return
    stop = threading.Event()
    view = LiveView(endpoints, interval_s, console)
    thread = threading.Thread(target=view.watch, args=(stop, True), name="stream-node live view",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
