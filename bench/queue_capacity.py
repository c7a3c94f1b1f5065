"""Queue capacity of a ZeroMQ PUSH/PULL link whose consumer is paused (seed Problem 2).

Why: a PUSH never drops, so when a consumer stalls, everything upstream of it buffers until some
limit says "full". How many messages that is decides how much memory a stalled pipeline holds.
The seed measured it for several SNDHWM / SNDBUF / RCVBUF / RCVHWM settings and found that the
high-water marks alone do not bound it: the kernel's socket buffers (TCP autotunes them unless
SO_SNDBUF / SO_RCVBUF are set) and the message each ZMTP engine holds while half-written or
half-read add to it. This bench redoes every row of the seed's table with pyzmq in one process,
plus rows for stream-node's own per-link defaults (``stream_node.LinkLimits()``) with 1 MiB
messages, set through ``stream_node.links.transport.data_socket`` exactly as the package sets
them, to check that its printed bound ``LinkLimits().bound_bytes(max_frame)`` really holds.

One run of a row:

* a PULL socket that exists and is connected but never calls ``recv`` (the paused consumer); the
  PULL and each PUSH get their own ``zmq.Context``, so each has its own I/O thread as in the
  seed's separate processes. The seed's rows bind the PUSH and connect the PULL; its 4-pusher row
  binds the PULL and connects 4 PUSHes. TCP uses 127.0.0.1 with ``bind_to_random_port``; IPC a
  socket file in a temporary directory.
* No sleep-based start-up (seed Problem 1): a monitor on every socket, opened before bind/connect
  so nothing is missed, waits for ``EVENT_HANDSHAKE_SUCCEEDED`` on every end of every connection.
* The PUSH side sends messages of the row's size with ``NOBLOCK`` until ``zmq.Again``. TCP drains
  its buffers into the kernel asynchronously (the I/O threads keep moving data after the send
  that said "full"), so it then keeps trying: ``poll(POLLOUT, 50 ms)`` and a send whenever a
  PUSH is writable, until 300 ms pass without an accepted message (hard limit 3 s per run, and at
  most 256 MiB sent). The count of accepted messages is the queue capacity; the seed's blocking
  ``send`` waited forever instead, which is the same number once the link has settled.
* Every run is then checked: the PULL drains the link and must receive exactly the messages the
  PUSHes accepted (a PUSH does not drop, so a mismatch means the count is wrong).
* Every socket is closed with linger 0, every context terminated; every loop is bounded.

Each row is run 3 times (``--full``: 5) and shows the smallest and largest count; "queued bytes
max" is the largest count times the message size. Exit status 1 if a run failed, did not verify,
or a stream-node row exceeded its bound.

Usage::

    python bench/queue_capacity.py           # quick (default): 3 runs per row, ~15 s
    python bench/queue_capacity.py --full    # 5 runs per row
    python bench/queue_capacity.py --only ipc  # only rows whose transport contains "ipc"
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream_node import LinkLimits
from stream_node.links.transport import data_socket

MiB = 1 << 20
DASH = "\u2013"  # ranges print with an en dash like the seed's table; ASCII "-" in the source
SEED_MSG = 10_000  # the seed's b"a" * 10000
QUICK_RUNS = 3
FULL_RUNS = 5
HANDSHAKE_TIMEOUT_S = 5.0
POLL_MS = 50
QUIET_S = 0.3  # stop after this long without an accepted message
HARD_LIMIT_S = 3.0  # per run, whatever happens
SEND_CAP_BYTES = 256 * MiB  # a row that queues more than this is reported as ">= cap"
DRAIN_QUIET_S = 2.0
# The kernel limits that decide what a TCP link buffers beyond the HWMs (tcp(7)).
SYSCTLS = ("net.ipv4.tcp_wmem", "net.ipv4.tcp_rmem", "net.core.wmem_max", "net.core.rmem_max")


@dataclass(frozen=True)
class Case:
    """One row: the seed's socket options (None = libzmq / OS default) and what it measured."""

    transport: str  # "TCP/localhost", "TCP/network", "IPC": the seed's label
    sndhwm: int | None
    sndbuf: int | None
    rcvbuf: int | None
    rcvhwm: int | None
    seed: str
    pushers: int = 1
    msg_size: int = SEED_MSG
    pull_binds: bool = False
    # When set, sockets come from stream_node.links.transport.data_socket(ctx, kind, limits) and the
    # HWM / buffer columns above only describe them.
    limits: LinkLimits | None = None
    note: str = ""

    @property
    def scheme(self) -> str:
        return "ipc" if self.transport.startswith("IPC") else "tcp"


@dataclass
class Result:
    """Per-run counts (one list of per-pusher counts per run) and what went wrong, if anything."""

    case: Case
    runs: list[list[int]] = field(default_factory=list)
    capped: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def totals(self) -> list[int]:
        return [sum(r) for r in self.runs]


_LIMITS = LinkLimits()
CASES: list[Case] = [
    Case("TCP/localhost", 100, None, None, 100, "350-950"),
    Case("TCP/localhost", 1, None, None, 1, "182-282"),
    Case("TCP/localhost", 1, 100_000, 100_000, 1, "31-32"),
    Case("TCP/localhost", 1, 4096, 4096, 1, "4-5"),
    Case("TCP/localhost", 100, 4096, 4096, 1, "100"),
    Case("TCP/localhost", 1, 4096, 4096, 100, "104"),
    Case("TCP/network", 1, 4096, 4096, 1, "5",
         note="TCP/network row: run over loopback (127.0.0.1) here, no second host available; "
              "the seed's figure is over a real network"),
    Case("IPC", 1, 65_536, None, 1, "8-9"),
    Case("TCP/localhost", 1, 100_000, 100_000, 1, "125-128 (32+31+31+31 …)", pushers=4,
         pull_binds=True),
    Case("TCP/localhost", _LIMITS.sndhwm, _LIMITS.sndbuf, _LIMITS.rcvbuf, _LIMITS.rcvhwm, "—",
         msg_size=MiB, limits=_LIMITS),
    Case("IPC", _LIMITS.sndhwm, _LIMITS.sndbuf, _LIMITS.rcvbuf, _LIMITS.rcvhwm, "—",
         msg_size=MiB, limits=_LIMITS),
]


def make_socket(ctx: zmq.Context, kind: int, case: Case) -> zmq.Socket:
    """A socket configured as the row says: stream-node's own helper, or the seed's options.

    The seed sets SNDHWM/SNDBUF on the PUSH and RCVHWM/RCVBUF on the PULL; only those options
    matter for a one-way link, so only those are set (None leaves the libzmq default: HWM 1000,
    buffers at the OS default, which Linux autotunes for TCP).
    """
    if case.limits is not None:
        return data_socket(ctx, kind, case.limits)
    sock = ctx.socket(kind)
    if kind == zmq.PUSH:
        opts = ((zmq.SNDHWM, case.sndhwm), (zmq.SNDBUF, case.sndbuf))
    else:
        opts = ((zmq.RCVHWM, case.rcvhwm), (zmq.RCVBUF, case.rcvbuf))
    for opt, value in opts:
        if value is not None:
            sock.setsockopt(opt, value)
    return sock


class Link:
    """The sockets, monitors and contexts of one run; `close` leaves nothing open."""

    def __init__(self) -> None:
        self.contexts: list[zmq.Context] = []
        self.sockets: list[zmq.Socket] = []
        self.monitors: list[tuple[zmq.Socket, zmq.Socket, int]] = []  # (sock, monitor, expected)

    def socket(self, kind: int, case: Case) -> zmq.Socket:
        """A socket in its own context (its own I/O thread, like a separate process)."""
        ctx = zmq.Context()
        self.contexts.append(ctx)
        sock = make_socket(ctx, kind, case)
        self.sockets.append(sock)
        return sock

    def watch(self, sock: zmq.Socket, expected: int) -> None:
        """Monitor `sock` for handshakes; called before bind/connect so no event is missed."""
        self.monitors.append((sock, sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED),
                              expected))

    def wait_handshakes(self, timeout_s: float) -> None:
        """Block until every watched socket completed its expected ZMTP handshakes.

        After this, both ends of every connection are up: a message sent now reaches the PULL's
        queue, so the count measures the link, not a connection still being set up.
        """
        deadline = time.monotonic() + timeout_s
        for sock, monitor, expected in self.monitors:
            seen = 0
            while seen < expected:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not monitor.poll(left_ms):
                    raise TimeoutError(f"only {seen}/{expected} handshakes on a "
                                       f"{sock.socket_type.name} within {timeout_s:.0f} s")
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    seen += 1
        self.close_monitors()

    def close_monitors(self) -> None:
        for sock, monitor, _ in self.monitors:
            sock.disable_monitor()
            monitor.close(linger=0)
        self.monitors.clear()

    def close(self) -> None:
        self.close_monitors()
        for sock in self.sockets:
            sock.close(linger=0)
        for ctx in self.contexts:
            ctx.term()


@contextmanager
def open_link(case: Case, ipc_dir: Path, run: int) -> Iterator[tuple[zmq.Socket, list[zmq.Socket]]]:
    """A connected (PULL, [PUSH, ...]) for `case`, every handshake done; closed on exit."""
    link = Link()
    try:
        pull = link.socket(zmq.PULL, case)
        pushes = [link.socket(zmq.PUSH, case) for _ in range(case.pushers)]
        link.watch(pull, case.pushers)
        for p in pushes:
            link.watch(p, 1)
        binder = pull if case.pull_binds else pushes[0]
        if case.scheme == "tcp":
            port = binder.bind_to_random_port("tcp://127.0.0.1")
            endpoint = f"tcp://127.0.0.1:{port}"
        else:
            endpoint = f"ipc://{ipc_dir / f'q{run}.sock'}"
            binder.bind(endpoint)
        for connector in pushes if case.pull_binds else [pull]:
            connector.connect(endpoint)
        link.wait_handshakes(HANDSHAKE_TIMEOUT_S)
        yield pull, pushes
    finally:
        link.close()


def fill(pushes: Sequence[zmq.Socket], msg_size: int) -> tuple[list[int], bool]:
    """Send until the paused link is full; returns (accepted messages per PUSH, hit the cap).

    NOBLOCK sends until zmq.Again, then POLLOUT-polled retries until QUIET_S without progress:
    the I/O threads move queued messages into the kernel after the send that said "full", which
    frees room in the pipe again (at its low-water mark), and a blocking send would use it.
    """
    payload = b"a" * msg_size
    cap = max(1, SEND_CAP_BYTES // msg_size)
    counts = [0] * len(pushes)
    poller = zmq.Poller()
    for p in pushes:
        p.getsockopt(zmq.EVENTS)  # processes pending commands (the pipe attach) before sending
        poller.register(p, zmq.POLLOUT)
    start = last_progress = time.monotonic()
    while True:
        now = time.monotonic()
        if now - last_progress >= QUIET_S or now - start >= HARD_LIMIT_S or sum(counts) >= cap:
            break
        ready = dict(poller.poll(POLL_MS))
        for i, p in enumerate(pushes):
            if not ready.get(p, 0) & zmq.POLLOUT:
                continue
            while sum(counts) < cap:  # bounded by the cap
                try:
                    p.send(payload, zmq.NOBLOCK)
                except zmq.Again:
                    break
                counts[i] += 1
                last_progress = time.monotonic()
    return counts, sum(counts) >= cap


def drain(pull: zmq.Socket, expected: int) -> int:
    """Receive everything queued; how many arrived (stops DRAIN_QUIET_S after the last one)."""
    got = 0
    while got < expected and pull.poll(int(DRAIN_QUIET_S * 1000)):
        while got < expected:
            try:
                pull.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            got += 1
    return got


def measure(case: Case, runs: int, ipc_dir: Path) -> Result:
    """`runs` independent runs of one row, each on fresh sockets and contexts."""
    res = Result(case)
    for run in range(runs):
        try:
            with open_link(case, ipc_dir, run) as (pull, pushes):
                counts, capped = fill(pushes, case.msg_size)
                got = drain(pull, sum(counts))
            if got != sum(counts):
                res.errors.append(f"run {run + 1}: {sum(counts)} accepted, {got} received")
            res.runs.append(counts)
            res.capped |= capped
        except (zmq.ZMQError, TimeoutError) as exc:
            res.errors.append(f"run {run + 1}: {type(exc).__name__}: {exc}")
    return res


def fmt_opt(value: int | None, default: str) -> str:
    return default if value is None else f"{value:,}"


def fmt_size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n % MiB == 0 else f"{n / 1000:g} kB"


def fmt_bytes(n: int) -> str:
    return f"{n:,} B ({n / MiB:.2f} MiB)"


def bound_cell(res: Result) -> tuple[str, bool]:
    """The printed stream-node bound beside the measured bytes, and whether it holds."""
    limits = res.case.limits
    if limits is None:
        return "", True
    bound = limits.bound_bytes(res.case.msg_size)
    if not res.totals:
        return f"{fmt_bytes(bound)}: not measured", False
    worst = max(res.totals) * res.case.msg_size
    ok = worst <= bound and not res.capped
    verdict = f"holds ({worst / bound:.0%} used)" if ok else "EXCEEDED"
    return f"{fmt_bytes(bound)}: {verdict}", ok


def table(results: Sequence[Result]) -> tuple[str, bool]:
    """The markdown table, and whether every stream-node bound held."""
    head = ["transport", "SNDHWM", "SNDBUF", "RCVBUF", "RCVHWM", "pushers", "msg size",
            "seed's figure", f"measured (min{DASH}max)", "queued bytes max", "stream-node bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    all_ok = True
    for res in results:
        c = res.case
        label = c.transport
        if c.transport == "TCP/network":
            label = "TCP/network → loopback only (see note)"
        if c.limits is not None:
            label += " [stream-node LinkLimits()]"
        t = res.totals
        plus = "≥" if res.capped else ""
        measured = (f"{plus}{min(t)}" if min(t) == max(t) else f"{plus}{min(t)}{DASH}{max(t)}"
                    ) if t else "—"
        queued = fmt_bytes(max(t) * c.msg_size) if t else "—"
        bound, ok = bound_cell(res)
        all_ok &= ok
        cells = [label, fmt_opt(c.sndhwm, "default (1000)"), fmt_opt(c.sndbuf, "default"),
                 fmt_opt(c.rcvbuf, "default"), fmt_opt(c.rcvhwm, "default (1000)"),
                 str(c.pushers), fmt_size(c.msg_size), c.seed.replace("-", DASH), measured,
                 queued, bound]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), all_ok


def read_sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().split("\n")[0].replace("\t", " ")
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs per row (default)")
    group.add_argument("--full", action="store_true", help=f"{FULL_RUNS} runs per row")
    ap.add_argument("--only", default="", help="only rows whose transport contains this")
    opts = ap.parse_args(argv)
    runs = FULL_RUNS if opts.full else QUICK_RUNS
    cases = [c for c in CASES if opts.only.lower() in c.transport.lower()]
    if not cases:
        ap.error(f"no row matches {opts.only!r}")

    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sn-qcap-") as tmp:
        for case in cases:
            print(f"{case.transport} hwm {case.sndhwm}/{case.rcvhwm} x{case.pushers} "
                  f"{fmt_size(case.msg_size)} ...", file=sys.stderr, flush=True)
            results.append(measure(case, runs, Path(tmp)))

    print(f"\n# queue capacity of a paused PUSH/PULL link ({'full' if opts.full else 'quick'}, "
          f"{runs} runs per row, {time.monotonic() - t0:.0f} s): pyzmq {zmq.__version__}, "
          f"libzmq {zmq.zmq_version()}, Linux {platform.release()}, {os.cpu_count()} CPUs, "
          f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}; "
          + ", ".join(f"{name.split('.')[-1]} {read_sysctl(name)}" for name in SYSCTLS) + ".\n")
    text, bounds_ok = table(results)
    print(text)
    print()
    print(f"measured = messages the PUSH side accepted with NOBLOCK sends (then POLLOUT-polled "
          f"retries until {QUIET_S * 1000:.0f} ms without progress) while the PULL never "
          "received; every run's PULL then drained exactly that many. queued bytes max = largest "
          "count x message size (payload only). stream-node bound = "
          "LinkLimits().bound_bytes(msg size) = (SNDHWM + RCVHWM + 2) x msg\n"
          "  + 2 x (SNDBUF + RCVBUF).")
    for res in results:
        c = res.case
        if c.note:
            print(f"- {c.note}.")
        if c.pushers > 1 and res.runs:
            split = ", ".join(f"{sum(r)} ({' + '.join(map(str, r))})" for r in res.runs)
            print(f"- {c.pushers} pushers: per-run totals (per pusher): {split}.")
        if res.capped:
            print(f"- {c.transport} {c.sndhwm}/{c.rcvhwm}: stopped at the "
                  f"{SEND_CAP_BYTES // MiB} MiB cap, the real capacity is larger.")
        if c.limits is not None and not bound_cell(res)[1] and res.totals:
            print(f"- {c.transport} LinkLimits(): bound exceeded: stream_node.links.transport's "
                  "bound_bytes no longer covers what this kernel queues (it counts twice the "
                  "asked SO_SNDBUF/SO_RCVBUF, tcp(7), and one message per ZMTP engine).")
        for err in res.errors:
            print(f"- {c.transport} {c.sndhwm}/{c.rcvhwm}: FAILED {err}")
    ok = bounds_ok and all(not r.errors for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
