"""`stream-node ctl HOST:PORT ACTION`: ask a served node for its status, change its next run's
settings, start, stop or abort a run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from stream_node.cli.options import EPILOG, FORMAT, positive

ACTIONS = ("status", "start", "stop", "abort", "config")
EXAMPLE = """examples:
  stream-node ctl daq1:8080 status
  stream-node ctl daq1:8080 config series=lyso_01 frames=3600 'kernels=[{"kernel": "bin2x2"}]'
  stream-node ctl daq1:8080 --token-file ~/.stream-node-token start
"""


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ctl = sub.add_parser("ctl", help="control a served node (status, config, start, stop, abort)",
                         formatter_class=FORMAT,
                         epilog=EXAMPLE + "\na refused command (not valid in the node's state) "
                                "exits with 2\n" + EPILOG)
    ctl.add_argument("address", metavar="HOST:PORT", help="the node's control API")
    ctl.add_argument("action", choices=ACTIONS, help="what to ask")
    ctl.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                     help="config only: settings for the next run (JSON for lists/objects)")
    ctl.add_argument("--token-file", metavar="PATH",
                     help="the node's token (mode 600); default: env STREAM_NODE_TOKEN")
    ctl.add_argument("--timeout", type=positive(float), default=5.0, metavar="S",
                     help="give up after this long (default 5)")
    ctl.add_argument("--json", action="store_true", help="print the answer as JSON")
    ctl.set_defaults(handler=run)
    return ctl


def parse_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE`: the value stays a string (the node coerces it), except a JSON list or
    object."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if value.lstrip()[:1] in ("[", "{"):
        try:
            return key.strip(), json.loads(value)
        except ValueError:
            pass  # sent as it is: the node says what is wrong with it
    return key.strip(), value


def run(args: argparse.Namespace) -> int:
    from stream_node.deploy.api_client import ApiClient
    from stream_node.deploy.api_token import load_token
    from stream_node.deploy.run_states import Refused
    from stream_node.model.errors import ExitCode

    if args.settings and args.action != "config":
        print(f"stream-node ctl: error: KEY=VALUE goes with config, not {args.action}",
              file=sys.stderr)
        return int(ExitCode.USAGE)
    try:
        updates = dict(parse_setting(s) for s in args.settings)
    except argparse.ArgumentTypeError as exc:
        print(f"stream-node ctl: error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    client = ApiClient(args.address, load_token(args.token_file), args.timeout)
    try:
        if args.action == "status":
            answer = client.status()
            text = summary(answer)
        elif args.action == "config":
            answer = client.configure(updates) if updates else client.config()
            text = config_text(answer)
        else:
            answer = client.command(args.action)
            text = f"{args.action}: accepted; the node is {answer.get('state')}"
    except Refused as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        return int(exc.exit_code)
    print(json.dumps(answer, indent=1) if args.json else text)
    return int(ExitCode.OK)


def _run_line(r: dict[str, Any]) -> str:
    expected = r.get("frames_expected")
    frames = f"{r['frames_written']}" + (f"/{expected}" if expected else "")
    code = "" if r.get("exit_code") is None else f"  exit {r['exit_code']}"
    return (f"run {r['run']}  {r.get('series') or '-'}  {frames} frames  {r['missing']} missing"
            f"{code}  {r['state']}  {r['file']}")


def summary(status: dict[str, Any]) -> str:
    """A few lines for a terminal: the state, the current run, the last runs."""
    detail = f" ({status['detail']})" if status.get("detail") else ""
    lines = [f"{status['node']}: {status['state']}{detail}"
             + ("  safe to arm" if status.get("safe_to_arm") else "")]
    current = status.get("current")
    lines.append("current: " + (_run_line(current) if current else "no run"))
    runs = [r for r in status.get("runs", []) if not current or r["run"] != current["run"]]
    if runs:
        lines.append("last runs:")
        lines += [f"  {_run_line(r)}" for r in runs[:5]]
    return "\n".join(lines)


def config_text(answer: dict[str, Any]) -> str:
    lines = [f"{key} = {json.dumps(value)}" for key, value in answer["config"].items()]
    return "\n".join([*lines, f"(applies to the {answer.get('applies_to', 'next run')})"])
