"""`stream-node source`: the detector side; it holds the run."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import TYPE_CHECKING

from stream_node.cli.options import (
    count,
    frame_options,
    node_options,
    node_settings,
    positive,
    role_parser,
)
from stream_node.cli.signals import terminate

if TYPE_CHECKING:
    from stream_node.stages.source import SourceConfig


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    src = role_parser(sub, "source", "synthetic detector; holds the run")
    src.add_argument("--control", required=True, help="control endpoint to bind")
    src.add_argument("--data", required=True,
                     help="fan-out endpoint to bind (tcp://, ipc://) or ring://NAME to create")
    src.add_argument("--ring-slots", type=positive(int), default=None,
                     help="frames in flight for ring:// (memory: about slots x frame size; "
                          "default: as many as fill 384 MiB, 16 to 1024)")
    src.add_argument("--workers", type=count, default=1,
                     help="workers to wait for before frame 0; 0: none on the path, the "
                          "collector reads the source's ring:// itself (no kernels, no "
                          "--compress: nothing would run them)")
    frame_options(src, 1000)
    src.add_argument("--from", dest="origin", default="synthetic:", metavar="ORIGIN",
                     help="synthetic: (default), synthetic:jungfrau?modules=N (a simulated "
                          "JUNGFRAU), file://RUN.h5 (replay a written run), "
                          "udp://HOST:PORT?modules=N&frames=N (detector UDP packets, needs "
                          "--data ring://NAME; options in stream_node.origins.udp), "
                          "dectris+tcp://, "
                          "dectris2+tcp://, karabo+tcp:// (detector streams)")
    src.add_argument("--geometry", default=None, metavar="FILE",
                     help="beam, detector and goniometer geometry (TOML or JSON, or a "
                          "CrystFEL .geom file; see examples/geometry/) for the file's NXmx "
                          "groups; its values win over a detector header's")
    src.add_argument("--recorded-rate", action="store_true",
                     help="with --from file://: send at the pace the frames were taken")
    src.add_argument("--origin-timeout", type=positive(float), default=10.0, metavar="S",
                     help="detector streams: a detector silent this long has ended the run "
                          "(default 10; an endpoint's ?timeout=S overrides it)")
    src.add_argument("--stall-timeout", type=positive(float), default=60.0, metavar="S",
                     help="end the run when no frame could be handed on for this long although "
                          "workers are alive (a worker reading another run's endpoint, a "
                          "stuck collector; default 60)")
    src.add_argument("--collector-restart", type=positive(float), default=None, metavar="S",
                     help="if the collector is lost mid-run, wait this long for one started "
                          "with --resume (default: the run fails at once)")
    src.add_argument("--reliable", action="store_true",
                     help="credit-based dispatch: the source keeps each frame until the "
                          "collector wrote it and sends a lost worker's frames again")
    src.add_argument("--credit", type=positive(int), default=4, metavar="N",
                     help="--reliable: frames each worker may hold (default 4)")
    src.add_argument("--resend-after", type=positive(float), default=10.0, metavar="S",
                     help="--reliable: a frame the collector has not acknowledged this long "
                          "after it was sent is sent again, whatever lost it (default 10)")
    src.add_argument("--window", type=positive(int), default=64, metavar="N",
                     help="--reliable: frames kept until written (memory: N x frame; "
                          "default 64)")
    src.add_argument("--checksum", action="store_true",
                     help="seal every frame's payload with its CRC-32C; every stage checks it "
                          "and drops (counts, records) a damaged one (about 0.4 ms per 8 MiB "
                          "frame per hop)")
    node_options(src)
    src.set_defaults(handler=run)
    return src


log = logging.getLogger("stream_node")


def source_config(args: argparse.Namespace) -> SourceConfig:
    """The source's settings from its command line (a topology's source stage too)."""
    from stream_node.stages.source import SourceConfig

    return SourceConfig(
        control=args.control, data=args.data, workers=args.workers, frames=args.frames,
        shape=args.shape, dtype=args.dtype, seed=args.seed, rate=args.rate,
        ring_slots=args.ring_slots, ready_timeout_s=args.ready_timeout,
        compression=args.compress, origin=args.origin, recorded_rate=args.recorded_rate,
        origin_timeout_s=args.origin_timeout,
        kernels=args.kernels, geometry=args.geometry, reliable=args.reliable,
        credit=args.credit, window=args.window,
        collector_restart_s=args.collector_restart or 0.0, stall_timeout_s=args.stall_timeout,
        resend_after_s=args.resend_after, checksum=args.checksum,
        **node_settings(args))


def run(args: argparse.Namespace) -> int:
    from stream_node.stages.source import Source

    source = Source(source_config(args))

    def stop(signum: int, frame: object) -> None:
        """The first signal ends the run at the last frame sent; the next aborts it."""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, terminate)
        if not source.stop():
            terminate(signum, frame)
        log.warning("source: %s: ending the run at the last frame sent (signal again to abort)",
                    signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    summary = source.run()
    print(summary.text())
    return summary.exit_code
