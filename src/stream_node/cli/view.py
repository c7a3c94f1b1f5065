"""`stream-node view`: the newest frame of a run as a picture."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_node.cli.options import EPILOG, FORMAT, positive
from stream_node.model.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    vie = sub.add_parser("view", help="newest frame of a run as an image", formatter_class=FORMAT,
                         epilog="example:\n  stream-node view tcp://daq:5560 --png latest.png\n"
                                + EPILOG)
    vie.add_argument("endpoint", help="a collector's --tap endpoint")
    vie.add_argument("--png", type=Path, default=None, metavar="PATH",
                     help="headless: rewrite this PNG every --every seconds")
    vie.add_argument("--every", type=positive(float), default=2.0, metavar="S")
    vie.add_argument("--count", type=positive(int), default=None, metavar="N",
                     help="stop after N images")
    vie.add_argument("--timeout", type=positive(float), default=None, metavar="S",
                     help="give up when no frame came for this long (default: wait)")
    vie.add_argument("--follow", action="store_true",
                     help="go on with the next run instead of ending with this one (`serve` "
                          "starts its viewers so)")
    vie.set_defaults(handler=run)
    return vie


def run(args: argparse.Namespace) -> int:
    from stream_node.ops.view import view

    view(args.endpoint, png=args.png, every_s=args.every, count=args.count,
         timeout_s=args.timeout, follow=args.follow)
    return ExitCode.OK
