"""A complete pipeline on one host: the source here, the collector and workers as real processes."""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from stream_node.links.control import Liveness
from stream_node.stages.source import RunSummary, Source, SourceConfig

log = logging.getLogger(__name__)


def role_command(role: str, *args: str, log_level: str = "WARNING") -> list[str]:
    """The command line that starts one role as its own process."""
    return [sys.executable, "-m", "stream_node", "--log-level", log_level, role, *args]


def _interrupt(signum: int, frame: object) -> None:
    """Python's own SIGINT handler raises a KeyboardInterrupt without a message; this one
    names the signal, and the source hands the name on in its ABORT (the ledger's reason)."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def copies_per_frame(fanout: str, fanin: str, workers: int) -> str:
    """Copies of a frame's bytes in user space + in the kernel, page cache included.

    A ring's frame is made or read in its slot; a worker copies what it sends into its output
    ring's slot (1) or hands it to ZeroMQ, which the kernel copies into and out of the socket
    (2); the collector writes from where it read, and the kernel copies into the page cache (1).
    """
    if not workers:
        return "0 + 1 kernel"
    user = int(fanin.startswith("ring") or fanout.startswith("ring"))
    kernel = 1 + 2 * (not fanout.startswith("ring")) + 2 * (not fanin.startswith("ring"))
    return f"{user} + {kernel} kernel"


@contextlib.contextmanager
def _interrupts_named(here: bool) -> Iterator[None]:
    """While the body runs (in the main thread only: signals reach no other), SIGINT and
    SIGTERM raise a KeyboardInterrupt naming the signal; the handlers are restored after."""
    signals = (signal.SIGINT, signal.SIGTERM) if here else ()
    previous = {s: signal.signal(s, _interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _end(procs: list[subprocess.Popen], grace_s: float, term_s: float = 5.0) -> None:
    """Let the stages finish (after an ABORT they record their ledger and exit; a SIGTERM sent
    at once could overtake the ABORT and become the ledger's reason), then SIGTERM those still
    running (they finalise), then kill; another signal meanwhile kills at once."""
    try:
        for send, wait_s in ((None, grace_s), (signal.SIGTERM, term_s)):
            deadline = time.monotonic() + wait_s
            for proc in procs:
                if send is not None and proc.poll() is None:
                    proc.send_signal(send)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        log.warning("demo: interrupted again: killing the stages")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def run_local_pipeline(
    output: str | Path,
    frames: int = 1000,
    shape: tuple[int, ...] = (512, 1024),
    dtype: str = "uint16",
    workers: int = 2,
    rate: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    log_level: str = "WARNING",
    liveness: Liveness | None = None,
    ready_timeout_s: float = 60.0,
    fanout: str = "ring",
    fanin: str = "ring",
    ring_slots: int | None = None,
    compression: str = "none",
    kernels: list[dict] | None = None,
    live: bool = False,
    tap: str | None = None,
) -> RunSummary:
    """Run synthetic source -> `workers` worker processes -> collector process -> HDF5 file.

    The source hands frames to the workers through a shared-memory ring (`fanout="ring"`) or an
    ipc PUSH socket (`fanout="ipc"`); the workers hand them to the collector through a ring each
    (`fanin="ring"`: the collector writes from the slot) or an ipc socket. With `workers=0` the
    collector reads the source's ring itself. Control and status are ipc sockets in a private
    temporary folder, and ring names are random, so several demos can run side by side. Every
    process started here is ended here.
    `live` shows the run in the terminal (stream_node.ops.live) while it goes; `tap` makes the
    collector publish its newest frames there (for stream_node.subscribe).

    Called from the main thread (`stream-node demo`), the stages run in sessions of their own, so
    a terminal's Ctrl-C reaches this process alone: the source aborts the run naming the signal,
    and the stages record that reason with the frames that did not come, then exit.
    """
    from stream_node.ops.live import watching  # rich only when a demo runs

    liveness = liveness or Liveness()
    with tempfile.TemporaryDirectory(prefix="sn-") as tmp:
        control, tag = f"ipc://{tmp}/control", secrets.token_hex(6)
        fanout = f"ring://sn-{tag}" if fanout == "ring" or not workers else f"ipc://{tmp}/fanout"
        fanin = fanout if not workers else (
            f"ring://sn-{tag}-in" if fanin == "ring" else f"ipc://{tmp}/fanin")
        timing = ["--peer-timeout", str(liveness.peer_timeout_s),
                  "--ready-timeout", str(ready_timeout_s)]
        watched = {n: f"ipc://{tmp}/status-{n}" if live else None
                   for n in ["source", "collector", *(f"w{i}" for i in range(workers))]}

        def status(name: str) -> list[str]:
            return ["--status", watched[name]] if live else []

        commands = [role_command("collector", "--control", control, "--input", fanin,
                                 "--file", str(output), *(["--overwrite"] if overwrite else []),
                                 *(["--tap", tap] if tap else []), *status("collector"),
                                 *timing, log_level=log_level)]
        commands += [role_command("worker", "--control", control, "--input", fanout,
                                  "--output", fanin, "--name", f"w{i}", "--index", str(i),
                                  *status(f"w{i}"), *timing, log_level=log_level)
                     for i in range(workers)]
        # From another thread signals are the caller's business: the stages stay in its
        # process group, as the caller's Ctrl-C then expects.
        main = threading.current_thread() is threading.main_thread()
        procs: list[subprocess.Popen] = []
        with _interrupts_named(main):
            try:
                for cmd in commands:
                    procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                                  start_new_session=main))
                source = Source(SourceConfig(
                    control=control, data=fanout, workers=workers, frames=frames, shape=shape,
                    dtype=dtype, seed=seed, rate=rate, ready_timeout_s=ready_timeout_s,
                    liveness=liveness, ring_slots=ring_slots,
                    compression=None if compression == "none" else compression,
                    kernels=kernels, status=watched["source"]))
                with watching(list(watched.values()) if live else []):
                    summary = source.run()
                summary.copies_per_frame = copies_per_frame(fanout, fanin, workers)
                for proc in procs:
                    proc.wait(timeout=liveness.peer_timeout_s + 10)
                return summary
            finally:
                _end(procs, liveness.peer_timeout_s)
