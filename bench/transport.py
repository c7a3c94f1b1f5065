"""ZeroMQ transport benchmark (issue 6): one link against raw pyzmq, and the fan-out.

Two tables from one run.

**One link.** A sender (this process) and a receiver (a spawned process, so nothing is inherited
by fork) move N messages of 1 MiB (512x1024 uint16) or 8 MiB (2048x2048 uint16) over
``tcp://127.0.0.1`` and ``ipc://``; the sender binds, the receiver connects, as a source and a
worker do. Three paths, run interleaved (raw, stream-node, +checksum, then in reverse, ...) so
that whatever else the machine does hits each:

* ``raw pyzmq``: plain PUSH/PULL sockets with pyzmq's defaults;
  ``send_multipart([8-byte counter, frame], copy=False)`` and ``recv_multipart(copy=False)``
  with a blocking receive, the counter read with ``int.from_bytes`` and the payload viewed with
  ``np.frombuffer``: the best a user gets from pyzmq.
* ``stream-node``: the package's own path: the sender's PUSH from ``transport.data_socket`` with
  the default ``LinkLimits`` (bounded HWMs and kernel buffers, IMMEDIATE, TCP keepalive), bound with
  ``transport.bind``, each message ``send_frame(frame_header(frame, run, i).pack(), frame)``;
  the receiver a ``PullInput`` (``data_socket`` PULL, connected, handshake watched), frames by
  ``take()`` (``recv_parts``), ``FrameHeader.parse`` and a numpy view of the payload with
  ``payload_view`` (shape and dtype from the header).
* ``stream-node +checksum``: the same, with ``--checksum``'s work: the sender seals each header
  with the payload's CRC-32C (``payload_crc``, ``FrameHeader.seal``), the receiver computes it
  again and compares (what ``stages/admission.py`` does): the cost of the option per hop.

Both senders send one prepared frame (zero-copy: ZeroMQ reads it where it is) and get a send
timeout, so a dead receiver fails the row instead of hanging it. No sleeps: the receiver opens a
monitor before it connects, waits for ``EVENT_HANDSHAKE_SUCCEEDED`` (``PullInput.wait_ready``
for stream-node) and only then tells the sender, over a pipe, to start. A run is timed from the
sender's first send to the receiver's last message (``perf_counter_ns``, CLOCK_MONOTONIC, the
same clock in both processes). The receiver checks every message's counter or frame id arrives
in order and, after the clock stops, compares the first and last payload with the frame sent.

Columns: GB/s is messages x frame bytes / time / 1e9; ratio is the row's GB/s over raw pyzmq's
on the same transport and size (the issue's floor is 0.95x); copies/message counts writes of the
frame's bytes: neither path copies in user space (ZeroMQ sends from the frame's buffer and
receives straight into the message it hands over), the kernel copies twice (into the socket and
out of it). Each row is the median of its runs (quick 3, full 5); the note gives the
slowest and fastest.

**Fan-out.** The real CLI pipeline, ``python -m stream_node collector / worker xW / source``
subprocesses over ipc (``--fan-transport tcp`` for 127.0.0.1), W = 1, 2, 4 workers, in the
default mode (PUSH round-robin) and with ``--reliable`` (credit-based dispatch), each with the
package's defaults (credit 4, window 64, HWM 8). Every worker runs the kernel chain
``[{"kernel": "python:stream_node.kernels.examples.delay"}]``, which sleeps
``$STREAM_NODE_EXAMPLE_DELAY_S`` (unset: 0) per frame; in the "one slow" rows worker index 0
alone gets ``STREAM_NODE_EXAMPLE_DELAY_S=0.02`` (at most 50 frames/s), the others none. frames/s
and the time are the source's run summary (from every peer READY to the collector's last frame:
process start-up is not in it). The slow worker's share is the fraction of
``/entry/frames/worker`` that is its index, beside 1/W, what strict round-robin would give it.
Each run's file must hold every frame id exactly once with nothing missing, and every node must
exit 0; otherwise the row fails. Quick mode runs each row once.

Exit status 1 if any run failed (a node's exit status, a timeout, a message lost or out of
order, a payload that differs, an incomplete ledger). The header gives the machine and the load
average before and after: on a shared 2-core host everything else running moves every number.

Usage::

    python bench/transport.py                 # quick: 1 GiB per link run, median of 3; fan-out
                                              # 2000 frames of 256x512, once (~60 s on 2 cores)
    python bench/transport.py --full          # 4 GiB per link run, median of 5; fan-out 4000
                                              # frames of 512x1024, median of 3
    python bench/transport.py --only link     # or --only fanout
    python bench/transport.py --fan-transport tcp
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from _common import bench_parser, reap  # bench/ is on sys.path when run as a script
from _format import fmt, fmt_rate, md_table
from stream_node.links.transport import LinkLimits, bind, data_socket, send_frame
from stream_node.links.zmq_links import PullInput
from stream_node.model.frame import FrameHeader, frame_header, payload_crc, payload_view
from stream_node.stages.allocator import keep_message_buffers
from stream_node.storage.reader import open_run

RAW = "raw pyzmq"
SN = "stream-node"
SNC = "stream-node +checksum"
PATHS = (RAW, SN, SNC)
SIZES: tuple[tuple[str, tuple[int, int]], ...] = (("1 MiB", (512, 1024)), ("8 MiB", (2048, 2048)))
TRANSPORTS = ("tcp", "ipc")
RUN_ID = 0x5EED
FLOOR = 0.95
COPIES = "0 (+2 in the kernel)"
TIMEOUT_MS = 20_000  # no send or receive waits longer: a dead peer fails the row
START_TIMEOUT_S = 60.0  # a spawned receiver imports numpy, zmq and stream-node on 2 busy cores
DELAY_S = 0.02  # the slow worker's sleep per frame
CHAIN = '[{"kernel": "python:stream_node.kernels.examples.delay"}]'
RUN_TIMEOUT_S = 180.0  # one fan-out run, start-up included
EXIT_TIMEOUT_S = 30.0  # collector and workers after the source ended


@dataclass(frozen=True)
class Mode:
    link_bytes: int  # per link run: messages = link_bytes / frame bytes
    link_repeat: int
    fan_frames: int
    fan_shape: tuple[int, int]
    fan_repeat: int


QUICK = Mode(1 << 30, 3, 2000, (256, 512), 1)
FULL = Mode(4 << 30, 5, 4000, (512, 1024), 3)


def frame_for(shape: tuple[int, int]) -> np.ndarray:
    """The frame every message carries: the same in the sender and in the receiver's check."""
    return np.random.default_rng(shape[0]).integers(0, 1 << 16, shape, dtype=np.uint16)


# -- one link: the receiver (runs in the spawned process) -------------------------------------


def wait_handshake(sock: zmq.Socket, endpoint: str) -> None:
    """Connect and block until the ZMTP handshake completed: the raw path's ready check."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(endpoint)
        if not monitor.poll(TIMEOUT_MS):
            raise TimeoutError(f"no handshake with {endpoint} in {TIMEOUT_MS / 1000:.0f} s")
        recv_monitor_message(monitor)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def receive_raw(ctx: zmq.Context, conn: Connection, endpoint: str, count: int) -> dict[str, Any]:
    sock = ctx.socket(zmq.PULL)
    sock.rcvtimeo = TIMEOUT_MS
    try:
        wait_handshake(sock, endpoint)
        conn.send(("ready", None))
        bad, first, last = 0, None, None
        for n in range(count):
            head, body = sock.recv_multipart(copy=False)
            bad += int.from_bytes(head.buffer, "little") != n
            last = np.frombuffer(body, np.uint8)
            if first is None:
                first = last
        t_last = time.perf_counter_ns()
        return {"t_last": t_last, "frames": count, "bad": bad, "first": first, "last": last}
    finally:
        sock.close(linger=0)


def receive_sn(ctx: zmq.Context, conn: Connection, endpoint: str, count: int,
               check: bool = False) -> dict[str, Any]:
    inp = PullInput(ctx, [endpoint], LinkLimits())
    try:
        inp.wait_ready(TIMEOUT_MS / 1000, lambda: None)
        conn.send(("ready", None))
        n = bad = 0
        first = last = None
        while n < count:
            batch = inp.take(TIMEOUT_MS)
            if not batch:
                raise TimeoutError(f"message {n} of {count} not received in "
                                   f"{TIMEOUT_MS / 1000:.0f} s")
            for head, body in batch:
                header = FrameHeader.parse(memoryview(head))
                last = payload_view(header, body)
                bad += header.frame_id != n or header.run_id != RUN_ID
                if check:
                    bad += payload_crc(body) != header.payload_crc
                if first is None:
                    first = last
                n += 1
            inp.release()
        t_last = time.perf_counter_ns()
        return {"t_last": t_last, "frames": n, "bad": bad, "first": first, "last": last}
    finally:
        inp.close()


def receiver_main(conn: Connection) -> None:
    """Serve ("run", path, endpoint, shape, count) requests until None; every reply is a
    (tag, payload) pair, ("error", traceback) when a run failed."""
    keep_message_buffers()  # as a node does; for both paths, so the baseline gains as much
    ctx = zmq.Context()
    expected: dict[tuple[int, int], np.ndarray] = {}
    try:
        while (req := conn.recv()) is not None:
            path, endpoint, shape, count = req
            try:
                frame = expected.setdefault(shape, frame_for(shape))
                got = (receive_raw(ctx, conn, endpoint, count) if path == RAW else
                       receive_sn(ctx, conn, endpoint, count, check=path == SNC))
                first, last = got.pop("first"), got.pop("last")
                want = frame.reshape(-1).view(np.uint8)
                got["payload_ok"] = bool(np.array_equal(first.reshape(-1).view(np.uint8), want)
                                         and np.array_equal(last.reshape(-1).view(np.uint8),
                                                            want))
                del first, last
                conn.send(("result", got))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        ctx.term()


# -- one link: the sender (this process) ------------------------------------------------------


@dataclass
class LinkRow:
    transport: str
    size: str
    path: str
    messages: int
    frame_bytes: int
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.seconds)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def gbps(self) -> float:
        return self.messages * self.frame_bytes / self.median_s / 1e9

    @property
    def rate(self) -> float:
        return self.messages / self.median_s


class Receiver:
    """The spawned receiver process and its pipe; always joined, then terminated, then killed."""

    def __init__(self, ctx: SpawnContext) -> None:
        self.conn, child = ctx.Pipe()
        self.proc: SpawnProcess = ctx.Process(target=receiver_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def expect(self, tag: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            alive = "alive" if self.proc.is_alive() else f"exited ({self.proc.exitcode})"
            raise TimeoutError(f"no {tag!r} from the receiver in {timeout_s:.0f} s ({alive})")
        got, payload = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"receiver failed:\n{payload}")
        if got != tag:
            raise RuntimeError(f"receiver said {got!r}, expected {tag!r}")
        return payload

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        reap(self.proc)


def sender_socket(ctx: zmq.Context, path: str, endpoint: str) -> zmq.Socket:
    """The bound PUSH of `path`; its real endpoint (tcp port chosen by the kernel) is
    sock.last_endpoint."""
    if path == RAW:
        sock = ctx.socket(zmq.PUSH)
        sock.bind(endpoint)
    else:
        sock = data_socket(ctx, zmq.PUSH, LinkLimits())
        bind(sock, endpoint, "data")
    sock.sndtimeo = TIMEOUT_MS
    return sock


def send_raw(sock: zmq.Socket, frame: np.ndarray, count: int) -> None:
    for n in range(count):
        sock.send_multipart([n.to_bytes(8, "little"), frame], copy=False)


def send_sn(sock: zmq.Socket, frame: np.ndarray, count: int) -> None:
    for n in range(count):
        send_frame(sock, frame_header(frame, RUN_ID, n).pack(), frame)


def send_sealed(sock: zmq.Socket, frame: np.ndarray, count: int) -> None:
    for n in range(count):
        header = frame_header(frame, RUN_ID, n)
        header.seal(payload_crc(frame))
        send_frame(sock, header.pack(), frame)


def link_run(ctx: zmq.Context, rx: Receiver, row: LinkRow, frame: np.ndarray,
             tmp: Path) -> float:
    """One timed run of `row`'s path; returns its seconds, raises on any failure."""
    where = "tcp://127.0.0.1:*" if row.transport == "tcp" else f"ipc://{tmp}/link-{time.time_ns()}"
    sock = sender_socket(ctx, row.path, where)
    try:
        endpoint = sock.last_endpoint.decode()
        rx.conn.send((row.path, endpoint, frame.shape, row.messages))
        rx.expect("ready", START_TIMEOUT_S)
        t0 = time.perf_counter_ns()
        {RAW: send_raw, SN: send_sn, SNC: send_sealed}[row.path](sock, frame, row.messages)
        got = rx.expect("result", TIMEOUT_MS / 1000 + row.messages * 0.1)
    finally:
        sock.close(linger=0)
    if got["frames"] != row.messages or got["bad"] or not got["payload_ok"]:
        raise RuntimeError(f"received {got['frames']}/{row.messages}, {got['bad']} out of order"
                           f" or foreign, payload {'ok' if got['payload_ok'] else 'DIFFERS'}")
    return (got["t_last"] - t0) / 1e9


def run_links(mode: Mode) -> list[LinkRow]:
    rows = [LinkRow(t, label, path, max(1, mode.link_bytes // (shape[0] * shape[1] * 2)),
                    shape[0] * shape[1] * 2)
            for t in TRANSPORTS for label, shape in SIZES for path in PATHS]
    frames = {label: frame_for(shape) for label, shape in SIZES}
    rx = Receiver(mp.get_context("spawn"))
    ctx = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="snb-transport-") as tmp:
            for rep in range(mode.link_repeat):
                for i in range(0, len(rows), len(PATHS)):
                    group = rows[i:i + len(PATHS)]
                    for row in group if rep % 2 == 0 else group[::-1]:
                        try:
                            row.seconds.append(link_run(ctx, rx, row, frames[row.size],
                                                        Path(tmp)))
                            took = f"{row.messages * row.frame_bytes / row.seconds[-1] / 1e9:.2f}"
                        except Exception as exc:
                            row.failures.append(f"{type(exc).__name__}: "
                                                + " ".join(str(exc).split())[-300:])
                            took = "FAILED " + row.failures[-1]
                            rx.close()  # its pipe may still hold this run's reply: start afresh
                            rx = Receiver(mp.get_context("spawn"))
                        print(f"  link {rep + 1}/{mode.link_repeat} {row.transport} {row.size} "
                              f"{row.path:22s} {took} GB/s", file=sys.stderr, flush=True)
    finally:
        rx.close()
        ctx.term()
    return rows


def link_table(rows: list[LinkRow]) -> str:
    head = ["transport", "size", "path", "messages", "GB/s", "msgs/s", "ratio vs raw",
            "copies/message", "note"]
    out = []
    for r in rows:
        raw = next(x for x in rows if (x.transport, x.size, x.path) == (r.transport, r.size, RAW))
        good = r.ok
        ratio = r.gbps / raw.gbps if good and raw.ok else math.nan
        spread = (f"{len(r.seconds)} runs {fmt(r.messages * r.frame_bytes / max(r.seconds) / 1e9)}"
                  f" to {fmt(r.messages * r.frame_bytes / min(r.seconds) / 1e9)} GB/s"
                  if r.seconds else "")
        note = "; ".join(x for x in (
            "FAILED: " + "; ".join(r.failures) if r.failures else "", spread) if x)
        out.append([r.transport, r.size, r.path, r.messages, fmt(r.gbps) if good else "—",
                    fmt_rate(r.rate) if good else "—",
                    "—" if math.isnan(ratio) else f"{ratio:.2f}x", COPIES, note])
    return md_table(head, "lllrrrrll", out)


def link_floor(rows: list[LinkRow]) -> str:
    lines = []
    for r in rows:
        if r.path != SN:
            continue
        raw = next(x for x in rows if (x.transport, x.size, x.path) == (r.transport, r.size, RAW))
        if not (r.ok and raw.ok):
            lines.append(f"- {r.transport} {r.size}: not measured (a run failed)")
            continue
        ratio = r.gbps / raw.gbps
        lines.append(f"- {r.transport} {r.size}: {ratio:.2f}x raw pyzmq: "
                     f"{'MET' if ratio >= FLOOR else 'NOT MET'}")
    return "\n".join(lines)


# -- fan-out: the CLI pipeline ------------------------------------------------------------------


@dataclass
class FanRow:
    workers: int
    reliable: bool
    slow: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "reliable" if self.reliable else "default"

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.runs)

    def median_run(self) -> dict[str, Any] | None:
        if not self.ok:
            return None
        return sorted(self.runs, key=lambda r: r["fps"])[len(self.runs) // 2]


def fan_endpoints(transport: str, tmp: Path) -> tuple[str, str, str]:
    """control, fan-out and fan-in endpoints; tcp ports are ones the kernel just handed out."""
    if transport == "ipc":
        return f"ipc://{tmp}/c", f"ipc://{tmp}/d", f"ipc://{tmp}/o"
    eps = []
    for _ in range(3):
        with contextlib.closing(zmq.Context.instance().socket(zmq.REP)) as s:
            port = s.bind_to_random_port("tcp://127.0.0.1")
        eps.append(f"tcp://127.0.0.1:{port}")
    return eps[0], eps[1], eps[2]


@contextlib.contextmanager
def nodes() -> Iterator[list[subprocess.Popen]]:
    """Started nodes; any still running when the block ends is killed."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def parse_summary(text: str) -> dict[str, float]:
    """The numbers of the source's run summary (RunSummary.text)."""
    pats = {"written": r"^frames\s+(\d+) written of", "sent": r"written of (\d+) sent",
            "missing": r"^missing\s+(\d+)", "duplicates": r"^duplicates\s+(\d+)",
            "seconds": r"^time\s+([\d.]+) s", "fps": r"^rate\s+(\d+) frames/s"}
    got = {}
    for key, pat in pats.items():
        m = re.search(pat, text, re.M)
        if m is None:
            raise RuntimeError(f"no {key!r} in the source's summary:\n{text[-1000:]}")
        got[key] = float(m.group(1))
    return got


def check_file(path: Path, frames: int, workers: int) -> np.ndarray:
    """Every id once, nothing missing; returns the frames each worker index wrote."""
    with open_run(path) as f:
        entry = f["entry"]
        ids = entry["frames/frame_id"][()]
        received = entry["frames/received"][()].astype(bool)
        worker = entry["frames/worker"][()]
        missing = len(entry["missing/frame_id"]) if "missing" in entry else 0
    if len(ids) != frames or not np.array_equal(np.sort(ids), np.arange(frames)):
        raise RuntimeError(f"ledger: {len(ids)} frame ids, not 0..{frames - 1}")
    if not received.all() or missing:
        raise RuntimeError(f"ledger: {int((~received).sum())} not received, {missing} missing")
    return np.bincount(worker[received], minlength=workers)


def fan_run(row: FanRow, mode: Mode, transport: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="snb-fanout-") as tmp_s, nodes() as started:
        tmp = Path(tmp_s)
        control, fanout, fanin = fan_endpoints(transport, tmp)
        chain = tmp / "chain.json"
        chain.write_text(CHAIN)
        path = tmp / "run.h5"
        base = [sys.executable, "-m", "stream_node"]
        timing = ["--ready-timeout", "60"]

        def start(name: str, args: list[str], delay: float = 0.0) -> subprocess.Popen:
            env = dict(os.environ)
            env.pop("STREAM_NODE_EXAMPLE_DELAY_S", None)
            if delay:
                env["STREAM_NODE_EXAMPLE_DELAY_S"] = str(delay)
            proc = subprocess.Popen([*base, *args], env=env, stdin=subprocess.DEVNULL,
                                    stdout=(tmp / f"{name}.out").open("w"),
                                    stderr=(tmp / f"{name}.err").open("w"))
            started.append(proc)
            return proc

        procs = {"collector": start("collector", [
            "collector", "--control", control, "--input", fanin, "--file", str(path), *timing])}
        for i in range(row.workers):
            procs[f"w{i}"] = start(f"w{i}", [
                "worker", "--control", control, "--input", fanout, "--output", fanin,
                "--name", f"w{i}", "--index", str(i), *timing],
                delay=DELAY_S if row.slow and i == 0 else 0.0)
        h, w = mode.fan_shape
        procs["source"] = start("source", [
            "source", "--control", control, "--data", fanout, "--workers", str(row.workers),
            "--frames", str(mode.fan_frames), "--shape", f"{h}x{w}", "--kernels", str(chain),
            *(["--reliable"] if row.reliable else []), *timing])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        codes = {}
        for name in ["source", *(n for n in procs if n != "source")]:
            try:
                codes[name] = procs[name].wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = None
            deadline = max(deadline, time.monotonic() + EXIT_TIMEOUT_S)
        bad = {n: c for n, c in codes.items() if c != 0}
        if bad:
            err = (tmp / "source.err").read_text()
            raise RuntimeError(f"exit status {bad} (None: hung, killed); source stderr ends: "
                               + " ".join(err.split())[-400:])
        summary = parse_summary((tmp / "source.out").read_text())
        if summary["missing"] or summary["written"] != mode.fan_frames:
            raise RuntimeError(f"summary: {summary}")
        per_worker = check_file(path, mode.fan_frames, row.workers)
    return {"fps": summary["fps"], "seconds": summary["seconds"],
            "duplicates": int(summary["duplicates"]), "per_worker": per_worker.tolist()}


def run_fanout(mode: Mode, transport: str) -> list[FanRow]:
    rows = [FanRow(w, rel, slow) for slow in (False, True) for w in (1, 2, 4)
            for rel in (False, True) if not (slow and w == 1)]
    for rep in range(mode.fan_repeat):
        for row in rows:
            try:
                run = fan_run(row, mode, transport)
                row.runs.append(run)
                took = (f"{run['fps']:.0f} frames/s in {run['seconds']:.2f} s, "
                        f"per worker {run['per_worker']}")
            except Exception as exc:
                row.failures.append(f"{type(exc).__name__}: " + " ".join(str(exc).split())[-400:])
                took = "FAILED " + row.failures[-1]
            print(f"  fan-out {rep + 1}/{mode.fan_repeat} {row.workers} workers {row.mode:8s} "
                  f"{'one slow' if row.slow else 'even':8s} {took}", file=sys.stderr, flush=True)
    return rows


def fan_table(rows: list[FanRow], frame_bytes: int) -> str:
    head = ["workers", "mode", "slow worker", "frames", "time s", "frames/s", "GB/s",
            "reliable vs default", "slow worker's share (1/W)", "frames per worker", "note"]
    out = []
    for r in rows:
        run = r.median_run()
        default = next(x for x in rows if (x.workers, x.slow, x.reliable)
                       == (r.workers, r.slow, False)).median_run()
        if run is None:
            out.append([r.workers, r.mode, "w0" if r.slow else "none", *["—"] * 7,
                        f"FAILED: {'; '.join(r.failures)}"])
            continue
        frames = sum(run["per_worker"])
        vs = f"{run['fps'] / default['fps']:.2f}x" if default and r.reliable else "—"
        share = (f"{run['per_worker'][0] / frames:.1%} ({1 / r.workers:.0%})" if r.slow
                 else "—")
        notes = [f"{len(r.runs)} runs {fmt_rate(min(x['fps'] for x in r.runs))} to "
                 f"{fmt_rate(max(x['fps'] for x in r.runs))} frames/s"] if len(r.runs) > 1 else []
        if run["duplicates"]:
            notes.append(f"{run['duplicates']} duplicates dropped")
        slow = f"w0, {DELAY_S} s/frame" if r.slow else "none"
        out.append([r.workers, r.mode, slow, frames, fmt(run["seconds"]), fmt_rate(run["fps"]),
                    fmt(run["fps"] * frame_bytes / 1e9), vs, share,
                    " / ".join(map(str, run["per_worker"])), "; ".join(notes)])
    return md_table(head, "rllrrrrrlll", out)


# -- driver -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "short runs (default)", "longer runs, more repeats")
    ap.add_argument("--only", choices=("link", "fanout"), help="run only one of the tables")
    ap.add_argument("--fan-transport", choices=("ipc", "tcp"), default="ipc",
                    help="the fan-out pipeline's links (default ipc)")
    opts = ap.parse_args(argv)
    mode = FULL if opts.full else QUICK
    keep_message_buffers()

    load0 = os.getloadavg()
    t_start = time.monotonic()
    links = run_links(mode) if opts.only in (None, "link") else []
    fans = run_fanout(mode, opts.fan_transport) if opts.only in (None, "fanout") else []
    load1 = os.getloadavg()

    print(f"\nstream-node transport bench ({'full' if opts.full else 'quick'}, "
          f"{time.monotonic() - t_start:.0f} s): {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, pyzmq {zmq.__version__}, "
          f"libzmq {zmq.zmq_version()}, numpy {np.__version__}; load average "
          f"{', '.join(f'{x:.2f}' for x in load0)} at start, "
          f"{', '.join(f'{x:.2f}' for x in load1)} at end.\n")
    if links:
        lim = LinkLimits()
        print(f"One link: sender = this process, receiver = a spawned process; "
              f"{mode.link_bytes >> 20} MiB per run, median of {mode.link_repeat} interleaved "
              f"runs. stream-node: data_socket + default LinkLimits (HWM {lim.sndhwm}/"
              f"{lim.rcvhwm}, SNDBUF/RCVBUF {lim.sndbuf >> 20}/{lim.rcvbuf >> 20} MiB, IMMEDIATE, "
              f"TCP keepalive {lim.keepalive_s} s), "
              "send_frame / PullInput.take + FrameHeader.parse + payload_view; raw pyzmq: "
              "default sockets, send_multipart/recv_multipart copy=False. Both processes use "
              "a node's malloc settings (stream_node.stages.allocator), for both paths.\n")
        print(link_table(links))
        print(f"\nFloor (issue 6): stream-node >= {FLOOR}x raw pyzmq on the same link")
        print(link_floor(links))
    if fans:
        h, w = mode.fan_shape
        print(f"\nFan-out: the CLI pipeline (source -> W workers -> collector -> HDF5) over "
              f"{opts.fan_transport}, {mode.fan_frames} frames of {h}x{w} uint16 "
              f"({h * w * 2 >> 10} KiB), as fast as it goes; every worker runs the delay "
              f"kernel, w0 with {DELAY_S} s/frame in the 'one slow' rows. frames/s from the "
              f"source's summary (READY to last frame written); "
              + (f"median of {mode.fan_repeat} runs" if mode.fan_repeat > 1 else "one run")
              + " per row.\n")
        print(fan_table(fans, h * w * 2))
    ok = all(r.ok for r in links) and all(r.ok for r in fans)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
