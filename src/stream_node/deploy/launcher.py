"""One host's part of a topology: its stages run as `stream-node ROLE ...` processes, exactly the
commands a user could type, with their log lines prefixed by stage and streamed here.

Signals: the first SIGINT/SIGTERM goes to the stage that holds the run, the source, which ends
it while the other stages drain it. The next one makes every stage abort at once (SIGTERM: the
collector still records the frames that did not come; on a host without the source this is
the first step), the one after kills them. The exit code is the worst of the stages' (`worst`).

A viewer (`view` stage) only watches: nothing waits for it, and when the host's other stages
have all exited it is ended (SIGTERM, then SIGKILL after `VIEW_STOP_S`). Its exit code counts
only when it failed by itself (e.g. it could not open its tap), and then only when the other
stages ended well: a viewer's failure never hides what happened to the data. A host with a
viewer only ends when the viewer does: at the run's END, or on a signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stream_node.deploy.topology import Command, Topology
from stream_node.model.errors import ExitCode, StorageError

log = logging.getLogger(__name__)

# After this host's source failed by itself, its other stages get this long to see the run is
# off (an ABORT comes at once, then they finalise) before they are stopped: they must not wait
# out their ready timeout for a run that never started.
ORPHAN_GRACE_S = 5.0

# A viewer gets this long to leave after SIGTERM (it may be writing its PNG) before it is killed.
VIEW_STOP_S = 5.0

# Worst first: a cause ranks above the codes it leads to elsewhere (a collector's I/O error makes
# the source abort and a worker time out; the I/O error is what the operator must see).
SEVERITY = [ExitCode.ERROR, ExitCode.IO, ExitCode.CONFIG, ExitCode.USAGE, ExitCode.PEER_TIMEOUT,
            ExitCode.ABORTED, ExitCode.FRAMES_MISSING, ExitCode.OK]


def worst(codes: Iterable[int]) -> int:
    """The most severe exit code by `SEVERITY`; an unknown code counts as an internal error."""
    rank = {int(code): i for i, code in enumerate(SEVERITY)}
    return min(codes, key=lambda c: rank.get(c, 0), default=int(ExitCode.OK))


@dataclass
class Child:
    command: Command
    proc: subprocess.Popen
    pidfd: int
    pumps: list[threading.Thread] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)  # signals this launcher sent it

    @property
    def failed_by_itself(self) -> bool:
        return not self.sent and self.exit_code != 0

    @property
    def exit_code(self) -> int:
        code = self.proc.returncode
        if code is None or code >= 0:
            return int(ExitCode.ERROR if code is None else code)
        # Died of a signal: of ours (e.g. before its handlers were installed), or a crash.
        return int(ExitCode.ABORTED if -code in self.sent else ExitCode.ERROR)

    @property
    def killed_by(self) -> str | None:
        """The name of the signal that ended it (Popen's negative returncode), None when it
        exited: a killed stage has no exit code of its own, and the operator must see the
        signal (an OOM kill, a kill -9) rather than an "exit code 1" with no error behind it."""
        code = self.proc.returncode
        if code is None or code >= 0:
            return None
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"

    @property
    def ended_as(self) -> str:
        """How it ended, in words, for the log: `exited with code N` or `was killed by ...`."""
        if self.killed_by is None:
            return f"exited with code {self.exit_code}"
        return f"was killed by signal {self.killed_by} (counted as exit code {self.exit_code})"

    def signal(self, signum: int) -> None:
        self.sent.add(signum)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)


class Launcher:
    def __init__(self, topo: Topology, node: str, global_args: list[str],
                 json_lines: bool = False) -> None:
        self.topo = topo
        self.node = topo.node(node).name
        self.global_args = global_args
        self.json_lines = json_lines
        self.children: list[Child] = []
        self.signals: list[int] = []
        self.level = 0  # 1: the source ends the run, 2: every stage aborts, 3: killed
        self._write = threading.Lock()

    @contextlib.contextmanager
    def _supervising(self) -> Iterator[int]:
        """The wake pipe (its read end is yielded) and signal handlers of a process that
        supervises stages; on leaving, a child still alive (only if this process itself failed)
        is killed, every child is reaped, and the handlers are restored."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            yield wake_r
        finally:
            for child in self.children:
                if child.proc.poll() is None:
                    child.signal(signal.SIGKILL)
                child.proc.wait()
                for pump in child.pumps:
                    pump.join()
                os.close(child.pidfd)
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)

    def run(self) -> int:
        """Start this node's stages, wait for every one to end, return the worst exit code."""
        with self._supervising() as wake_r, \
                tempfile.TemporaryDirectory(prefix="stream-node-run-") as tmp:
            kernels = self.topo.write_kernels(Path(tmp))
            for command in self.topo.commands(self.node, kernels):
                self._start(command)
                if self.signals:  # stopped while starting: start no more
                    break
            self._wait(wake_r)
        codes = {c.command.label: f"{c.exit_code}" + (f" ({c.killed_by})" if c.killed_by else "")
                 for c in self.children}
        stages = [c.exit_code for c in self.children if not c.command.auxiliary]
        viewers = [c.exit_code for c in self.children
                   if c.command.auxiliary and c.failed_by_itself]
        code = worst(stages) or worst(viewers)
        log.info("run: node %s done, exit code %d (%s)", self.node, code,
                 ", ".join(f"{label} {c}" for label, c in codes.items()))
        return code

    def _start(self, command: Command) -> None:
        if command.output is not None:  # a {date} directory of the file pattern may be new
            try:
                command.output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot make the directory of {command.output}: "
                                   f"{exc.strerror}") from None
        argv = [sys.executable, "-m", "stream_node", *self.global_args, *command.args]
        log.info("run: %s: stream-node %s", command.label,
                 shlex.join([*self.global_args, *command.args]))
        # A session of its own: the terminal's Ctrl-C reaches this launcher only, which decides
        # which stage it stops (the source ends the run; the others must drain it first).
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        child = Child(command, proc, os.pidfd_open(proc.pid))
        for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            pump = threading.Thread(target=self._pump, args=(command.label, stream, out),
                                    daemon=True)
            pump.start()
            child.pumps.append(pump)
        self.children.append(child)

    def _pump(self, label: str, stream: IO[bytes], out: IO[str]) -> None:
        """Copy a stage's output here line by line, each line marked with the stage."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.json_lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if not isinstance(entry, dict):
                    entry = {"level": "INFO", "message": line}
                line = json.dumps({"stage": label, **entry})
            else:
                line = f"[{label}] {line}"
            with self._write:
                out.write(line + "\n")
                out.flush()
        stream.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _wait(self, wake_r: int) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(wake_r, selectors.EVENT_READ)
            for child in self.children:
                sel.register(child.pidfd, selectors.EVENT_READ, child)
            running = len(self.children)
            orphaned_at: float | None = None
            kill_viewers_at: float | None = None
            while running:
                deadlines = [t for t in (orphaned_at, kill_viewers_at) if t is not None]
                events = sel.select(max(0.0, min(deadlines) - time.monotonic())
                                    if deadlines else None)
                now = time.monotonic()
                if orphaned_at is not None and now >= orphaned_at:
                    orphaned_at = None
                    log.warning("run: the source failed, stopping the stages still running")
                    self.level = max(self.level, 1)
                    self._stop(signal.SIGTERM)
                if kill_viewers_at is not None and now >= kill_viewers_at:
                    kill_viewers_at = None
                    for child in self._alive(auxiliary=True):
                        log.warning("run: %s did not end within %.0f s, killing it",
                                    child.command.label, VIEW_STOP_S)
                        child.signal(signal.SIGKILL)
                for key, _ in events:
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 512)
                        continue
                    child = key.data
                    child.proc.wait()
                    sel.unregister(key.fileobj)
                    running -= 1
                    self._ended(child)
                    holding = self._alive(auxiliary=False)
                    if child.command.role == "source" and child.exit_code != 0 and holding \
                            and not self.level:
                        orphaned_at = now + ORPHAN_GRACE_S
                    if not child.command.auxiliary and not holding and kill_viewers_at is None:
                        kill_viewers_at = self._end_viewers()
                while self.signals:
                    self._stop(self.signals.pop(0))

    def _alive(self, auxiliary: bool) -> list[Child]:
        return [c for c in self.children
                if c.command.auxiliary == auxiliary and c.proc.poll() is None]

    def _end_viewers(self) -> float | None:
        """The run is over on this host: end its viewers; returns when to kill them."""
        viewers = self._alive(auxiliary=True)
        for child in viewers:
            log.info("run: every other stage of node %s has exited, ending %s", self.node,
                     child.command.label)
            child.signal(signal.SIGTERM)
        return time.monotonic() + VIEW_STOP_S if viewers else None

    def _ended(self, child: Child) -> None:
        if child.command.auxiliary and not child.failed_by_itself:
            how = f"by {child.killed_by}" if child.killed_by else f"(code {child.exit_code})"
            log.info("run: %s ended %s", child.command.label, how)
            return
        level = logging.INFO if child.exit_code == 0 else logging.WARNING
        log.log(level, "run: %s %s", child.command.label, child.ended_as)

    def _stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        alive = [c for c in self.children if c.proc.poll() is None]
        holders = [c for c in alive if c.command.role == "source"]
        self.level = self.level + 1 if self.level else (1 if holders else 2)
        if self.level == 1:
            log.warning("run: %s: the source ends the run, the other stages drain it "
                        "(signal again to abort at once)", name)
            targets, send = holders, signum
        elif self.level == 2:
            if all(c.command.auxiliary for c in alive):
                log.warning("run: %s: ending the viewer (signal again to kill)", name)
            else:
                log.warning("run: %s: every stage aborts now, the collector records the frames "
                            "that did not come (signal again to kill)", name)
            targets, send = alive, signal.SIGTERM
        else:
            log.warning("run: %s: killing every stage", name)
            targets, send = alive, signal.SIGKILL
        for child in targets:
            child.signal(send)
