"""`stream-node` command line: argument parsing only; the work happens in the package.

One module per command, each with `add(sub)` (its parser, with `handler` as default) and
`run(args)`; `options.py` holds what several share.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import zmq

from stream_node._version import __version__
from stream_node.cli import (
    collector,
    ctl,
    demo,
    inspect_file,
    keys,
    pedestal,
    source,
    status,
    topology,
    view,
    worker,
)
from stream_node.cli.options import EPILOG
from stream_node.cli.roles import ROLES
from stream_node.cli.signals import terminate
from stream_node.deploy.settings import env_defaults
from stream_node.model.errors import ExitCode, StreamNodeError
from stream_node.ops.logs import configure as configure_logs
from stream_node.stages.allocator import keep_message_buffers

log = logging.getLogger("stream_node")

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
COMMANDS = (demo, source, worker, collector, status, view, keys, inspect_file, topology,
            pedestal, ctl)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-node", description="Lossless detector-frame pipeline.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stream-node {__version__}")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                        help="default: WARNING for demo, INFO for the roles")
    parser.add_argument("--log-json", action="store_true",
                        help="log as JSON lines (time, level, logger, message)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command in COMMANDS:
        command.add(sub)
    return parser


def parser_of_roles(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The role commands' parsers within the whole command line's parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {role: sub.choices[role] for role in ROLES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A role command's settings: built-in default < environment (STREAM_NODE_KEY) < flag.
    env_errors = {role: env_defaults(p, os.environ)
                  for role, p in parser_of_roles(parser).items()}
    args = parser.parse_args(argv)
    if env_errors.get(args.command):
        print(f"stream-node {args.command}: error: {'; '.join(env_errors[args.command])}",
              file=sys.stderr)
        return int(ExitCode.CONFIG)
    args.log_level = args.log_level or os.environ.get("STREAM_NODE_LOG_LEVEL", "").upper() or (
        "WARNING" if args.command in ("demo", "inspect", "status", "view") else "INFO")
    if args.log_level not in LOG_LEVELS:
        print(f"stream-node: error: env STREAM_NODE_LOG_LEVEL: {args.log_level!r} is not one of "
              f"{', '.join(LOG_LEVELS)}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, terminate)
    # A file-size limit must give an I/O error the collector reports, not kill it silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    configure_logs(args.log_level, args.log_json)
    keep_message_buffers()  # received frames reuse heap memory instead of faulting in new pages
    try:
        if getattr(args, "keys", None) is not None and args.command != "keys":
            from stream_node.links import security

            security.use(security.Keys.load(args.keys))
        return int(args.handler(args))
    except StreamNodeError as exc:
        print(f"stream-node {args.command}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except BrokenPipeError:  # `stream-node inspect RUN.h5 | head`: the reader has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return int(ExitCode.OK)
    except KeyboardInterrupt as exc:
        # The next signal (a launcher's abort follows its stop at once) must not cut this
        # report short with a traceback: from here on the node only finalises.
        for signum in before:
            signal.signal(signum, signal.SIG_IGN)
        print(f"stream-node {args.command}: interrupted ({str(exc) or 'SIGINT'}), finalised",
              file=sys.stderr)
        return int(ExitCode.ABORTED)
    finally:
        # Zero-copy messages still queued refer to Python buffers: the context must finish
        # (or drop them, after the bounded linger) while the interpreter is still alive. A
        # further signal must not cut that short with a traceback: the node has finalised.
        for signum in before:
            signal.signal(signum, signal.SIG_IGN)
        if "stream_node.links.security" in sys.modules:
            sys.modules["stream_node.links.security"].stop()
        zmq.Context.instance().destroy(linger=2000)
        for signum, handler in before.items():  # SIGTERM from now on: the default, exit
            signal.signal(signum, handler)
