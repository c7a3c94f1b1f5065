"""A complete pipeline on one host: the source here, the collector and workers as real processes."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from stream_node.links.control import Liveness
from stream_node.stages.source import RunSummary, Source, SourceConfig

log = logging.getLogger(__name__)


def role_command(role: str, *args: str, log_level: str = "WARNING") -> list[str]:
    """The command line that starts one role as its own process."""
    return [sys.executable, "-m", "stream_node", "--log-level", log_level, role, *args]


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
    ring_slots: int = 16,
    compression: str = "none",
    kernels: list[dict] | None = None,
    live: bool = False,
    tap: str | None = None,
) -> RunSummary:
    """Run synthetic source -> `workers` worker processes -> collector process -> HDF5 file.

    The source hands frames to the workers through a shared-memory ring (`fanout="ring"`) or an
    ipc PUSH socket (`fanout="ipc"`); the other links are ipc sockets in a private temporary
    folder, so several demos can run side by side. Every process started here is ended here.
    `live` shows the run in the terminal (stream_node.ops.live) while it goes; `tap` makes the
    collector publish its newest frames there (for stream_node.subscribe).
    """
    from stream_node.ops.live import watching  # rich only when a demo runs

    liveness = liveness or Liveness()
    with tempfile.TemporaryDirectory(prefix="sn-") as tmp:
        control, fanin = f"ipc://{tmp}/control", f"ipc://{tmp}/fanin"
        fanout = f"ring://sn-{secrets.token_hex(6)}" if fanout == "ring" else f"ipc://{tmp}/fanout"
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
        procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for cmd in commands]
        try:
            source = Source(SourceConfig(
                control=control, data=fanout, workers=workers, frames=frames, shape=shape,
                dtype=dtype, seed=seed, rate=rate, ready_timeout_s=ready_timeout_s,
                liveness=liveness, ring_slots=ring_slots,
                compression=None if compression == "none" else compression, kernels=kernels,
                status=watched["source"]))
            with watching(list(watched.values()) if live else []):
                summary = source.run()
            # Ring: the frame is generated in its slot and read there; the worker copies it
            # into its message to the collector (1); the kernel copies it into and out of the
            # ipc socket and into the page cache (3). Ipc fan-out: zero-copy in user space,
            # 2 kernel copies per hop and 1 into the page cache.
            summary.copies_per_frame = "1 + 3 kernel" if fanout.startswith("ring") else (
                "0 + 5 kernel")
            for proc in procs:
                proc.wait(timeout=liveness.peer_timeout_s + 10)
            return summary
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
