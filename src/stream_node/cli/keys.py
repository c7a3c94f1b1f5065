"""`stream-node keys`: CURVE keys for a topology."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_node.cli.options import EPILOG, FORMAT
from stream_node.model.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    key = sub.add_parser("keys", help="make CURVE keys for a topology", formatter_class=FORMAT,
                         epilog="example:\n  stream-node keys generate /etc/stream-node/beamline"
                                "\n  stream-node source --keys /etc/stream-node/beamline ...\n"
                                + EPILOG)
    key.add_argument("action", choices=["generate"])
    key.add_argument("directory", type=Path)
    key.set_defaults(handler=run)
    return key


def run(args: argparse.Namespace) -> int:
    from stream_node.links.security import generate

    for path in generate(args.directory):
        print(path)
    print(f"give every node of the topology --keys {args.directory}; a node accepts the public "
          f"keys in {args.directory / 'authorized'}")
    return ExitCode.OK
