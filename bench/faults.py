"""Fault matrix: every failure README's "When peers fail" promises to survive, run against the CLI.

Each row is one fault injected into a real run, as a user would meet it: ``python -m
stream_node collector / worker / source`` subprocesses on real sockets (ipc, or tcp on
127.0.0.1; network namespaces for the partition rows) writing a real HDF5 file. The setup of
every row is copied from the pytest test that covers the same fault (named in the row's
function), so the two cannot drift apart in what they run; the bench turns the test's asserts
into one table of what happened.

Faults: a frame larger than ``--max-message``; a worker wired to another run's endpoint; the
collector paused (SIGSTOP/SIGCONT) three times for 0.5x, 0.9x and 2x ``--peer-timeout``; a
worker busy 1.5 s per frame with ``--peer-timeout 0.5`` (reliable); a worker SIGKILLed mid-run
(default and ``--reliable``); a worker frozen for good; the collector SIGKILLed and restarted
with ``--resume`` (needs ``h5clear``); a disk that fills (a 16 MiB tmpfs: root); ``--overwrite``
aimed at the file a live collector is writing; a DECTRIS stream of unknown length whose frame 3
is numbered 10^12 or 2^70 (``tests/protocol_senders.py`` sends it); one bit of frame 5's payload
flipped between worker and collector (a forwarder in this process), without ``--checksum``, with
it, and with it in reliable mode; a worker of another ``--topology`` on the same control
endpoint; a worker cut off from the collector only, link down or throttled by tbf (three
network namespaces: root and ``ip netns``); SIGINT to the source with frames in flight;
malformed messages sent to the collector's input and to a worker's input.

No sleeps for synchronisation: a row waits on a node's log line (read from its stderr by a
thread), on ``stream-node status`` answers (frames written) or on process exit; a fault's own
length (a pause, a partition) is a timed wait. Every row has a deadline: a process still
running then is killed and the row shows it under "hang?"; whatever a row started (processes,
mounts, namespaces, sockets) is ended or removed before the next row starts.

After a row, its file is read with ``read_run`` (which merges a sidecar ledger, if any) and
checked against the ids of the run, 0 .. N-1, N the source's summary count (``written of N
sent``) or, when the source printed none, the run's frame count:

* frames sent: that N; written: ids flagged received; recorded missing: ids in the file's
  missing record (with a reason); lost unrecorded: ids in neither (must be 0); duplicates: the
  collector's ``duplicates`` counter in the file ("—": the file has no counters, e.g. a run that
  never finalised);
* written frames are compared byte for byte with what the source made
  (``SyntheticDetector(shape, dtype).frame(i)``, or ``protocol_senders.frame`` for DECTRIS):
  every frame in --full, every k-th (about 100 per file) in quick mode; a frame that differs
  fails the row, except in the row where the damage is the point (no ``--checksum``), which
  reports it as "damaged written" instead;
* exit codes (source / collector / workers, each in start order; "hung": killed at the
  deadline, "!": not an exit code the row expects; -9 is a SIGKILL that is the row's fault);
* message: the source's last error line, or that of the node whose exit is the news, cut
  to ~120 characters (timestamp and logger dropped).

The notes under the table give, per row, what failed, the row's own checks that did not hold
(the test's other asserts: a message naming the cause, a counter, a reason in the ledger) and
figures worth knowing. Exit status 1 if any row lost a frame without recording it, hung, ended
with an exit code it does not expect, or wrote a frame that differs from what was sent; rows the
machine cannot run (no root, no h5clear, no ``ip netns``) are skipped, saying why.

Usage::

    python bench/faults.py                 # quick: every row (~2-3 min on 2 cores)
    python bench/faults.py --full          # the tests' sizes everywhere, every frame compared
    python bench/faults.py --list          # the rows
    python bench/faults.py --only pause    # the rows whose name starts with "pause"
    python bench/faults.py --keep          # keep each row's directory (logs, file)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from _common import bench_parser  # bench/ is on sys.path when run as a script
from _format import md_table

TESTS = Path(__file__).resolve().parent.parent / "tests"
SENDER = TESTS / "protocol_senders.py"
SLOW = '[{"kernel": "python:stream_node.kernels.examples.delay", "seconds": 0.004}]'
BUSY = '[{"kernel": "python:stream_node.kernels.examples.delay", "seconds": 1.5}]'

# Exit codes (stream_node.ExitCode), and the sets a row may expect of a node.
OK, MISSING, PEER, CONFIG, IO, ABORTED = 0, 3, 4, 5, 6, 7
KILLED = -signal.SIGKILL  # the row's own SIGKILL
DONE = frozenset({OK, MISSING})  # the run finished, maybe with frames recorded missing
FAILED = frozenset({MISSING, PEER, CONFIG, IO, ABORTED})  # ended by itself, documented failure
ENDED = frozenset({OK}) | FAILED  # ended by itself with a documented code (not 1, no signal)
MSG_CHARS = 120


@dataclass(frozen=True)
class Mode:
    name: str
    sample: int  # frames compared per file (about; 0: every frame)
    partition_frames: int


QUICK = Mode("quick", 100, 1000)
FULL = Mode("full", 0, 1500)


# -- nodes and trials ---------------------------------------------------------------------------


class Node:
    """One process; its stderr and stdout are read by threads into lists of lines, so that the
    bench can wait for a log line (never for a delay) and no pipe ever fills up."""

    def __init__(self, name: str, role: str, argv: list[str], aux: bool = False) -> None:
        self.name, self.role, self.aux = name, role, aux
        self.err: list[str] = []
        self.out: list[str] = []
        self.cond = threading.Condition()
        self.err_eof = self.out_eof = False
        self.code: int | None = None
        self.hung = False  # still running at the row's deadline: killed
        self.faulted = False  # SIGKILLed as the row's fault (its -9 is expected)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
        self.readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                        for s in ("err", "out")]
        for t in self.readers:
            t.start()

    def _read(self, which: str) -> None:
        stream = self.proc.stderr if which == "err" else self.proc.stdout
        into = self.err if which == "err" else self.out
        assert stream is not None
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            setattr(self, f"{which}_eof", True)
            self.cond.notify_all()

    def wait_line(self, needle: str, deadline: float, out: bool = False) -> str | None:
        """The first line of stderr (stdout) holding `needle`, once it is printed; None when
        the stream ended or the deadline passed first."""
        lines = self.out if out else self.err
        i = 0
        with self.cond:
            while True:
                for line in lines[i:]:
                    if needle in line:
                        return line
                i = len(lines)
                left = deadline - time.monotonic()
                if (self.out_eof if out else self.err_eof) or left <= 0:
                    return None
                self.cond.wait(left)

    def wait(self, deadline: float) -> int | None:
        try:
            self.code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        return self.code

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL as the row's fault."""
        self.faulted = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.code = self.proc.wait()

    def end(self) -> None:
        """Kill it if it still runs, reap it, and let the readers finish."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.code = self.proc.wait() if self.code is None else self.code
        for t in self.readers:
            t.join(5)

    @property
    def stderr(self) -> str:
        with self.cond:
            return "\n".join(self.err)

    @property
    def stdout(self) -> str:
        with self.cond:
            return "\n".join(self.out)


def free_tcp_endpoint() -> str:
    """A loopback endpoint on a port the kernel just handed out (tests/conftest.py's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Trial:
    """One row's run: its directory, its nodes, its deadline and its cleanups. Closing it waits
    for every node until the deadline, kills what is left (a hang), undoes the cleanups in
    reverse order and removes the directory (unless kept)."""

    def __init__(self, name: str, mode: Mode, budget_s: float, keep: bool) -> None:
        self.name, self.mode, self.keep = name, mode, keep
        self.tmp = Path(tempfile.mkdtemp(prefix="snb-faults-"))
        self.budget_s = budget_s
        self.deadline = time.monotonic() + budget_s
        self.nodes: list[Node] = []
        self.cleanups: list[Callable[[], object]] = []

    # starting things

    def ep(self, name: str, transport: str = "ipc") -> str:
        return free_tcp_endpoint() if transport == "tcp" else f"ipc://{self.tmp}/{name}"

    def spawn(self, name: str, role: str, argv: list[str], aux: bool = False) -> Node:
        node = Node(name, role, argv, aux)
        self.nodes.append(node)
        return node

    def node(self, name: str, command: str, *args: str, prefix: Iterable[str] = ()) -> Node:
        """`python -m stream_node COMMAND ARGS...` (under `prefix`, e.g. ip netns exec NS)."""
        return self.spawn(name, command,
                          [*prefix, sys.executable, "-m", "stream_node", command, *args])

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def context(self) -> zmq.Context:
        ctx = zmq.Context()
        self.cleanups.append(lambda: ctx.destroy(linger=0))
        return ctx

    # waiting

    def until(self, seconds: float) -> float:
        return min(self.deadline, time.monotonic() + seconds)

    def wait_written(self, status: str, n: int, collector: Node, within_s: float = 30) -> bool:
        """Until the collector answering on `status` has written `n` frames (each question
        waits for its answer: tests/conftest.py's wait_written); False if it ended first."""
        from stream_node import query_status

        deadline = self.until(within_s)
        while time.monotonic() < deadline and collector.proc.poll() is None:
            if query_status([status], timeout_s=0.5)[status].get("frames", 0) >= n:
                return True
        return False

    def written_now(self, status: str) -> int:
        from stream_node import query_status

        return int(query_status([status], timeout_s=2)[status].get("frames", -1))

    def settle(self, nodes: Iterable[Node] | None = None) -> None:
        """Wait for `nodes` (default: all but helpers) to exit by themselves until the
        deadline; any still running then is killed: a hang."""
        for node in (nodes if nodes is not None else [n for n in self.nodes if not n.aux]):
            if node.code is None and node.wait(self.deadline) is None:
                node.hung = True
                node.end()

    def close(self) -> None:
        self.settle()
        for node in self.nodes:
            node.end()  # helpers (a detector sender) are ended, never counted as a hang
            (self.tmp / f"{node.name}.err").write_text(node.stderr + "\n")
            (self.tmp / f"{node.name}.out").write_text(node.stdout + "\n")
        for undo in reversed(self.cleanups):
            try:
                undo()
            except Exception as exc:
                progress(f"    cleanup of {self.name} failed: {type(exc).__name__}: {exc}")
        if self.keep:
            progress(f"    kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Roles:
    source: Node | None
    collector: Node
    workers: list[Node]
    control: str
    fanout: str
    fanin: str
    start_source: Callable[[], Node]


def timing(peer: float, ready: float) -> tuple[str, ...]:
    return ("--peer-timeout", f"{peer:g}", "--ready-timeout", f"{ready:g}")


def roles(t: Trial, path: Path, *, workers: int = 1, frames: int = 300,
          shape: tuple[int, int] = (128, 256), dtype: str = "uint16", transport: str = "ipc",
          peer: float = 3.0, ready: float = 20.0, drain: float | None = 3.0,
          status: str | None = None, chain: str | None = None, tag: str = "",
          source: Iterable[str] = (), collector: Iterable[str] = (),
          worker: Iterable[str] = (), worker_input: str | None = None,
          start_source: bool = True) -> Roles:
    """The three roles as tests/test_pipeline.py's start_roles starts them: the collector,
    `workers` workers (w0, w1, ...), then the source; `tag` suffixes names and endpoints (a
    second run in the same row)."""
    control, fanout, fanin = (t.ep(n + tag, transport) for n in ("control", "fanout", "fanin"))
    tm = timing(peer, ready)
    col = t.node(f"collector{tag}", "collector", "--control", control, "--input", fanin,
                 "--file", str(path), *(("--drain-timeout", f"{drain:g}") if drain else ()),
                 *(("--status", status) if status else ()), *tm, *collector)
    ws = [t.node(f"w{i}{tag}", "worker", "--control", control, "--input",
                 worker_input or fanout, "--output", fanin, "--name", f"w{i}", "--index",
                 str(i), *tm, *worker) for i in range(workers)]
    src_args = ["--control", control, "--data", fanout, "--workers", str(workers),
                "--frames", str(frames), "--shape", "x".join(map(str, shape)), "--dtype", dtype,
                *(("--kernels", t.file("chain.json", chain)) if chain else ()), *tm, *source]
    r = Roles(None, col, ws, control, fanout, fanin,
              lambda: t.node(f"source{tag}", "source", *src_args))
    if start_source:
        r.source = r.start_source()
    return r


def wait_started(t: Trial, source: Node) -> bool:
    """The source logged that every peer is READY (tests/conftest.py's wait_run_started)."""
    return source.wait_line("the collector ready", t.until(60)) is not None


# -- the file -----------------------------------------------------------------------------------


@dataclass
class Ledger:
    exists: bool
    written: set[int] = field(default_factory=set)
    missing: dict[int, str] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    both: set[int] = field(default_factory=set)  # written and recorded missing
    foreign: set[int] = field(default_factory=set)  # ids in the file outside the run's
    damaged: list[int] = field(default_factory=list)
    compared: int = 0
    duplicates: int | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    ids: int = 0  # entries in the file's frame table
    complete: bool = False
    finished: bool = False
    ledger: Path | None = None


def check_file(path: Path, n: int, mode: Mode, frame_of: Callable[[int], np.ndarray],
               always: Collection[int] = ()) -> Ledger:
    """The file at `path` against the run's ids 0 .. n-1 (see the module docstring)."""
    from stream_node import read_run

    run_ids = set(range(n))
    if not path.exists():
        return Ledger(False, lost=sorted(run_ids))
    with read_run(path) as run:
        fids = [int(x) for x in np.asarray(run.frame_ids).tolist()]
        received = np.asarray(run.received, bool)
        pos = np.flatnonzero(received).tolist()
        written = {fids[p] for p in pos}
        missing = {int(k): v for k, v in run.missing.items()}
        step = 1 if not mode.sample else max(1, len(pos) // mode.sample)
        wanted = set(always)
        pick = sorted(set(pos[::step]) | set(pos[-1:]) | {p for p in pos if fids[p] in wanted})
        damaged = [fids[p] for p in pick
                   if np.asarray(run.frames[p]).tobytes() != frame_of(fids[p]).tobytes()]
        counters = dict(run.counters)
        dups = counters.get("duplicates")
        return Ledger(True, written, missing, sorted(run_ids - written - set(missing)),
                      written & set(missing), (written | set(missing)) - run_ids, damaged,
                      len(pick), None if dups is None else int(dups), counters, len(fids),
                      bool(run.complete), bool(run.finished), run.ledger)


def synthetic(shape: tuple[int, int], dtype: str = "uint16") -> Callable[[int], np.ndarray]:
    from stream_node import SyntheticDetector

    det = SyntheticDetector(shape, dtype)
    return det.frame


def summary_sent(source: Node | None) -> int | None:
    """N of the source's run summary (`frames  W written of N sent`), if it printed one."""
    m = source and re.search(r"written of (\d+) sent", source.stdout)
    return int(m.group(1)) if m else None


# -- a row --------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    sent: object = "—"
    written: object = "—"
    missing: object = "—"
    lost: object = "—"
    duplicates: object = "—"
    codes: str = "—"
    hang: str = "—"
    message: str = ""
    fails: list[str] = field(default_factory=list)  # these fail the bench
    unmet: list[str] = field(default_factory=list)  # the row's own checks that did not hold
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def cells(self) -> list[object]:
        return [self.name, self.sent, self.written, self.missing, self.lost, self.duplicates,
                self.codes, self.hang, cell(self.message)]


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ (\w+) [\w.]+: ")


def last_error(node: Node, fallback: bool = True) -> str:
    """A node's last error line: its final `stream-node ROLE: error: ...`, else its last
    ERROR (then WARNING) log line, else (with `fallback`) its last line; timestamp and logger
    dropped."""
    lines = [x for x in node.err if x.strip()]
    for want in (("error:", "Assertion failed", "Traceback", " ERROR ", " CRITICAL "),
                 (" WARNING ",)):
        for line in reversed(lines):
            if any(w in line for w in want):
                return short(line)
    return short(lines[-1]) if lines and fallback else ""


def short(line: str, chars: int = MSG_CHARS) -> str:
    line = LOG_PREFIX.sub("", line.strip()).removeprefix("stream-node ")
    line = " ".join(line.split())
    if len(line) <= chars:
        return line
    head = chars // 2
    return line[:head] + " … " + line[-(chars - head - 3):]


def expected_codes(node: Node, expect: dict[str, Collection[int]]) -> Collection[int]:
    if node.faulted:
        return {KILLED}
    return expect.get(node.name, expect.get(node.role, ENDED))


def make_row(t: Trial, *, sent: int, ledger: Ledger | None,
             expect: dict[str, Collection[int]], checks: Iterable[tuple[str, bool]] = (),
             message: str | None = None, notes: Iterable[str] = (),
             damage_expected: Collection[int] | None = None) -> Row:
    """The row of a settled trial: the file's figures, the nodes' codes and the verdict.
    `expect` maps a node's name, else its role, to the exit codes the row expects of it;
    `checks` are the row's own asserts (reported when false, never failing the bench)."""
    row = Row(t.name, sent=sent, notes=list(notes))
    nodes = [n for n in t.nodes if not n.aux]
    bad: list[Node] = []
    for n in nodes:
        if n.hung:
            row.fails.append(f"{n.name} hung: killed at the deadline ({t.budget_s:.0f} s)")
        elif n.code not in expected_codes(n, expect):
            bad.append(n)
            row.fails.append(f"{n.name} exited {n.code}, expected "
                             f"{'/'.join(map(str, sorted(expected_codes(n, expect))))}: "
                             f"{last_error(n)}")
    row.codes = " / ".join(
        ",".join(("hung" if n.hung else str(n.code))
                 + ("!" if n in bad or n.hung else "") for n in nodes if n.role == role) or "—"
        for role in ("source", "collector", "worker"))
    hung = [n.name for n in nodes if n.hung]
    row.hang = f"yes: {', '.join(hung)}" if hung else "no"
    if ledger is not None:
        if ledger.exists:
            row.written, row.missing = len(ledger.written), len(ledger.missing)
            row.duplicates = "—" if ledger.duplicates is None else ledger.duplicates
        else:
            row.written = row.missing = "— (no file)"
        row.lost = len(ledger.lost)
        if ledger.lost:
            row.fails.append(f"{len(ledger.lost)} frames neither written nor recorded missing "
                             f"(ids {ranges(ledger.lost)})")
        if ledger.both:
            row.fails.append(f"ids both written and recorded missing: {ranges(ledger.both)}")
        if ledger.foreign:
            row.unmet.append(f"ids outside the run in the file: {ranges(ledger.foreign)}")
        expected_damage = set(damage_expected or ())
        wrong = [i for i in ledger.damaged if i not in expected_damage]
        if wrong:
            row.fails.append(f"written frames that differ from what was sent: {ranges(wrong)}")
        if ledger.exists:
            row.notes.append(f"{ledger.compared} written frames compared byte for byte")
        if ledger.missing:
            reasons = sorted(set(ledger.missing.values()), key=list(ledger.missing.values()).index)
            row.notes.append(f"missing ids {ranges(ledger.missing)}; reason"
                             f"{'s' if len(reasons) > 1 else ''}: "
                             + "; ".join(short(r, 100) for r in reasons[:2])
                             + (f" (+{len(reasons) - 2} other reasons)" if len(reasons) > 2
                                else ""))
    row.unmet += [what for what, held in checks if not held]
    if message is not None:
        row.message = message
    else:
        row.message = pick_message(nodes, bad)
    return row


def pick_message(nodes: list[Node], bad: list[Node]) -> str:
    """The source's last error if it failed; else (or when it logged none) that of the node
    whose exit is the news; else the source's last warning."""
    src = next((n for n in nodes if n.role == "source"), None)
    failed = src is not None and src.code not in (OK, None)
    if failed and (text := last_error(src, fallback=False)):
        return text
    for n in [*bad, *(n for n in nodes if n.code not in (OK, None) and not n.faulted)]:
        if text := last_error(n, fallback=False):
            return text
    for n in nodes:
        if n.hung:
            return f"{n.name} hung; its last line: {last_error(n)}"
    if src is not None:
        return last_error(src) if failed else next(
            (short(x) for x in reversed(src.err) if " WARNING " in x), "ok")
    return ""


def ranges(ids: Iterable[int]) -> str:
    """Ids as "0-200, 203, 205-210" (at most 8 runs shown)."""
    out: list[str] = []
    start = prev = None
    for i in [*sorted(ids), None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(out[:8]) + (f", … ({len(out) - 8} more runs)" if len(out) > 8 else "")


def skip(t: Trial, reason: str) -> Row:
    return Row(t.name, message=f"skipped: {reason}", skipped=reason)


# -- the rows -----------------------------------------------------------------------------------
# Each takes its trial and returns its row; the test it copies is named in its docstring.


def max_message(t: Trial) -> Row:
    """tests/test_untrusted_ids.py test_a_frame_larger_than_the_links_allow_is_refused_at_start
    _naming_the_setting: 6000x6000 uint16 (68.7 MiB) over the default --max-message 64 MiB."""
    path = t.tmp / "run.h5"
    # --ready-timeout 8: the collector, which the source may never hear from, waits that long
    r = roles(t, path, frames=3, shape=(6000, 6000), ready=8)
    t.settle()
    assert r.source is not None
    err = r.source.stderr
    return make_row(t, sent=0, ledger=check_file(path, 0, t.mode, synthetic((6000, 6000))),
                    expect={"source": {CONFIG}, "collector": FAILED, "worker": FAILED},
                    checks=[("the source's error names --max-message and '69MiB or more'",
                             "--max-message" in err and "69MiB or more" in err),
                            ("refused before frame 0 (no 'END sent')", "END sent" not in err),
                            ("no file made", not path.exists())])


def wrong_endpoint(t: Trial) -> Row:
    """tests/test_untrusted_ids.py test_a_run_whose_worker_reads_another_endpoint_ends_naming_it:
    the worker reads a silent PUSH of "another run"; --stall-timeout 3 ends the run."""
    ctx = t.context()
    elsewhere = ctx.socket(zmq.PUSH)
    t.cleanups.append(lambda: elsewhere.close(linger=0))
    other = t.ep("another-runs-fanout")
    elsewhere.bind(other)
    path = t.tmp / "run.h5"
    r = roles(t, path, frames=20, shape=(64, 64), peer=2, drain=2, worker_input=other,
              source=("--stall-timeout", "3"))
    t.settle()
    assert r.source is not None
    err = r.source.stderr
    led = check_file(path, 20, t.mode, synthetic((64, 64)))
    return make_row(t, sent=20, ledger=led,
                    expect={"source": {PEER}, "collector": FAILED, "worker": FAILED},
                    checks=[("the source's error names --stall-timeout and --data FANOUT",
                             "--stall-timeout" in err and f"--data {r.fanout}" in err),
                            ("all 20 recorded missing, none written",
                             len(led.missing) == 20 and not led.written)])


PAUSE_PEER_TIMEOUT = 1.0
PAUSE_FRAMES = 1500
PAUSE_SHAPE = (256, 512)


def pause(t: Trial, factor: float) -> Row:
    """tests/test_pauses.py paused_run: the collector SIGSTOPped 3 times for factor x
    --peer-timeout 1, after 100, 200 and 300 frames written, 1500 frames of 256x512 at 600/s."""
    status = t.ep("status", "tcp")
    path = t.tmp / "run.h5"
    r = roles(t, path, workers=2, frames=PAUSE_FRAMES, shape=PAUSE_SHAPE, transport="tcp",
              peer=PAUSE_PEER_TIMEOUT, drain=3, status=status, source=("--rate", "600"))
    assert r.source is not None
    started = wait_started(t, r.source)
    paused = 0
    for k in range(3 if started else 0):
        if r.collector.proc.poll() is not None:
            break
        if not t.wait_written(status, (k + 1) * 100, r.collector, within_s=20):
            break  # the run has ended (after a 2x pause): nothing more to pause
        r.collector.signal(signal.SIGSTOP)
        try:
            threading.Event().wait(factor * PAUSE_PEER_TIMEOUT)  # the fault's length
        finally:
            r.collector.signal(signal.SIGCONT)
        paused += 1
    t.settle()
    sent = summary_sent(r.source) or PAUSE_FRAMES
    led = check_file(path, sent, t.mode, synthetic(PAUSE_SHAPE))
    short_pause = factor < 1
    expect: dict[str, Collection[int]] = (
        {"source": {OK}, "collector": {OK}, "worker": {OK}} if short_pause
        else {"source": {PEER}, "collector": ENDED, "worker": ENDED})
    checks = [("no libzmq assertion in the collector",
               "Assertion failed" not in r.collector.stderr),
              ("the run started", started)]
    if short_pause:
        checks += [("3 pauses made", paused == 3), ("nothing missing", not led.missing)]
    else:
        checks += [("the file exists", led.exists)]
    return make_row(t, sent=sent, ledger=led, expect=expect, checks=checks,
                    notes=[f"{paused} pauses of {factor * PAUSE_PEER_TIMEOUT:g} s made"])


def busy_worker(t: Trial) -> Row:
    """tests/test_pauses.py test_a_worker_busy_in_one_call_for_three_peer_timeouts_is_alive:
    1.5 s per frame in one kernel call, --peer-timeout 0.5, --reliable, 4 frames."""
    path = t.tmp / "run.h5"
    r = roles(t, path, frames=4, shape=(64, 64), peer=0.5, drain=None, chain=BUSY,
              source=("--reliable",))
    t.settle()
    assert r.source is not None
    err = r.source.stderr
    led = check_file(path, 4, t.mode, synthetic((64, 64)))
    return make_row(t, sent=4, ledger=led, expect={"source": {OK}, "collector": {OK},
                                                   "worker": {OK}},
                    checks=[("the worker was never called silent nor its frames sent again",
                             "silent" not in err and "again" not in err),
                            ("no duplicates", led.duplicates == 0),
                            ("every frame written", len(led.written) == 4)])


def peer_fault_roles(t: Trial, path: Path, status: str, frames: int, rate: int,
                     reliable: bool, drain: float = 4.0) -> Roles:
    """tests/test_peer_faults.py start(): tcp, 2 workers with 4 ms of work per frame,
    --peer-timeout 1, frames of 64x128."""
    return roles(t, path, workers=2, frames=frames, shape=(64, 128), transport="tcp", peer=1.0,
                 drain=drain, status=status, chain=SLOW,
                 source=("--rate", str(rate), *(("--reliable",) if reliable else ())))


def killed_worker(t: Trial, reliable: bool) -> Row:
    """tests/test_peer_faults.py test_reliable_mode_loses_nothing_when_a_worker_is_killed (1000
    frames, as fast as the workers go) and test_default_mode_records_a_killed_workers_frames_
    missing_with_its_name (400 frames at 200/s): w0 SIGKILLed after 60 frames written."""
    status = t.ep("status", "tcp")
    path = t.tmp / "run.h5"
    frames = 1000 if reliable else 400
    r = peer_fault_roles(t, path, status, frames, 0 if reliable else 200, reliable)
    assert r.source is not None
    applied = wait_started(t, r.source) and t.wait_written(status, 60, r.collector)
    if applied:
        r.workers[0].kill()
    t.settle()
    sent = summary_sent(r.source) or frames
    led = check_file(path, sent, t.mode, synthetic((64, 128)))
    reports = led.counters.get("reports", {})
    checks = [("w0 killed after 60 frames written", applied),
              ("w0's report: no final report",
               reports.get("workers", {}).get("w0") == {"error": "no final report"})]
    if reliable:
        checks += [("nothing missing", not led.missing),
                   ("frames sent again (redispatched > 0)",
                    reports.get("source", {}).get("redispatched", 0) > 0),
                   ("'sent again' in the source's log", "sent again" in r.source.stderr)]
        expect: dict[str, Collection[int]] = {"source": {OK}, "collector": {OK}, "w1": {OK}}
    else:
        checks += [("every missing reason names w0's lost report",
                    all("worker w0 ended without a final report" in x
                        for x in led.missing.values()))]
        expect = {"source": DONE, "collector": DONE, "w1": DONE}
    return make_row(t, sent=sent, ledger=led, expect=expect, checks=checks)


def frozen_worker(t: Trial) -> Row:
    """tests/test_peer_faults.py test_a_worker_that_stalls_forever (default mode): w0
    SIGSTOPped after 60 frames written and never resumed; SIGKILLed once the run ended."""
    status = t.ep("status", "tcp")
    path = t.tmp / "run.h5"
    r = peer_fault_roles(t, path, status, 400, 200, False)
    assert r.source is not None
    applied = wait_started(t, r.source) and t.wait_written(status, 60, r.collector)
    if applied:
        r.workers[0].signal(signal.SIGSTOP)
    t.settle([r.source, r.collector, r.workers[1]])
    r.workers[0].kill()  # frozen for good: it cannot end by itself
    t.settle()
    sent = summary_sent(r.source) or 400
    led = check_file(path, sent, t.mode, synthetic((64, 128)))
    reports = led.counters.get("reports", {})
    return make_row(t, sent=sent, ledger=led,
                    expect={"source": DONE, "collector": DONE, "w1": DONE},
                    checks=[("w0 frozen after 60 frames written", applied),
                            ("every missing reason names w0",
                             all("w0" in x for x in led.missing.values())),
                            ("w0's report: no final report",
                             reports.get("workers", {}).get("w0")
                             == {"error": "no final report"})])


def collector_resume(t: Trial) -> Row:
    """tests/test_peer_faults.py test_a_killed_collector_resumes_the_same_file (one file):
    SIGKILL the collector after 150 of 600 frames (150/s), start it again with --resume."""
    if shutil.which("h5clear") is None:
        return skip(t, "no h5clear (apt install hdf5-tools) to resume a file a dead "
                       "collector left")
    from stream_node import read_run

    control, fanout, fanin, status = (t.ep(n, "tcp") for n in "cdos")
    tm = timing(1, 20)
    path = t.tmp / "run.h5"

    def collector(name: str, *extra: str) -> Node:
        return t.node(name, "collector", "--control", control, "--input", fanin, "--file",
                      str(path), "--drain-timeout", "3", "--flush-interval", "0.2",
                      "--status", status, "--frames-per-file", "0", *tm, *extra)

    first = collector("collector")
    for i in range(2):
        t.node(f"w{i}", "worker", "--control", control, "--input", fanout, "--output", fanin,
               "--name", f"w{i}", "--index", str(i), *tm)
    source = t.node("source", "source", "--control", control, "--data", fanout, "--workers",
                    "2", "--frames", "600", "--shape", "64x128", "--rate", "150",
                    "--collector-restart", "30", *tm)
    applied = wait_started(t, source) and t.wait_written(status, 150, first)
    flushed: set[int] = set()
    if applied:
        first.kill()
        with read_run(path) as run:
            flushed = set(np.asarray(run.frame_ids)[np.asarray(run.received, bool)].tolist())
        collector("collector-2", "--resume")
    t.settle()
    sent = summary_sent(source) or 600
    led = check_file(path, sent, t.mode, synthetic((64, 128)))
    return make_row(t, sent=sent, ledger=led,
                    expect={"source": DONE, "collector-2": DONE, "worker": DONE},
                    checks=[("killed after 150 frames written", applied),
                            ("> 50 frames flushed before the kill", len(flushed) > 50),
                            ("'resumed the run' in the source's log",
                             "resumed the run" in source.stderr),
                            ("every frame of the last flush still written",
                             flushed <= led.written),
                            ("every missing reason says 'restarted mid-run'",
                             all("restarted mid-run" in x for x in led.missing.values()))],
                    notes=[f"{len(flushed)} frames flushed when the collector was killed"])


def full_disk(t: Trial) -> Row:
    """tests/test_full_disk.py test_a_disk_that_fills_mid_run_leaves_every_frame_readable_or_
    in_a_ledger: a 16 MiB tmpfs takes ~230 of 600 frames of 128x256 (400/s)."""
    if os.geteuid() != 0:
        return skip(t, "a small tmpfs needs root to mount")
    disk = t.tmp / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs",
                           str(disk)], capture_output=True, text=True, timeout=30)
    if done.returncode:
        return skip(t, f"cannot mount a small tmpfs ({done.stderr.strip()})")

    def umount() -> None:
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)

    t.cleanups.append(umount)
    path = disk / "run.h5"
    r = roles(t, path, frames=600, shape=(128, 256), transport="tcp", peer=2, drain=3,
              collector=("--flush-interval", "0.1"), source=("--rate", "400"))
    t.settle()
    sent = summary_sent(r.source) or 600
    led = check_file(path, sent, t.mode, synthetic((128, 256)))
    last = r.collector.err[-1] if r.collector.err else ""
    return make_row(t, sent=sent, ledger=led,
                    expect={"source": {IO}, "collector": {IO}, "worker": ENDED},
                    checks=[("the collector's last line says 'No space left on device'",
                             "No space left on device" in last),
                            ("a sidecar ledger was written and merged",
                             led.ledger is not None),
                            ("some but not all frames readable",
                             5 < len(led.written) < sent),
                            ("read_run says the run is not complete", not led.complete)])


def overwrite_live(t: Trial) -> Row:
    """tests/test_file_lock.py test_a_file_being_written_is_refused_to_a_second_collector
    [overwrite]: a second run's collector with --overwrite on the live run's file; then SIGINT
    ends the first run, whose file must hold every frame it sent."""
    status = t.ep("status", "tcp")
    path = t.tmp / "run.h5"
    first = roles(t, path, frames=100000, shape=(64, 128), transport="tcp", peer=2,
                  collector=("--flush-interval", "0.1", "--status", status),
                  source=("--rate", "200"))
    assert first.source is not None
    applied = wait_started(t, first.source) and t.wait_written(status, 40, first.collector)
    second = None
    if applied:
        # --ready-timeout 8: a worker that says HELLO after its source gave up waits that long
        second = roles(t, path, tag="-2", frames=10, shape=(64, 128), transport="tcp", peer=2,
                       ready=8, collector=("--overwrite",), source=("--rate", "100"))
        assert second.source is not None
        t.settle([second.collector, second.source])
    first.source.signal(signal.SIGINT)
    t.settle()
    sent = summary_sent(first.source) or 0
    led = check_file(path, sent, t.mode, synthetic((64, 128)))
    refusal = f"{path} is being written by another collector (pid {first.collector.proc.pid}"
    return make_row(t, sent=sent, ledger=led,
                    expect={"source": {OK}, "collector": {OK}, "w0": {OK},
                            "source-2": {CONFIG}, "collector-2": {CONFIG}, "w0-2": FAILED},
                    checks=[("second run started after 40 frames written", applied),
                            ("the second collector names the file and the live pid",
                             second is not None and refusal in second.collector.stderr),
                            ("the first run's file is complete, nothing missing",
                             led.complete and not led.missing),
                            ("no lock file left", not (t.tmp / "run.h5.lock").exists())],
                    message=last_error(second.collector) if second else None)


def load_senders() -> Any:
    spec = importlib.util.spec_from_file_location("protocol_senders", SENDER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dectris_absurd_id(t: Trial, fault: str) -> Row:
    """tests/test_untrusted_ids.py test_an_absurd_frame_number_of_an_unknown_length_series_is_
    a_fault_not_an_allocation: 8 frames of 48x64, header_detail none, frame 3 numbered 10^12
    (huge_id) or 2^70 (overflow_id)."""
    if not SENDER.exists():
        return skip(t, f"no {SENDER}")
    sender = t.spawn("sender", "sender", [sys.executable, str(SENDER), "dectris", "--frames",
                                          "8", "--detail", "none", "--fault", fault,
                                          "--fault-frame", "3"], aux=True)
    line = sender.wait_line("ENDPOINT ", t.until(30), out=True)
    if line is None:
        t.settle([])
        return make_row(t, sent=8, ledger=None, expect={},
                        message="the DECTRIS sender did not start: " + last_error(sender))
    endpoint = line.split()[1]
    path = t.tmp / "run.h5"
    roles(t, path, frames=8, source=("--from", f"dectris+{endpoint}?timeout=3"))
    t.settle()
    senders = load_senders()
    led = check_file(path, 8, t.mode, lambda i: senders.frame(i, (48, 64), "uint16"))
    want = {"dectris_out_of_range" if fault == "huge_id" else "dectris_invalid": 1}
    origin = led.counters.get("reports", {}).get("source", {}).get("origin")
    return make_row(t, sent=8, ledger=led,
                    expect={"source": {MISSING}, "collector": {MISSING}, "worker": DONE},
                    checks=[("8 ids in the file: nothing allocated up to the absurd one",
                             led.ids == 8),
                            ("frame 3 alone recorded missing", set(led.missing) == {3}),
                            (f"the source's origin counted {want}", origin == want)],
                    notes=[f"source's origin counters {origin}"] if origin != want else ())


class BitFlipper:
    """tests/test_checksum.py's: PULL at `inlet`, PUSH to `outlet`; flips a bit of frame
    `damaged`'s payload the first time it passes (the header untouched)."""

    def __init__(self, ctx: zmq.Context, outlet: str, damaged: int) -> None:
        self.inlet = free_tcp_endpoint()
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(self.inlet)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(outlet)
        self.damaged = damaged
        self.stop = threading.Event()
        self.flipped = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from stream_node.model.frame import FrameHeader

        while not self.stop.is_set():  # bounded: close() sets stop, each poll is 50 ms
            if not self.pull.poll(50):
                continue
            header, payload = self.pull.recv_multipart()
            if FrameHeader.parse(header).frame_id == self.damaged and not self.flipped:
                damaged = bytearray(payload)
                damaged[100] ^= 0x10
                payload = bytes(damaged)
                self.flipped += 1
            self.push.send_multipart([header, payload])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.pull.close(linger=0)
        self.push.close(linger=0)


BITFLIP_FRAMES = 40
BITFLIP_DAMAGED = 5


def bitflip(t: Trial, checksum: bool, reliable: bool) -> Row:
    """tests/test_checksum.py test_a_payload_damaged_between_worker_and_collector: 40 frames of
    64x128 at 100/s; one bit of frame 5's payload flipped between the worker and the
    collector."""
    ctx = t.context()
    control, data, fanin = (t.ep(n, "tcp") for n in "cdo")
    path = t.tmp / "run.h5"
    tm = timing(2, 20)
    t.node("collector", "collector", "--control", control, "--input", fanin, "--file",
           str(path), "--drain-timeout", "2", *tm)
    flipper = BitFlipper(ctx, fanin, BITFLIP_DAMAGED)
    t.cleanups.append(flipper.close)
    t.node("w0", "worker", "--control", control, "--input", data, "--output", flipper.inlet,
           *tm)
    t.node("source", "source", "--control", control, "--data", data, "--workers", "1",
           "--frames", str(BITFLIP_FRAMES), "--shape", "64x128", "--rate", "100",
           *(("--checksum",) if checksum else ()),
           *(("--reliable", "--resend-after", "1") if reliable else ()), *tm)
    t.settle()
    led = check_file(path, BITFLIP_FRAMES, t.mode, synthetic((64, 128)),
                     always=range(BITFLIP_FRAMES))
    corrupt = led.counters.get("dropped_corrupt")
    checks = [("one bit flipped in transit", flipper.flipped == 1)]
    if not checksum:
        return make_row(t, sent=BITFLIP_FRAMES, ledger=led,
                        expect={"source": {OK}, "collector": {OK}, "worker": {OK}},
                        checks=[*checks, ("frame 5 alone written damaged",
                                          led.damaged == [BITFLIP_DAMAGED])],
                        damage_expected={BITFLIP_DAMAGED},
                        message=f"damaged written: {len(led.damaged)} frame(s), ids "
                                f"{ranges(led.damaged) or 'none'}; exit 0, nothing recorded",
                        notes=[f"{len(led.damaged)} frame(s) written damaged (ids "
                               f"{ranges(led.damaged) or 'none'}), not counted as lost: "
                               "without --checksum a payload damaged in transit reaches the "
                               "file as data (what this row shows)"])
    checks += [("the collector dropped it (dropped_corrupt == 1)", corrupt == 1)]
    if reliable:
        checks += [("nothing missing, every frame written",
                    not led.missing and len(led.written) == BITFLIP_FRAMES)]
        expect: dict[str, Collection[int]] = {"source": {OK}, "collector": {OK},
                                              "worker": {OK}}
    else:
        checks += [("frame 5 alone recorded missing, for a checksum mismatch",
                    list(led.missing) == [BITFLIP_DAMAGED]
                    and "payload checksum mismatch" in led.missing[BITFLIP_DAMAGED])]
        expect = {"source": {MISSING}, "collector": {MISSING}, "worker": DONE}
    return make_row(t, sent=BITFLIP_FRAMES, ledger=led, expect=expect, checks=checks,
                    notes=[f"dropped_corrupt {corrupt}"])


def topology(t: Trial) -> Row:
    """tests/test_untrusted_ids.py test_a_node_of_another_topology_is_refused_by_name_never_
    counted_as_ours: a worker of topology 'someone-else' on beamline-a's control endpoint
    (started before the source, so its HELLO is judged however fast the run goes)."""
    path = t.tmp / "run.h5"
    topo = ("--topology", "beamline-a")
    r = roles(t, path, frames=30, source=topo, collector=topo, worker=topo, start_source=False)
    intruder = t.node("intruder", "worker", "--control", r.control, "--input", r.fanout,
                      "--output", r.fanin, "--name", "intruder", "--topology", "someone-else",
                      "--ready-timeout", "20")
    r.source = r.start_source()
    t.settle()
    led = check_file(path, 30, t.mode, synthetic((128, 256)))
    refused = led.counters.get("reports", {}).get("source", {}).get("refused_peers")
    return make_row(t, sent=30, ledger=led,
                    expect={"source": {OK}, "collector": {OK}, "w0": {OK},
                            "intruder": {CONFIG}},
                    checks=[("the intruder names both topologies",
                             "belongs to topology 'beamline-a'" in intruder.stderr
                             and "'someone-else'" in intruder.stderr),
                            ("the source logs 'refused worker intruder'",
                             "refused worker intruder" in r.source.stderr),
                            ("refused_peers == 1", refused == 1),
                            ("nothing missing", not led.missing)],
                    message=last_error(intruder))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def why_no_namespaces() -> str | None:
    """tests/test_multihost.py's: why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if shutil.which("tc") is None:
        return "no `tc` command (iproute2) to throttle a link"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"sn-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def triangle(t: Trial) -> dict[str, Any]:
    """tests/test_partition.py's triangle: hosts "source", "worker" and "collector", each pair
    on a veth pair of its own; deleted (with any process left in them) at the trial's end."""
    tag = secrets.token_hex(3)
    base = f"10.{secrets.randbelow(40) + 100}"
    hosts = ("source", "worker", "collector")
    ns = {h: f"sn-{h[:3]}-{tag}" for h in hosts}
    addr: dict[tuple[str, str], str] = {}
    made: list[str] = []

    def remove() -> None:
        for name in made:
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)  # only this row's nodes live there
            ip("netns", "del", name, check=False)

    t.cleanups.append(remove)
    for h in hosts:
        ip("netns", "add", ns[h])
        made.append(ns[h])
        ip("-n", ns[h], "link", "set", "lo", "up")
    for k, (a, b) in enumerate((("source", "worker"), ("source", "collector"),
                                ("worker", "collector"))):
        subnet = f"{base}.{secrets.randbelow(60) * 4 + k}"
        ends = {a: f"sn{a[0]}{b[0]}{tag}", b: f"sn{b[0]}{a[0]}{tag}"}
        ip("link", "add", ends[a], "netns", ns[a], "type", "veth", "peer", "name", ends[b],
           "netns", ns[b])
        for host, last in ((a, 1), (b, 2)):
            addr[(host, a if host == b else b)] = f"{subnet}.{last}"
            ip("-n", ns[host], "addr", "add", f"{subnet}.{last}/24", "dev", ends[host])
            ip("-n", ns[host], "link", "set", ends[host], "up")
    return {"ns": ns, "addr": addr, "cut": (ns["worker"], f"snwc{tag}")}


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=30)


def partition(t: Trial, how: str) -> Row:
    """tests/test_partition.py test_reliable_mode_loses_nothing_when_a_worker_is_cut_off_from_
    the_collector_only: --reliable, 2 workers (4 ms/frame) at 200 frames/s; after 200 frames
    written the worker host's link to the collector goes down, or is throttled to 1 kbit/s
    (tbf), for 3 s; --resend-after 2."""
    reason = why_no_namespaces()
    if reason:
        return skip(t, reason)
    net = triangle(t)
    ns, addr = net["ns"], net["addr"]
    cut_ns, cut_link = net["cut"]
    on = {h: ("ip", "netns", "exec", n) for h, n in ns.items()}
    status = f"ipc://{t.tmp}/status"  # a socket file: reachable from this namespace
    path = t.tmp / "run.h5"
    chain = t.file("chain.json", SLOW)
    tm = timing(1, 20)
    frames = t.mode.partition_frames

    def ctl(host: str) -> str:
        return f"tcp://{addr[('source', host)]}:5550"

    collector = t.node("collector", "collector", "--control", ctl("collector"), "--input",
                       "tcp://*:5552", "--file", str(path), "--drain-timeout", "6",
                       "--status", status, *tm, prefix=on["collector"])
    for host, index in (("worker", 0), ("source", 1)):
        to_source = "tcp://127.0.0.1" if host == "source" else f"tcp://{addr[('source', host)]}"
        t.node("w-cut" if host == "worker" else "w-local", "worker", "--control",
               ctl(host) if host != "source" else "tcp://127.0.0.1:5550",
               "--input", f"{to_source}:5551",
               "--output", f"tcp://{addr[('collector', host)]}:5552", "--name", host,
               "--index", str(index), *tm, prefix=on[host])
    source = t.node("source", "source", "--control", "tcp://*:5550", "--data", "tcp://*:5551",
                    "--workers", "2", "--frames", str(frames), "--rate", "200",
                    "--shape", "64x128", "--kernels", chain, "--reliable",
                    "--resend-after", "2", *tm, prefix=on["source"])
    applied = wait_started(t, source) and t.wait_written(status, 200, collector)
    if applied:
        if how == "down":
            ip("-n", cut_ns, "link", "set", cut_link, "down")
        else:
            tc("-n", cut_ns, "qdisc", "add", "dev", cut_link, "root", "tbf", "rate", "1kbit",
               "burst", "1600", "latency", "1ms")
        try:
            threading.Event().wait(3.0)  # the partition's length (the fault), not a sync
        finally:
            if how == "down":
                ip("-n", cut_ns, "link", "set", cut_link, "up")
            else:
                tc("-n", cut_ns, "qdisc", "del", "dev", cut_link, "root")
    t.settle()
    sent = summary_sent(source) or frames
    led = check_file(path, sent, t.mode, synthetic((64, 128)))
    report = led.counters.get("reports", {}).get("source", {})
    return make_row(t, sent=sent, ledger=led,
                    expect={"source": {OK}, "collector": {OK}, "worker": {OK}},
                    checks=[("cut after 200 frames written", applied),
                            ("nothing missing", not led.missing),
                            ("the worker was never lost (redispatched == 0)",
                             report.get("redispatched") == 0),
                            ("its frames were sent again (resent_unacked > 0)",
                             report.get("resent_unacked", 0) > 0)],
                    notes=[f"source: redispatched {report.get('redispatched')}, resent_unacked "
                           f"{report.get('resent_unacked')}"])


def sigint_source(t: Trial) -> Row:
    """README "Stopping" (tests/test_file_lock.py ends its live run so): 2 workers at 4 ms per
    frame, the source as fast as it goes (its queues full: frames in flight), SIGINT once 100
    frames are written. The run ends at the last frame sent: every one written, exit 0."""
    status = t.ep("status", "tcp")
    path = t.tmp / "run.h5"
    r = roles(t, path, workers=2, frames=100000, shape=(64, 128), peer=2, status=status,
              chain=SLOW, source=("--rate", "0"))
    assert r.source is not None
    applied = wait_started(t, r.source) and t.wait_written(status, 100, r.collector)
    before = t.written_now(status) if applied else -1
    r.source.signal(signal.SIGINT)
    t.settle()
    sent = summary_sent(r.source)
    led = check_file(path, sent or 0, t.mode, synthetic((64, 128)))
    return make_row(t, sent=sent if sent is not None else "— (no summary)", ledger=led,
                    expect={"source": {OK}, "collector": {OK}, "worker": {OK}},
                    checks=[("SIGINT after 100 frames written", applied),
                            ("the source printed its summary", sent is not None),
                            ("the file's ids end at the last frame sent",
                             sent is not None and led.ids == sent),
                            ("the file is finalised (end_time)", led.finished),
                            ("nothing missing", not led.missing)],
                    notes=[f"{before} frames written when SIGINT was sent, so about "
                           f"{(sent or 0) - before} in flight"] if sent and before >= 0 else ())


def junk(run_shape: tuple[int, int]) -> list[list[bytes]]:
    """tests/test_failures.py's: 4 malformed messages and one of another run."""
    from stream_node import frame_header

    frame = np.zeros(run_shape, np.uint16)
    foreign = frame_header(frame, run_id=12345, frame_id=3)
    return [[b"garbage"], [b"\x00" * 96, b"x"], [b"SNFR" + b"\x00" * 92, b""],
            [foreign.pack(), frame.tobytes()], [b"one", b"two", b"three"]]


def malformed(t: Trial, where: str) -> Row:
    """tests/test_failures.py test_malformed_messages_to_a_worker_are_counted_and_good_frames_
    arrive (worker: a stray PUSH as the worker's second --input, 200 frames) and the same junk
    pushed into the collector's --input once the run started (400 frames at 200/s)."""
    ctx = t.context()
    rogue = ctx.socket(zmq.PUSH)
    rogue.setsockopt(zmq.SNDTIMEO, 20000)
    rogue.setsockopt(zmq.LINGER, 0)
    t.cleanups.append(lambda: rogue.close(linger=0))
    path = t.tmp / "run.h5"
    shape = (128, 256)
    sent_junk = 0
    if where == "worker":
        rogue_ep = t.ep("rogue")
        rogue.bind(rogue_ep)
        frames = 200
        r = roles(t, path, frames=frames, shape=shape, worker=("--input", rogue_ep))
        for parts in junk(shape):
            rogue.send_multipart(parts)
            sent_junk += 1
    else:
        frames = 400
        r = roles(t, path, frames=frames, shape=shape, source=("--rate", "200"))
        assert r.source is not None
        if wait_started(t, r.source):
            rogue.connect(r.fanin)
            for parts in junk(shape):
                rogue.send_multipart(parts)
                sent_junk += 1
    t.settle()
    assert r.source is not None
    led = check_file(path, frames, t.mode, synthetic(shape))
    if where == "worker":
        dropped = led.counters.get("reports", {}).get("workers", {}).get("w0", {}).get("dropped")
        checks = [("w0 dropped malformed 4, foreign 1",
                   dropped == {"malformed": 4, "foreign": 1}),
                  ("the summary shows the drops", "malformed" in r.source.stdout)]
    else:
        dropped = {k.removeprefix("dropped_"): v for k, v in led.counters.items()
                   if k.startswith("dropped_") and v}
        checks = [("the collector dropped all 5 (1 foreign)",
                   sum(dropped.values()) == 5 and dropped.get("foreign") == 1)]
    return make_row(t, sent=frames, ledger=led,
                    expect={"source": {OK}, "collector": {OK}, "worker": {OK}},
                    checks=[("5 junk messages sent", sent_junk == 5), *checks,
                            ("every frame written", len(led.written) == frames)],
                    notes=[f"{where} dropped {dropped}"])


# -- the matrix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Trial], Row]
    budget_s: float  # the deadline: any process still running then is a hang
    about: str


SCENARIOS = (
    Scenario("max-message", max_message, 60, "a 68.7 MiB frame over --max-message 64MiB"),
    Scenario("wrong-endpoint", wrong_endpoint, 60,
             "the worker reads another run's endpoint: --stall-timeout 3"),
    *(Scenario(f"pause-{f:g}x", lambda t, f=f: pause(t, f), 90,
               f"collector SIGSTOPped 3 times for {f:g}x --peer-timeout")
      for f in (0.5, 0.9, 2.0)),
    Scenario("busy-worker", busy_worker, 60,
             "a worker busy 1.5 s per frame, --peer-timeout 0.5, --reliable"),
    Scenario("killed-worker", lambda t: killed_worker(t, False), 60,
             "w0 SIGKILLed mid-run, default mode"),
    Scenario("killed-worker-reliable", lambda t: killed_worker(t, True), 60,
             "w0 SIGKILLed mid-run, --reliable"),
    Scenario("frozen-worker", frozen_worker, 60, "w0 SIGSTOPped for good, default mode"),
    Scenario("collector-resume", collector_resume, 90,
             "the collector SIGKILLed, restarted with --resume"),
    Scenario("full-disk", full_disk, 60, "a 16 MiB tmpfs fills mid-run"),
    Scenario("overwrite-live", overwrite_live, 90,
             "--overwrite on the file a live collector writes; then SIGINT"),
    Scenario("dectris-huge-id", lambda t: dectris_absurd_id(t, "huge_id"), 60,
             "DECTRIS stream of unknown length, frame 3 numbered 10^12"),
    Scenario("dectris-overflow-id", lambda t: dectris_absurd_id(t, "overflow_id"), 60,
             "DECTRIS stream of unknown length, frame 3 numbered 2^70"),
    Scenario("bitflip", lambda t: bitflip(t, False, False), 60,
             "a payload bit flipped worker -> collector, no --checksum"),
    Scenario("bitflip-checksum", lambda t: bitflip(t, True, False), 60,
             "a payload bit flipped worker -> collector, --checksum"),
    Scenario("bitflip-checksum-reliable", lambda t: bitflip(t, True, True), 60,
             "a payload bit flipped worker -> collector, --checksum --reliable"),
    Scenario("topology", topology, 60, "a worker of another --topology on our control"),
    Scenario("partition-down", lambda t: partition(t, "down"), 120,
             "worker <-> collector link down 3 s, --reliable (netns)"),
    Scenario("partition-tbf", lambda t: partition(t, "tbf"), 120,
             "worker <-> collector link at 1 kbit/s for 3 s, --reliable (netns)"),
    Scenario("sigint-source", sigint_source, 60, "SIGINT to the source, frames in flight"),
    Scenario("malformed-collector", lambda t: malformed(t, "collector"), 60,
             "junk pushed into the collector's --input"),
    Scenario("malformed-worker", lambda t: malformed(t, "worker"), 60,
             "junk on a worker's second --input"),
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_one(sc: Scenario, mode: Mode, keep: bool) -> Row:
    t = Trial(sc.name, mode, sc.budget_s, keep)
    t0 = time.monotonic()
    try:
        try:
            row = sc.run(t)
        except Exception:
            t.settle()
            row = make_row(t, sent=0, ledger=None, expect={},
                           message="the bench failed: " + traceback.format_exc().splitlines()[-1])
            row.fails.append("the row's own code raised:\n" + traceback.format_exc())
        except BaseException:  # Ctrl-C: end this row's nodes now, not at its deadline
            for node in t.nodes:
                node.end()
            raise
    finally:
        t.close()
    row.seconds = time.monotonic() - t0
    return row


def notes_text(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if r.skipped:
            out.append(f"- **{r.name}**: skipped: {r.skipped}")
            continue
        items = ([f"FAIL: {x}" for x in r.fails] + [f"check not met: {x}" for x in r.unmet]
                 + r.notes)
        out.append(f"- **{r.name}** ({r.seconds:.1f} s): " + ("; ".join(
            " ".join(x.split()) if "Traceback" not in x else x for x in items) or "—"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "sampled frame checks, 1000-frame partitions (default)",
                      "the tests' sizes everywhere, every frame compared")
    ap.add_argument("--only", metavar="NAME",
                    help="run the row NAME, or every row whose name starts with NAME")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--keep", action="store_true",
                    help="keep each row's directory (node logs, the file)")
    opts = ap.parse_args(argv)
    if opts.list:
        for sc in SCENARIOS:
            print(f"{sc.name:28s} {sc.about} (deadline {sc.budget_s:.0f} s)")
        return 0
    chosen = [sc for sc in SCENARIOS if opts.only is None or sc.name == opts.only
              or sc.name.startswith(opts.only)]
    if not chosen:
        ap.error(f"no row named {opts.only!r}; --list shows them")
    mode = FULL if opts.full else QUICK

    load0 = os.getloadavg()
    t_start = time.monotonic()
    rows = []
    for k, sc in enumerate(chosen, 1):
        progress(f"[{k}/{len(chosen)}] {sc.name}: {sc.about}")
        try:
            row = run_one(sc, mode, opts.keep)
        except KeyboardInterrupt:
            progress("interrupted: this row's processes were ended")
            return 130
        verdict = ("skipped" if row.skipped else "FAILED" if row.fails else "ok"
                   + (f" ({len(row.unmet)} checks not met)" if row.unmet else ""))
        progress(f"    {row.seconds:.1f} s, {verdict}: codes {row.codes}, lost {row.lost}, "
                 f"{row.message}")
        for x in row.fails + [f"check not met: {u}" for u in row.unmet]:
            progress("    " + x.replace("\n", "\n    "))
        rows.append(row)
    load1 = os.getloadavg()

    import h5py

    print(f"\nstream-node fault matrix ({mode.name}, {time.monotonic() - t_start:.0f} s): "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
          f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, h5py {h5py.__version__}, "
          f"HDF5 {h5py.version.hdf5_version}; load average "
          f"{', '.join(f'{x:.2f}' for x in load0)} at start, "
          f"{', '.join(f'{x:.2f}' for x in load1)} at end.\n")
    print("Each row: one fault in a real run (python -m stream_node source / worker / "
          "collector, real sockets, a real HDF5 file), checked frame by frame against the ids "
          "of the run. Exit codes: 0 complete, 3 frames missing, 4 peer timeout, 5 "
          "configuration, 6 I/O, 7 aborted, -9 the row's own SIGKILL; '!' marks one the row "
          "does not expect.\n")
    head = ["scenario", "frames sent", "written", "recorded missing", "lost unrecorded",
            "duplicates", "exit codes (source/collector/workers)", "hang?", "message"]
    print(md_table(head, "lrrrrrlll", [r.cells() for r in rows]))
    print("\nNotes:\n")
    print(notes_text(rows))
    failed = [r.name for r in rows if r.fails]
    unmet = [r.name for r in rows if r.unmet and not r.fails]
    skipped = [r.name for r in rows if r.skipped]
    print(f"\n{len(rows)} rows: {len(rows) - len(failed) - len(skipped)} passed"
          + (f" ({len(unmet)} with checks not met: {', '.join(unmet)})" if unmet else "")
          + f", {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}, "
          f"{len(skipped)} skipped{': ' + ', '.join(skipped) if skipped else ''}.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
