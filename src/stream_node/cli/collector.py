"""`stream-node collector`: writes the run's frames to HDF5."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import zmq

from stream_node.cli.options import node_options, node_settings, positive, role_parser
from stream_node.model.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    col = role_parser(sub, "collector", "write frames to HDF5")
    col.add_argument("--control", required=True, help="the source's control endpoint")
    col.add_argument("--input", required=True, help="endpoint to bind for frames")
    col.add_argument("--file", required=True, type=Path, help="HDF5 output file")
    col.add_argument("--overwrite", action="store_true",
                     help="replace an existing file (never one a live collector is writing)")
    col.add_argument("--resume", action="store_true",
                     help="reopen the file a collector of this run left when it died, and go "
                          "on (the source must run with --collector-restart)")
    col.add_argument("--drain-timeout", type=positive(float), default=10.0, metavar="S",
                     help="after END, wait this long without progress before recording the "
                          "rest missing (default 10)")
    col.add_argument("--flush-interval", type=positive(float), default=1.0, metavar="S",
                     help="flush for SWMR readers and crash safety this often (default 1)")
    col.add_argument("--frames-per-file", type=int, default=0, metavar="N",
                     help="rotate into numbered files of N frames under a VDS master file")
    col.add_argument("--tap", default=None, metavar="ENDPOINT",
                     help="publish the newest written frames here for `stream-node view` and "
                          "stream_node.subscribe (never slows the run)")
    col.add_argument("--tap-rate", type=positive(float), default=10.0, metavar="HZ",
                     help="frames per second the tap publishes at most (default 10)")
    col.add_argument("--serve", action="store_true",
                     help="stay up run after run (as `stream-node serve` starts it): each run's "
                          "file is named by the serving node, in --file's directory")
    node_options(col)
    col.set_defaults(handler=run)
    return col


def run(args: argparse.Namespace) -> int:
    from stream_node.model.errors import StorageError
    from stream_node.stages.collector import Collector, CollectorConfig

    settings = node_settings(args)

    def collector_of(status: str | None) -> Collector:
        return Collector(CollectorConfig(
            control=args.control, input=args.input, path=args.file, overwrite=args.overwrite,
            drain_timeout_s=args.drain_timeout, ready_timeout_s=args.ready_timeout,
            flush_interval_s=args.flush_interval, frames_per_file=args.frames_per_file,
            resume=args.resume, tap=args.tap, tap_rate=args.tap_rate, serving=args.serve,
            **{**settings, "status": status, "metrics_port": None if args.serve
               else settings["metrics_port"]}))

    if args.serve:
        from stream_node.stages.serving import serve_runs

        return serve_runs("collector", "collector", lambda: collector_of(None), args.status,
                          args.metrics_port)
    collector = collector_of(args.status)
    try:
        summary = collector.run()
    except StorageError as exc:
        if collector.writer is None or not collector.writer.abandoned:
            raise
        # The output file was abandoned after a failed write (its missing frames are in the
        # sidecar ledger, or on stderr): end now, before HDF5's exit-time close can write
        # metadata the disk has no room for (it would spoil the flushed file). The kernel
        # drops the file's lock as the process ends.
        print(f"stream-node collector: error: {exc}", file=sys.stderr, flush=True)
        zmq.Context.instance().destroy(linger=2000)
        os._exit(int(exc.exit_code))
    return ExitCode.OK if summary.get("missing", 1) == 0 else ExitCode.FRAMES_MISSING
