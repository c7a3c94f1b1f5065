"""`stream-node run`, `check` and `config show`: a topology file's stages on this host."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from stream_node.cli.options import EPILOG, FORMAT, positive
from stream_node.cli.roles import role_parsers
from stream_node.model.errors import ConfigError, ExitCode

if TYPE_CHECKING:
    from stream_node.deploy.topology import Topology

TOPOLOGY_EXAMPLE = """example:
  stream-node check examples/three_hosts.toml
  stream-node run examples/three_hosts.toml --node detector    # on each host, its node
  STREAM_NODE_READY_TIMEOUT=60 stream-node run topo.toml --node storage --set drain_timeout=30
settings: built-in default < file < environment STREAM_NODE_KEY (e.g. STREAM_NODE_FRAMES=100)
  < --set [source.|worker.|collector.]KEY=VALUE; KEY is a role flag with _ for -
"""


def add(sub: argparse._SubParsersAction) -> None:

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="[ROLE.]KEY=VALUE",
                       help="override a setting of every stage (or of one role) that has it")

    run = sub.add_parser("run", help="start this host's stages of a topology file",
                         formatter_class=FORMAT, epilog=TOPOLOGY_EXAMPLE + EPILOG + """
  (run: the worst of its stages' codes, in this order: 1, 6, 5, 2, 4, 7, 3, 0)
signals: the first SIGINT/SIGTERM goes to the source, which ends the run (the other stages
  follow), the second makes every stage abort at once (missing frames recorded), the third kills""")
    run.add_argument("topology", type=Path, metavar="TOPOLOGY.toml")
    run.add_argument("--node", required=True, help="this host's node in the topology")
    overrides(run)
    run.set_defaults(handler=run_node)
    run.add_argument("--dry-run", action="store_true",
                     help="print the commands this node would run, start nothing")

    srv = sub.add_parser("serve", help="keep this host's stages of a topology up, run after "
                         "run, with an HTTP API and a status page",
                         formatter_class=FORMAT, epilog="""example:
  stream-node serve examples/serve.toml --node local --api 127.0.0.1:8470
  stream-node ctl 127.0.0.1:8470 config frames=100
  stream-node ctl 127.0.0.1:8470 start
runs: a DECTRIS source (dectris+tcp://, dectris2+tcp://) makes one run of each series the
  detector sends; any other source runs when told (`ctl start`, POST /api/v1/command/start).
  Each run's file is the API's file_template, in the collector's --file directory.
signals: the first SIGINT/SIGTERM ends the current run cleanly, then every stage; the second
  aborts the run; the third kills""" + EPILOG)
    srv.add_argument("topology", type=Path, metavar="TOPOLOGY.toml")
    srv.add_argument("--node", required=True, help="this host's node in the topology")
    srv.add_argument("--api", default="127.0.0.1:8470", metavar="HOST:PORT",
                     help="where the HTTP API and the status page listen (default "
                          "127.0.0.1:8470; 'off': none)")
    srv.add_argument("--token-file", default=None, metavar="PATH",
                     help="commands and config changes need this token (chmod 600); default: "
                          "env STREAM_NODE_TOKEN, else none needed")
    srv.add_argument("--series-wait", type=positive(float), default=30.0, metavar="S",
                     help="a detector's series that waited longer than this for the last run "
                          "to drain is refused (recorded, its frames dropped), never mixed "
                          "(default 30)")
    overrides(srv)
    srv.set_defaults(handler=serve_node)

    chk = sub.add_parser("check", help="validate a topology file, start nothing",
                         formatter_class=FORMAT, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    chk.add_argument("topology", type=Path, metavar="TOPOLOGY.toml")
    overrides(chk)
    chk.set_defaults(handler=check)

    cfg = sub.add_parser("config", help="the effective configuration and where it came from",
                         formatter_class=FORMAT, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="show")
    show = cfg_sub.add_parser("show", help="print every setting with its origin",
                              formatter_class=FORMAT, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    show.add_argument("topology", type=Path, nargs="?", metavar="TOPOLOGY.toml",
                      help="without it: the role commands' settings on this host")
    show.add_argument("--node", help="only this node")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    overrides(show)
    show.set_defaults(handler=config_show)


def global_args(args: argparse.Namespace) -> list[str]:
    """The options every stage of `run` gets from the command that started it."""
    return ["--log-level", args.log_level] + (["--log-json"] if args.log_json else [])


def _load_topology(args: argparse.Namespace) -> Topology:
    from stream_node.deploy.topology_file import load

    return load(args.topology, role_parsers(), sets=args.overrides)


def run_node(args: argparse.Namespace) -> int:
    from stream_node.deploy.launcher import Launcher

    topo = _load_topology(args)
    if args.dry_run:
        for command in topo.commands(topo.node(args.node).name):
            print(shlex.join(["stream-node", *global_args(args), *command.args]))
        return ExitCode.OK
    return Launcher(topo, args.node, global_args(args), args.log_json).run()


def serve_node(args: argparse.Namespace) -> int:
    from stream_node.cli.source import source_config
    from stream_node.deploy.api_token import load_token
    from stream_node.deploy.service import Service

    topo = _load_topology(args)
    node = topo.node(args.node).name
    source = None
    with tempfile.TemporaryDirectory(prefix="stream-node-serve-") as tmp:
        for command in topo.commands(node, topo.write_kernels(Path(tmp))):
            if command.role == "source":  # it runs in the serving process: its flags parsed
                parsed = role_parsers()["source"].parse_args(command.args[1:])
                source = source_config(parsed)
                if parsed.keys is not None:  # as `main` does for a source started by hand
                    from stream_node.links import security

                    security.use(security.Keys.load(parsed.keys))
    api = None
    if args.api != "off":
        host, _, port = args.api.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--api {args.api!r}: expected HOST:PORT, e.g. 127.0.0.1:8470")
        api = (host.strip("[]"), int(port))
    return Service(topo, node, global_args(args), source, api, load_token(args.token_file),
                   args.log_json, args.series_wait).run()


def check(args: argparse.Namespace) -> int:
    from stream_node.deploy.topology import TopologyError

    try:
        topo = _load_topology(args)
    except TopologyError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print(f"stream-node check: {len(exc.problems)} problem(s), nothing started",
              file=sys.stderr)
        return ExitCode.CONFIG
    stages = "; ".join(f"{node.name} ({node.host}): " + " + ".join(
        f"{s.count} workers" if s.kind == "workers" else s.kind for s in node.stages.values())
        for node in topo.nodes.values())
    print(f"{args.topology}: ok: run {topo.name!r}; {stages}")
    return ExitCode.OK


def config_show(args: argparse.Namespace) -> int:
    from stream_node.deploy.settings import Setting, builtin, environment, render, role_options

    sections: list[tuple[str, dict[str, Setting], list[str]]] = []
    if args.topology is None:  # the role commands as typed on this host: defaults < env
        if args.overrides:
            raise ConfigError("--set needs a TOPOLOGY.toml (a role command takes flags)")
        env = environment(os.environ)
        for role, parser in role_parsers().items():
            settings = builtin(role_options(parser))
            settings.update({k: Setting(*env[k]) for k in settings if k in env})
            sections.append((role, settings, []))
    else:
        topo = _load_topology(args)
        for node in [topo.node(args.node)] if args.node else list(topo.nodes.values()):
            commands = topo.commands(node.name)
            for stage in node.stages.values():
                settings = dict(stage.settings)
                if stage.kind == "source" and topo.kernels:
                    settings["kernels"] = Setting(topo.kernels, "file (the workers' chain)")
                if stage.kind == "workers":
                    settings["count"] = Setting(stage.count, "file or default 1")
                mine = [shlex.join(["stream-node", *global_args(args), *c.args])
                        for c in commands if c.role == stage.role]
                sections.append((f"nodes.{node.name}.{stage.kind}", settings, mine))
    print(render(sections, args.json))
    return ExitCode.OK
