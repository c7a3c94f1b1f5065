"""`stream-node worker`: processes frames between the source and the collector."""

from __future__ import annotations

import argparse

from stream_node.cli.options import node_options, node_settings, role_parser
from stream_node.model.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    wrk = role_parser(sub, "worker", "process frames between source and collector")
    wrk.add_argument("--control", required=True, help="the source's control endpoint")
    wrk.add_argument("--input", required=True, action="append",
                     help="endpoint(s) to pull frames from (repeatable), or one ring://NAME")
    wrk.add_argument("--output", required=True, help="the collector's input endpoint")
    wrk.add_argument("--name", default="w0")
    wrk.add_argument("--index", type=int, default=0, help="number written with each frame")
    node_options(wrk)
    wrk.set_defaults(handler=run)
    return wrk


def run(args: argparse.Namespace) -> int:
    from stream_node.stages.worker import Worker, WorkerConfig

    Worker(WorkerConfig(control=args.control, inputs=args.input, output=args.output,
                        name=args.name, index=args.index, ready_timeout_s=args.ready_timeout,
                        **node_settings(args))).run()
    return ExitCode.OK
