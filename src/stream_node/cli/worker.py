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
    wrk.add_argument("--serve", action="store_true",
                     help="stay up run after run (as `stream-node serve` starts it)")
    node_options(wrk)
    wrk.set_defaults(handler=run)
    return wrk


def run(args: argparse.Namespace) -> int:
    from stream_node.stages.worker import Worker, WorkerConfig

    settings = node_settings(args)

    def worker(status: str | None) -> Worker:
        return Worker(WorkerConfig(
            control=args.control, inputs=args.input, output=args.output, name=args.name,
            index=args.index, ready_timeout_s=args.ready_timeout, serving=args.serve,
            **{**settings, "status": status, "metrics_port": None if args.serve
               else settings["metrics_port"]}))

    if args.serve:
        from stream_node.stages.serving import serve_runs

        return serve_runs("worker", args.name, lambda: worker(None), args.status,
                          args.metrics_port)
    worker(args.status).run()
    return ExitCode.OK
