"""UDP detector receiver benchmark: stream-node's native receiver against a plain Python loop.

Every row sends JUNGFRAU packets (48-byte SLS header + 8,192-byte payload, 128 packets per
512x1024 uint16 module frame) over loopback from THIS process to a receiver in ANOTHER process
(spawned, so nothing is inherited by fork), in one run so the numbers are comparable:

* ``stream-node``: the receiver process creates a ``Ring`` (32 slots of one full frame), a
  ``UdpReceiver`` on it (``udp://127.0.0.1:PORT?modules=M&grid=Mx1&frames=N``) and a ring consumer
  thread that acquires and releases the frames (so the ring never fills). The receiving threads
  are native and never take the GIL. It runs until ``stats()["done"]`` (every frame of the run
  published or reported), or until the packet count has not moved for 0.5 s after the sender
  finished, then stops the receiver.
* ``python loop``: a plain ``socket.recv_into`` of each datagram into one 48 + 8192-byte
  ``bytearray``, the frame and packet numbers parsed with ``struct``, the payload copied into a
  numpy module frame buffer at ``packet * 8192``: what a user writes first. One module runs in the
  process's main thread; several modules run one thread per socket (they share the GIL). It ends
  when every expected packet came, or at a 1-byte stop datagram this process sends to each port
  after the sender returns (it queues behind every data packet; re-sent while the loop lags).

Both set the same socket receive buffer (``--rcvbuf``, 64 MiB) with ``SO_RCVBUFFORCE`` (we run
as root; else ``SO_RCVBUF``, capped by ``net.core.rmem_max``); the granted size is read back and
printed. The sender is ``stream_node.origins.udp.send`` (native ``sendmmsg``, 64 packets a call) of
``udp.schedule`` (frame by frame, modules interleaved), as fast as it goes (rate 0) or paced.

Synchronisation uses pipes only: the receiver says "bound and started" (and its ports) before the
sender starts; no sleeps. Every process started is joined, terminated, then killed if it lingers.

Columns:

* sender pkt/s: packets sent / the time ``udp.send`` took.
* received pkt/s and Gbit/s: packets placed in a frame (stream-node: the sum of the modules'
  ``packets``; python: every datagram copied into the frame buffer) / the time from the sender's
  first packet to the receiver's last one (CLOCK_MONOTONIC, the same in both processes). Gbit/s
  counts the 8,192-byte payloads only.
* loss %: (sent - received) / sent. stream-node's frames partial / missing from ``stats()`` are in
  the note.
* CPU µs/packet: the receiver process's user + system time (``getrusage(RUSAGE_SELF)``) from just
  before receiving starts to just after it stopped, divided by packets received. For stream-node
  the Python threads that are not the receiver are subtracted: the ring consumer thread and the
  control thread (which waits on the pipe and polls ``stats()``), each measured with
  ``time.thread_time()`` over its whole life inside that window; ``UdpReceiver.stop()`` (which
  publishes the frames still open) stays in the receiver's share. The sender's CPU is not counted.
* moved: stream-node's ``moved`` packets (summed over modules): packets that arrived out of the
  receiver's predicted order, so the kernel wrote them somewhere else and they were copied once
  more. 0 means the kernel's copy from the socket into the ring slot was the only one.
* CPU/packet vs python loop: this row's CPU per packet / the python loop's with the same modules
  and rate (below 1 is better).

stream-node rows also check the frames: the first and a middle frame the consumer acquired are
compared byte for byte with ``udp.expected_frame`` (note "frames ok").

On this 2-core machine loopback UDP is bound by the kernel: the sender's ``sendmmsg`` does the
kernel's whole delivery into the receiver's socket buffer on the sender's core, and the receiver
shares the other core with whatever else runs (the load average is printed). The socket buffer
holds a few thousand packets, which hides a receiver that falls behind only briefly; each row sends
many times that.

Usage::

    python bench/udp_receiver.py          # quick (default): ~1 s of packets per row, once
    python bench/udp_receiver.py --full   # ~3 s per row, more rates, median of 3 runs
    python bench/udp_receiver.py --only stream  # only rows whose receiver name contains this
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import socket
import statistics
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import numpy as np

from _common import bench_parser, reap  # bench/ is on sys.path when run as a script
from _format import fmt, fmt_rate, md_table
from stream_node.origins import udp

NATIVE = "stream-node"
PYLOOP = "python loop"
HOST = "127.0.0.1"
GEO = udp.PRESETS["jungfrau"]
PACKET_BYTES = udp.HEADER_BYTES + GEO.payload_bytes
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SLOTS = 32
READY_TIMEOUT_S = 30.0  # spawn + imports + bind
IDLE_S = 0.5  # after the sender returned: the receiver gives up when nothing moved this long
RESULT_TIMEOUT_S = 20.0  # after the sender returned
STOP_RESEND_S = 0.25


@dataclass(frozen=True)
class Mode:
    seconds: float  # packets per row: about this long at the row's rate
    full_rate_pps: float  # what "rate 0" is assumed to reach, to size its rows
    rates: tuple[float, ...]  # 1-module rows (0: full rate)
    modules: tuple[int, ...]  # more-module rows at full rate
    repeat: int


QUICK = Mode(1.0, 200_000, (0, 50_000, 100_000), (2, 4), 1)
FULL = Mode(3.0, 200_000, (0, 50_000, 100_000, 150_000, 200_000), (2, 4), 3)


@dataclass
class Run:
    sent: int = 0
    send_s: float = math.nan
    received: int = 0
    recv_s: float = math.nan
    cpu_s: float = math.nan
    moved: int = 0
    moved_max: int = 0  # the most of one module
    partial: int = 0
    missing: int = 0
    note: str = ""
    ok: bool = True

    @property
    def loss(self) -> float:
        return (self.sent - self.received) / self.sent * 100 if self.sent else math.nan

    @property
    def send_pps(self) -> float:
        return self.sent / self.send_s

    @property
    def recv_pps(self) -> float:
        return self.received / self.recv_s if self.received else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.received * 1e6 if self.received else math.nan


@dataclass
class Row:
    receiver: str
    modules: int
    rate: float
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.runs if r.ok]
        return statistics.median(vals) if vals else math.nan

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)


# -- receiver processes -------------------------------------------------------------------------


def rusage_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def switches() -> int:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_nvcsw + u.ru_nivcsw


def native_main(conn: Connection, modules: int, frames: int, rcvbuf: int) -> None:
    try:
        conn.send(("result", native_receive(conn, modules, frames, rcvbuf)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def native_receive(conn: Connection, modules: int, frames: int, rcvbuf: int) -> dict[str, Any]:
    from stream_node.links.ring import Ring
    from stream_node.model.errors import ConfigError, EndOfStream, RingTimeout

    name = f"snb-udp-{os.getpid()}"
    ring = Ring.create(name, slots=SLOTS, slot_bytes=modules * GEO.module_bytes)
    try:
        for attempt in range(20):
            port = random.randrange(20000, 60000 - modules)
            cfg = udp.UdpConfig.from_endpoint(
                f"{HOST}:{port}?modules={modules}&grid={modules}x1&frames={frames}"
                f"&rcvbuf={rcvbuf}")
            try:
                rx = udp.UdpReceiver(cfg, ring, run_id=1)
                break
            except ConfigError:
                if attempt == 19:
                    raise
        cons = ring.consumer("workers")
        stop = threading.Event()
        seen: dict[str, Any] = {"frames": 0, "partial": 0, "copies": {}, "cpu": 0.0}

        def consume() -> None:
            t0 = time.thread_time()
            while True:
                try:
                    got = cons.acquire(timeout=0.05, max_frames=16)
                except RingTimeout:
                    if stop.is_set():
                        break
                    continue
                except EndOfStream:
                    break
                for fr in got:
                    seen["frames"] += 1
                    seen["partial"] += bool(fr.header.flags)
                    # The first complete frame, and the first complete one from the middle on.
                    if not fr.header.flags and len(seen["copies"]) < 2 and (
                            not seen["copies"] or fr.frame_id >= frames // 2):
                        seen["copies"][fr.frame_id] = fr.data.copy()
                cons.release(got)
            seen["cpu"] = time.thread_time() - t0

        u0, s0, c0, w0 = rusage_s(), sys_s(), time.thread_time(), switches()
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        rx.start()
        conn.send(("ready", cfg.ports, rx.stats()["rcvbuf_granted"]))
        try:
            conn.recv()  # "sent": the sender returned (blocks without CPU while packets come)
            t_last = last_change = time.monotonic()
            last = -1
            while True:
                st = rx.stats()
                now = time.monotonic()
                n = sum(m["packets"] for m in st["modules"])
                if n != last:
                    last, t_last, last_change = n, now, now
                if st["done"] or now - last_change > IDLE_S:
                    break
                time.sleep(0.002)
            c1 = time.thread_time()
        finally:
            rx.stop()
            stop.set()
            consumer.join(10)
        u1, s1, w1 = rusage_s(), sys_s(), switches()
        st = rx.stats()
        cons.close()
        mods = st["modules"]
        images = udp.module_images(GEO, modules)
        pos = udp.default_positions(modules, cfg.grid)
        bad = [fid for fid, data in seen["copies"].items()
               if not np.array_equal(data.reshape(cfg.shape), udp.expected_frame(
                   GEO, images, pos, cfg.grid, fid + st["base"]))]
        check = (f"frames ok ({len(seen['copies'])} checked)" if not bad
                 else f"frames {bad} DIFFER")
        return {"received": sum(m["packets"] for m in mods), "t_last": t_last,
                "cpu": (u1 - u0) - seen["cpu"] - (c1 - c0),
                "sys": s1 - s0, "switches": w1 - w0, "moved": sum(m["moved"] for m in mods),
                "moved_max": max(m["moved"] for m in mods), "partial": st["frames_partial"],
                "missing": st["frames_missing"], "consumed": seen["frames"],
                "other": {k: sum(m[k] for m in mods) for k in
                          ("duplicates", "late", "malformed", "ring_full") if
                          sum(m[k] for m in mods)},
                "check": check, "bad": bool(bad),
                "per_batch": (sum(m["packets"] for m in mods)
                              / max(1, sum(m["batches"] for m in mods))),
                "consumer_cpu": seen["cpu"], "control_cpu": c1 - c0}
    finally:
        ring.close()
        Ring.unlink(name)


def bind_python(modules: int, rcvbuf: int) -> tuple[list[socket.socket], int]:
    for _ in range(20):
        port = random.randrange(20000, 60000 - modules)
        socks = []
        try:
            for m in range(modules):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((HOST, port + m))
            granted = socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            return socks, granted
        except OSError:
            for s in socks:
                s.close()
    raise OSError("python loop: no free run of ports after 20 tries")


def python_loop(sock: socket.socket, expected: int, out: dict[str, Any]) -> None:
    """The naive receiver: one datagram at a time, payload copied to its place in the frame."""
    buf = bytearray(PACKET_BYTES)
    payload = np.frombuffer(buf, np.uint8, offset=udp.HEADER_BYTES)
    frame = np.zeros(GEO.module_bytes, np.uint8)
    size = GEO.payload_bytes
    ppf = GEO.packets_per_frame
    head = struct.Struct("<QII")  # frame number, exposure length, packet number
    n = got = complete = partial = 0
    current = -1
    t_last = math.nan
    while n < expected:
        if sock.recv_into(buf) != PACKET_BYTES:
            break  # the stop datagram
        fnum, _, pnum = head.unpack_from(buf)
        if fnum != current:
            if current >= 0:
                complete += got == ppf
                partial += got != ppf
            current, got, t_last = fnum, 0, time.monotonic()
        frame[pnum * size: (pnum + 1) * size] = payload
        got += 1
        n += 1
    else:
        t_last = time.monotonic()
    if current >= 0:
        complete += got == ppf
        partial += got != ppf
    out.update(received=n, t_last=t_last, complete=complete, partial=partial)


def python_main(conn: Connection, modules: int, frames: int, rcvbuf: int) -> None:
    try:
        socks, granted = bind_python(modules, rcvbuf)
        try:
            outs: list[dict[str, Any]] = [{} for _ in socks]
            expected = frames * GEO.packets_per_frame
            u0, s0, w0 = rusage_s(), sys_s(), switches()
            conn.send(("ready", [s.getsockname()[1] for s in socks], granted))
            if modules == 1:
                python_loop(socks[0], expected, outs[0])
            else:
                threads = [threading.Thread(target=python_loop, args=(s, expected, o))
                           for s, o in zip(socks, outs, strict=True)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            cpu, system, nsw = rusage_s() - u0, sys_s() - s0, switches() - w0
        finally:
            for s in socks:
                s.close()
        conn.send(("result", {
            "received": sum(o["received"] for o in outs),
            "t_last": max(o["t_last"] for o in outs), "cpu": cpu, "sys": system, "switches": nsw,
            "moved": 0, "moved_max": 0,
            "partial": sum(o["partial"] for o in outs), "missing": 0, "check": "",
            "bad": False}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


# -- driver (the sender) ------------------------------------------------------------------------


@contextlib.contextmanager
def receiver_process(ctx: SpawnContext, kind: str, modules: int, frames: int,
                     rcvbuf: int) -> Iterator[tuple[SpawnProcess, Connection]]:
    """A started receiver process that is always joined, terminated if it lingers, then killed."""
    ours, theirs = ctx.Pipe()
    target = native_main if kind == NATIVE else python_main
    proc = ctx.Process(target=target, args=(theirs, modules, frames, rcvbuf), daemon=True)
    proc.start()
    theirs.close()
    try:
        yield proc, ours
    finally:
        reap(proc)
        ours.close()


def expect(conn: Connection, proc: SpawnProcess, tag: str, timeout: float,
           poke: Any = None) -> Any:
    """The receiver's next message, which must be `tag`; calls `poke()` while waiting."""
    deadline = time.monotonic() + timeout
    while not conn.poll(STOP_RESEND_S):
        if not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"receiver exited ({proc.exitcode}) before {tag!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {tag!r} from the receiver in {timeout:.0f} s")
        if poke is not None:
            poke()
    got, *payload = conn.recv()
    if got == "error":
        raise RuntimeError(f"receiver failed:\n{payload[0]}")
    if got != tag:
        raise RuntimeError(f"receiver said {got!r}, expected {tag!r}")
    return payload


def run_once(ctx: SpawnContext, kind: str, modules: int, rate: float, packets: int,
             rcvbuf: int, granted: dict[str, int]) -> Run:
    ppf = GEO.packets_per_frame
    frames = max(2, math.ceil(packets / (ppf * modules)))
    sched = udp.schedule(GEO, frames, modules)
    images = udp.module_images(GEO, modules)
    pos = udp.default_positions(modules, (modules, 1))
    run = Run()
    with receiver_process(ctx, kind, modules, frames, rcvbuf) as (proc, conn):
        ports, granted[kind] = expect(conn, proc, "ready", READY_TIMEOUT_S)
        t0 = time.monotonic()
        run.sent = udp.send(HOST, ports, GEO, sched, images, pos, rate_pps=rate)
        run.send_s = time.monotonic() - t0
        if kind == NATIVE:
            conn.send(("sent",))
            poke = None
        else:
            stopper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

            def poke() -> None:
                for p in ports:
                    stopper.sendto(b"x", (HOST, p))

            poke()
        try:
            (res,) = expect(conn, proc, "result", RESULT_TIMEOUT_S, poke)
        finally:
            if kind != NATIVE:
                stopper.close()
    run.received = res["received"]
    run.recv_s = res["t_last"] - t0
    run.cpu_s = res["cpu"]
    run.moved_max = res["moved_max"]
    run.moved, run.partial, run.missing = res["moved"], res["partial"], res["missing"]
    notes = [res["check"]]
    if res["received"]:
        notes.append(f"process CPU {res['sys'] / res['received'] * 1e6:.2f} µs/packet of it "
                     "in the kernel (before subtractions)")
        notes.append(f"{res['switches'] / res['received'] * 1e3:.0f} context switches "
                     "per 1000 packets")
    if kind == NATIVE:
        notes.append(f"{res['partial']} partial / {res['missing']} missing frames of {frames}")
        notes.append(f"consumer took {res['consumed']}")
        notes.append(f"{res['per_batch']:.1f} packets per recvmmsg")
        notes.append(f"subtracted consumer {res['consumer_cpu'] * 1e3:.0f} ms + control "
                     f"{res['control_cpu'] * 1e3:.0f} ms CPU")
        notes += [f"{k} {v}" for k, v in res["other"].items()]
    else:
        notes.append(f"{res['partial']} incomplete frames of {frames * modules} module frames")
    run.note = "; ".join(n for n in notes if n)
    run.ok = not res["bad"]
    return run


def rate_label(rate: float) -> str:
    return "full" if rate == 0 else f"{fmt_rate(rate)}/s"


def baseline(rows: list[Row], r: Row) -> Row | None:
    for x in rows:
        if x.receiver == PYLOOP and x.modules == r.modules and x.rate == r.rate and x.ok:
            return x
    return None


def table(rows: list[Row]) -> str:
    head = ["receiver", "modules", "rate asked", "packets sent", "sender pkt/s", "received pkt/s",
            "Gbit/s (payload)", "loss %", "CPU µs/packet", "moved (extra copies)",
            "CPU/packet vs python loop", "note"]
    out = []
    for r in rows:
        if not r.runs:
            continue
        base = baseline(rows, r)
        cpu = r.med("cpu_us")
        ratio = f"{cpu / base.med('cpu_us'):.2f}x" if base and not math.isnan(cpu) else "—"
        recv = r.med("recv_pps")
        moved = "—" if r.receiver == PYLOOP else fmt(r.med("moved"), 0)
        notes = [r.runs[0].note]
        if len(r.runs) > 1:
            cpus = sorted(x.cpu_us for x in r.runs)
            losses = sorted(x.loss for x in r.runs)
            notes.append(f"median of {len(r.runs)}: CPU µs/packet {fmt(cpus[0])}..{fmt(cpus[-1])}"
                         f", loss % {fmt(losses[0], 1)}..{fmt(losses[-1], 1)}")
        note = "; ".join(n for n in notes if n)
        out.append([r.receiver, r.modules, rate_label(r.rate), fmt(r.med("sent"), 0),
                    fmt_rate(r.med("send_pps")), fmt_rate(recv),
                    fmt(recv * GEO.payload_bytes * 8 / 1e9), fmt(r.med("loss"), 1), fmt(cpu),
                    moved, ratio, note if r.ok else "FAILED: " + note])
    return md_table(head, "lrrrrrrrrrrl", out)


def floors(rows: list[Row], batch: int) -> list[str]:
    def find(kind: str, modules: int, rate: float) -> Row | None:
        return next((x for x in rows if x.receiver == kind and x.modules == modules
                     and x.rate == rate and x.runs), None)

    out = []
    nat, py = find(NATIVE, 1, 0), find(PYLOOP, 1, 0)
    if nat:
        loss = max(x.loss for x in nat.runs)
        py_loss = f"; the python loop lost {fmt(py.med('loss'), 1)} %" if py else ""
        out.append(f"- zero packet loss at the sender's full rate, 1 module: "
                   f"{'MET' if loss == 0 else 'NOT MET'} (stream-node lost "
                   f"{fmt(loss, 2)} % in its worst run{py_loss})")
    pairs = [(r, baseline(rows, r)) for r in rows if r.receiver == NATIVE and r.runs]
    pairs = [(r, b) for r, b in pairs if b]
    if pairs:
        ratios = [(r, r.med("cpu_us") / b.med("cpu_us")) for r, b in pairs]
        worst = max(q for _, q in ratios)
        detail = ", ".join(f"{r.modules} mod {rate_label(r.rate)} {q:.2f}x" for r, q in ratios)
        out.append(f"- receiver CPU per packet <= 0.5x the python loop's: "
                   f"{'MET' if worst <= 0.5 else 'NOT MET'} ({detail})")
    lossless = [r for r in rows if r.receiver == NATIVE and r.runs
                and all(x.loss == 0 for x in r.runs)]
    if lossless:
        worst_moved = max(x.moved_max for r in lossless for x in r.runs)
        detail = ", ".join(f"{r.modules} mod {rate_label(r.rate)}: "
                           f"{max(x.moved for x in r.runs)}" for r in lossless)
        out.append(f"- no extra copy in the lossless case (moved == 0, or at most the first "
                   f"batch of {batch} per module): "
                   f"{'MET' if worst_moved <= batch else 'NOT MET'} ({detail})")
    else:
        out.append("- no extra copy in the lossless case: no lossless stream-node row to judge")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "~1 s of packets per row (default)",
                      "~3 s per row, more rates, median of 3")
    ap.add_argument("--only", default="", help="run only rows whose receiver contains this")
    ap.add_argument("--rcvbuf", type=int, default=64 << 20,
                    help="socket receive buffer in bytes for both receivers (default 64 MiB)")
    ap.add_argument("--repeat", type=int, default=0, help="runs per row (default 1, --full 3)")
    opts = ap.parse_args(argv)
    mode = FULL if opts.full else QUICK
    repeat = opts.repeat or mode.repeat

    plan = [(kind, 1, rate) for rate in mode.rates for kind in (NATIVE, PYLOOP)]
    plan += [(kind, m, 0) for m in mode.modules for kind in (NATIVE, PYLOOP)]
    rows = [Row(kind, m, rate) for kind, m, rate in plan
            if opts.only.lower() in kind.lower()]
    ctx = mp.get_context("spawn")
    granted: dict[str, int] = {}
    load0 = os.getloadavg()
    t_start = time.monotonic()
    for _ in range(repeat):  # interleaved: a disturbed moment does not hit one row's every run
        for row in rows:
            packets = int((row.rate or mode.full_rate_pps) * mode.seconds)
            try:
                run = run_once(ctx, row.receiver, row.modules, row.rate, packets, opts.rcvbuf,
                               granted)
            except Exception as exc:
                why = " ".join(str(exc).split())[-300:]
                run = Run(ok=False, note=f"{type(exc).__name__}: {why}")
            row.runs.append(run)
            print(f"  {row.receiver:11s} {row.modules} mod {rate_label(row.rate):>9s}: sent "
                  f"{run.sent} at {fmt_rate(run.send_pps if run.sent else math.nan)}/s, "
                  f"received {fmt_rate(run.recv_pps)}/s, loss {fmt(run.loss, 1)} %, "
                  f"{fmt(run.cpu_us)} µs CPU/packet, moved {run.moved}; {run.note}",
                  file=sys.stderr, flush=True)

    asked = opts.rcvbuf
    print(f"\nstream-node UDP receiver bench ({'full' if opts.full else 'quick'}, "
          f"{time.monotonic() - t_start:.0f} s): {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}; "
          f"load average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end.\n"
          f"Loopback {HOST}; JUNGFRAU packets of {udp.HEADER_BYTES} + {GEO.payload_bytes} B, "
          f"{GEO.packets_per_frame} per module frame; sender = this process (native sendmmsg), "
          f"receiver = a spawned process. Socket receive buffer asked {asked} B "
          f"({asked >> 20} MiB) for both; granted (SO_RCVBUF read back / 2): "
          + ", ".join(f"{k} {v} B" for k, v in granted.items())
          + f"; {'median of ' + str(repeat) + ' runs' if repeat > 1 else 'one run'} per row. "
          "CPU = receiver process user + system (getrusage), stream-node's minus its consumer "
          "and control threads (time.thread_time).\n")
    print(table(rows))
    print("\nFloors (issue 11):")
    print("\n".join(floors(rows, udp.UdpConfig.batch)))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
