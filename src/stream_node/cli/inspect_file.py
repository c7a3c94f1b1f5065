"""`stream-node inspect`: a run file's summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_node.cli.options import EPILOG, FORMAT
from stream_node.model.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ins = sub.add_parser("inspect", help="summarise a run file", formatter_class=FORMAT,
                         epilog="example:\n  stream-node inspect run.h5\n" + EPILOG)
    ins.add_argument("file", type=Path)
    ins.set_defaults(handler=run)
    return ins


def run(args: argparse.Namespace) -> int:
    from stream_node.storage.describe import inspect_run

    text, complete = inspect_run(args.file)
    print(text)
    return ExitCode.OK if complete else ExitCode.FRAMES_MISSING
