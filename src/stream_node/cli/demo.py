"""`stream-node demo`: the whole pipeline on this host, built-in defaults."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from stream_node.cli.options import (
    EPILOG,
    FORMAT,
    count,
    frame_options,
    liveness_of,
    positive,
    timing_options,
)


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    demo = sub.add_parser("demo", help="whole pipeline on this host with built-in defaults",
                          formatter_class=FORMAT,
                          epilog="example:\n  stream-node demo --frames 200\n" + EPILOG)
    frame_options(demo, 1000)
    demo.add_argument("--workers", type=count, default=2,
                      help="worker processes (0: the collector reads the source's ring itself; "
                           "no kernels or --compress then)")
    demo.add_argument("--output", type=Path, default=None,
                      help="HDF5 file (default: stream-node-demo-RUN.h5 here)")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--fanout", choices=["ring", "ipc"], default="ring",
                      help="source-to-workers link: shared-memory ring (default) or ipc socket")
    demo.add_argument("--fanin", choices=["ring", "ipc"], default="ring",
                      help="workers-to-collector link: a shared-memory ring per worker, which "
                           "the collector writes from in place (default), or an ipc socket")
    demo.add_argument("--ring-slots", type=positive(int), default=None,
                      help="frames in flight in the ring (memory: about slots x frame size; "
                           "default: as many as fill 384 MiB, 16 to 1024)")
    demo.add_argument("--quiet", action="store_true",
                      help="no live view (it is shown when stderr is a terminal)")
    timing_options(demo)
    demo.set_defaults(handler=run)
    return demo


def run(args: argparse.Namespace) -> int:
    from stream_node.deploy.demo import run_local_pipeline

    output = args.output or Path(f"stream-node-demo-{secrets.token_hex(4)}.h5")
    summary = run_local_pipeline(
        output, frames=args.frames, shape=args.shape, dtype=args.dtype, workers=args.workers,
        rate=args.rate, seed=args.seed, overwrite=args.overwrite, liveness=liveness_of(args),
        ready_timeout_s=args.ready_timeout, fanout=args.fanout, fanin=args.fanin,
        ring_slots=args.ring_slots,
        compression=args.compress, kernels=args.kernels, log_level=args.log_level,
        live=not args.quiet and sys.stderr.isatty())
    print(summary.text())
    return summary.exit_code
