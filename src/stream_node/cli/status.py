"""`stream-node status`: the counters of running nodes."""

from __future__ import annotations

import argparse

from stream_node.cli.options import EPILOG, FORMAT, positive


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    sta = sub.add_parser("status", help="counters of running nodes", formatter_class=FORMAT,
                         epilog="example:\n  stream-node status tcp://daq1:5570 "
                                "tcp://daq2:5570 --timeout 2\n" + EPILOG)
    sta.add_argument("endpoints", nargs="+", metavar="ENDPOINT",
                     help="nodes' --status endpoints")
    sta.add_argument("--timeout", type=positive(float), default=2.0, metavar="S",
                     help="answer within this long, dead nodes included (default 2)")
    sta.add_argument("--json", action="store_true", help="JSON for scripts")
    sta.add_argument("--live", action="store_true",
                     help="a live view, until the run is over (Ctrl-C to leave)")
    sta.set_defaults(handler=run)
    return sta


def run(args: argparse.Namespace) -> int:
    from stream_node.ops.live import show_status

    return show_status(args.endpoints, args.timeout, as_json=args.json, live=args.live)
