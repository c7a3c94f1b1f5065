"""`stream-node` command line: argument parsing only; the work happens in the package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from stream_node import __version__
from stream_node.allocator import keep_message_buffers
from stream_node.config import env_defaults
from stream_node.control import Liveness
from stream_node.errors import ConfigError, ExitCode, StreamNodeError
from stream_node.logs import configure as configure_logs
from stream_node.transport import LinkLimits

if TYPE_CHECKING:
    from stream_node.topology import Topology

log = logging.getLogger("stream_node")

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]

EPILOG = """exit codes: 0 complete, 1 internal error, 2 usage, 3 frames missing, 4 peer timeout,
5 configuration (e.g. output exists), 6 I/O error, 7 aborted"""

HAND_EXAMPLE = """example, three terminals:
  stream-node collector --control tcp://127.0.0.1:5550 --input tcp://127.0.0.1:5552 --file run.h5
  stream-node worker --control tcp://127.0.0.1:5550 --input tcp://127.0.0.1:5551 \\
      --output tcp://127.0.0.1:5552 --name w0
  stream-node source --control tcp://127.0.0.1:5550 --data tcp://127.0.0.1:5551 --workers 1
"""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not like 512x1024") from None
    if not shape or min(shape) < 1 or len(shape) > 3:
        raise argparse.ArgumentTypeError(f"shape {text!r}: 1 to 3 positive dimensions")
    return shape


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    return parse


def _kernel_chain(path: str) -> list[dict]:
    try:
        chain = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read kernel chain {path}: {exc}") from None
    if not isinstance(chain, list) or not all(isinstance(k, dict) and "kernel" in k
                                              for k in chain):
        raise argparse.ArgumentTypeError(
            f'{path}: a kernel chain is a JSON list of objects with a "kernel" name')
    return chain


def _timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ready-timeout", type=_positive(float), default=30.0, metavar="S",
                   help="seconds to wait for peers at start (default 30)")
    p.add_argument("--peer-timeout", type=_positive(float), default=2.0, metavar="S",
                   help="a peer silent this long is dead (default 2; heartbeats every "
                        "min(0.5, S/4) s; data links keep a frozen peer's frames as long)")


def _size(text: str) -> int:
    """Bytes from `4MiB`, `512KiB`, `1GiB` or a plain number."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20,
             "g": 1 << 30}
    low = text.strip().lower()
    for suffix, factor in units.items():
        if low.endswith(suffix) and low[: -len(suffix)].strip().isdigit():
            return int(low[: -len(suffix)]) * factor
    if low.isdigit() and int(low) > 0:
        return int(low)
    raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4MiB")


def _links(p: argparse.ArgumentParser) -> None:
    """Every data link's memory bound (seed Problem 2); the node prints the bound at start."""
    d = LinkLimits()
    g = p.add_argument_group("link memory bound, per ZeroMQ data link: about "
                             "(SNDHWM + RCVHWM + 2) x frame + 2 x (SNDBUF + RCVBUF)")
    g.add_argument("--sndhwm", type=_positive(int), default=d.sndhwm, metavar="N",
                   help=f"frames queued to send (default {d.sndhwm})")
    g.add_argument("--rcvhwm", type=_positive(int), default=d.rcvhwm, metavar="N",
                   help=f"frames queued on receipt (default {d.rcvhwm})")
    g.add_argument("--sndbuf", type=_size, default=d.sndbuf, metavar="SIZE",
                   help=f"kernel send buffer (default {d.sndbuf >> 20}MiB)")
    g.add_argument("--rcvbuf", type=_size, default=d.rcvbuf, metavar="SIZE",
                   help=f"kernel receive buffer (default {d.rcvbuf >> 20}MiB)")
    g.add_argument("--max-message", type=_size, default=d.max_message_bytes, metavar="SIZE",
                   help="a peer sending a larger message is disconnected "
                        f"(default {d.max_message_bytes >> 20}MiB)")
    p.add_argument("--keys", type=Path, default=None, metavar="DIR",
                   help="CURVE keys of the topology (`stream-node keys generate DIR`): links "
                        "accept only nodes holding them")


def _limits(args: argparse.Namespace) -> LinkLimits:
    # A data link gives up on its peer no sooner than the control channel does. A frozen peer
    # (SIGSTOP, a paused VM) answers neither; if the link's ZMTP heartbeat expired first, it
    # would drop the frames queued for a peer the run still counts as alive.
    timeout_ms = max(LinkLimits().heartbeat_timeout_ms, round(args.peer_timeout * 1000))
    return LinkLimits(sndhwm=args.sndhwm, rcvhwm=args.rcvhwm, sndbuf=args.sndbuf,
                      rcvbuf=args.rcvbuf, max_message_bytes=args.max_message,
                      heartbeat_timeout_ms=timeout_ms)


def _observed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", default=None, metavar="ENDPOINT",
                   help="answer `stream-node status` requests here (e.g. tcp://0.0.0.0:5570)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="N",
                   help="serve Prometheus metrics on http://HOST:N/metrics")


def _frames(p: argparse.ArgumentParser, default_frames: int) -> None:
    p.add_argument("--frames", type=_positive(int), default=default_frames,
                   help="frames in the run (for --from file://: at most this many)")
    p.add_argument("--compress", choices=["none", "bslz4"], default="none",
                   help="bslz4: workers compress (HDF5 filter 32008), the collector writes bytes")
    p.add_argument("--kernels", type=_kernel_chain, default=None, metavar="CHAIN.json",
                   help='the workers\' kernel chain: a JSON list like [{"kernel": "photonise", '
                        '"photon_energy_kev": 12.4}]; maps as .npy paths')
    p.add_argument("--shape", type=_shape, default=(512, 1024), help="e.g. 512x1024")
    p.add_argument("--dtype", default="uint16", choices=["uint16", "uint32", "float32", "uint8"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="frames/s (0: as fast as possible)")


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
    fmt = argparse.RawDescriptionHelpFormatter

    demo = sub.add_parser("demo", help="whole pipeline on this host with built-in defaults",
                          formatter_class=fmt, epilog="example:\n  stream-node demo --frames 200\n"
                          + EPILOG)
    _frames(demo, 1000)
    demo.add_argument("--workers", type=_positive(int), default=2)
    demo.add_argument("--output", type=Path, default=None,
                      help="HDF5 file (default: stream-node-demo-RUN.h5 here)")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--fanout", choices=["ring", "ipc"], default="ring",
                      help="source-to-workers link: shared-memory ring (default) or ipc socket")
    demo.add_argument("--ring-slots", type=_positive(int), default=16,
                      help="frames in flight in the ring (memory: about slots x frame size)")
    demo.add_argument("--quiet", action="store_true",
                      help="no live view (it is shown when stderr is a terminal)")
    _timing(demo)

    src = sub.add_parser("source", help="synthetic detector; holds the run",
                         formatter_class=fmt, epilog=HAND_EXAMPLE + EPILOG)
    src.add_argument("--control", required=True, help="control endpoint to bind")
    src.add_argument("--data", required=True,
                     help="fan-out endpoint to bind (tcp://, ipc://) or ring://NAME to create")
    src.add_argument("--ring-slots", type=_positive(int), default=16,
                     help="frames in flight for ring:// (memory: about slots x frame size)")
    src.add_argument("--workers", type=_positive(int), default=1,
                     help="workers to wait for before frame 0")
    _frames(src, 1000)
    src.add_argument("--from", dest="origin", default="synthetic:", metavar="ORIGIN",
                     help="synthetic: (default), file://RUN.h5 (replay a written run), "
                          "udp://HOST:PORT?modules=N&frames=N (detector UDP packets, needs "
                          "--data ring://NAME; options in stream_node.udp), dectris+tcp://, "
                          "dectris2+tcp://, karabo+tcp:// (detector streams)")
    src.add_argument("--recorded-rate", action="store_true",
                     help="with --from file://: send at the pace the frames were taken")
    src.add_argument("--origin-timeout", type=_positive(float), default=10.0, metavar="S",
                     help="detector streams: a detector silent this long has ended the run "
                          "(default 10; an endpoint's ?timeout=S overrides it)")
    src.add_argument("--collector-restart", type=_positive(float), default=None, metavar="S",
                     help="if the collector is lost mid-run, wait this long for one started "
                          "with --resume (default: the run fails at once)")
    src.add_argument("--reliable", action="store_true",
                     help="credit-based dispatch: the source keeps each frame until the "
                          "collector wrote it and sends a lost worker's frames again")
    src.add_argument("--credit", type=_positive(int), default=4, metavar="N",
                     help="--reliable: frames each worker may hold (default 4)")
    src.add_argument("--window", type=_positive(int), default=64, metavar="N",
                     help="--reliable: frames kept until written (memory: N x frame; "
                          "default 64)")
    _timing(src)
    _links(src)
    _observed(src)

    wrk = sub.add_parser("worker", help="process frames between source and collector",
                         formatter_class=fmt, epilog=HAND_EXAMPLE + EPILOG)
    wrk.add_argument("--control", required=True, help="the source's control endpoint")
    wrk.add_argument("--input", required=True, action="append",
                     help="endpoint(s) to pull frames from (repeatable), or one ring://NAME")
    wrk.add_argument("--output", required=True, help="the collector's input endpoint")
    wrk.add_argument("--name", default="w0")
    wrk.add_argument("--index", type=int, default=0, help="number written with each frame")
    _timing(wrk)
    _links(wrk)
    _observed(wrk)

    col = sub.add_parser("collector", help="write frames to HDF5",
                         formatter_class=fmt, epilog=HAND_EXAMPLE + EPILOG)
    col.add_argument("--control", required=True, help="the source's control endpoint")
    col.add_argument("--input", required=True, help="endpoint to bind for frames")
    col.add_argument("--file", required=True, type=Path, help="HDF5 output file")
    col.add_argument("--overwrite", action="store_true", help="replace an existing file")
    col.add_argument("--resume", action="store_true",
                     help="reopen the file a collector of this run left when it died, and go "
                          "on (the source must run with --collector-restart)")
    col.add_argument("--drain-timeout", type=_positive(float), default=10.0, metavar="S",
                     help="after END, wait this long without progress before recording the "
                          "rest missing (default 10)")
    col.add_argument("--flush-interval", type=_positive(float), default=1.0, metavar="S",
                     help="flush for SWMR readers and crash safety this often (default 1)")
    col.add_argument("--frames-per-file", type=int, default=0, metavar="N",
                     help="rotate into numbered files of N frames under a VDS master file")
    col.add_argument("--tap", default=None, metavar="ENDPOINT",
                     help="publish the newest written frames here for `stream-node view` and "
                          "stream_node.subscribe (never slows the run)")
    col.add_argument("--tap-rate", type=_positive(float), default=10.0, metavar="HZ",
                     help="frames per second the tap publishes at most (default 10)")
    _timing(col)
    _links(col)
    _observed(col)

    sta = sub.add_parser("status", help="counters of running nodes", formatter_class=fmt,
                         epilog="example:\n  stream-node status tcp://daq1:5570 "
                                "tcp://daq2:5570 --timeout 2\n" + EPILOG)
    sta.add_argument("endpoints", nargs="+", metavar="ENDPOINT",
                     help="nodes' --status endpoints")
    sta.add_argument("--timeout", type=_positive(float), default=2.0, metavar="S",
                     help="answer within this long, dead nodes included (default 2)")
    sta.add_argument("--json", action="store_true", help="JSON for scripts")
    sta.add_argument("--live", action="store_true",
                     help="a live view, until the run is over (Ctrl-C to leave)")

    vie = sub.add_parser("view", help="newest frame of a run as an image", formatter_class=fmt,
                         epilog="example:\n  stream-node view tcp://daq:5560 --png latest.png\n"
                                + EPILOG)
    vie.add_argument("endpoint", help="a collector's --tap endpoint")
    vie.add_argument("--png", type=Path, default=None, metavar="PATH",
                     help="headless: rewrite this PNG every --every seconds")
    vie.add_argument("--every", type=_positive(float), default=2.0, metavar="S")
    vie.add_argument("--count", type=_positive(int), default=None, metavar="N",
                     help="stop after N images")
    vie.add_argument("--timeout", type=_positive(float), default=None, metavar="S",
                     help="give up when no frame came for this long (default: wait)")

    key = sub.add_parser("keys", help="make CURVE keys for a topology", formatter_class=fmt,
                         epilog="example:\n  stream-node keys generate /etc/stream-node/beamline"
                                "\n  stream-node source --keys /etc/stream-node/beamline ...\n"
                                + EPILOG)
    key.add_argument("action", choices=["generate"])
    key.add_argument("directory", type=Path)

    ins = sub.add_parser("inspect", help="summarise a run file", formatter_class=fmt,
                         epilog="example:\n  stream-node inspect run.h5\n" + EPILOG)
    ins.add_argument("file", type=Path)
    _topology_commands(sub)
    return parser


TOPOLOGY_EXAMPLE = """example:
  stream-node check examples/three_hosts.toml
  stream-node run examples/three_hosts.toml --node detector    # on each host, its node
  STREAM_NODE_READY_TIMEOUT=60 stream-node run topo.toml --node storage --set drain_timeout=30
settings: built-in default < file < environment STREAM_NODE_KEY (e.g. STREAM_NODE_FRAMES=100)
  < --set [source.|worker.|collector.]KEY=VALUE; KEY is a role flag with _ for -
"""


def _topology_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="[ROLE.]KEY=VALUE",
                       help="override a setting of every stage (or of one role) that has it")

    run = sub.add_parser("run", help="start this host's stages of a topology file",
                         formatter_class=fmt, epilog=TOPOLOGY_EXAMPLE + EPILOG + """
  (run: the worst of its stages' codes, in this order: 1, 6, 5, 2, 4, 7, 3, 0)
signals: the first SIGINT/SIGTERM goes to the source, which ends the run (the other stages
  follow), the second makes every stage abort at once (missing frames recorded), the third kills""")
    run.add_argument("topology", type=Path, metavar="TOPOLOGY.toml")
    run.add_argument("--node", required=True, help="this host's node in the topology")
    overrides(run)
    run.add_argument("--dry-run", action="store_true",
                     help="print the commands this node would run, start nothing")

    chk = sub.add_parser("check", help="validate a topology file, start nothing",
                         formatter_class=fmt, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    chk.add_argument("topology", type=Path, metavar="TOPOLOGY.toml")
    overrides(chk)

    cfg = sub.add_parser("config", help="the effective configuration and where it came from",
                         formatter_class=fmt, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="show")
    show = cfg_sub.add_parser("show", help="print every setting with its origin",
                              formatter_class=fmt, epilog=TOPOLOGY_EXAMPLE + EPILOG)
    show.add_argument("topology", type=Path, nargs="?", metavar="TOPOLOGY.toml",
                      help="without it: the role commands' settings on this host")
    show.add_argument("--node", help="only this node")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    overrides(show)


def role_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The role commands' parsers: their flags are the settings a topology stage takes."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {role: sub.choices[role] for role in ("source", "worker", "collector", "view")}


def _liveness(args: argparse.Namespace) -> Liveness:
    return Liveness(heartbeat_s=min(0.5, args.peer_timeout / 4), peer_timeout_s=args.peer_timeout)


def _demo(args: argparse.Namespace) -> int:
    from stream_node.demo import run_local_pipeline

    output = args.output or Path(f"stream-node-demo-{secrets.token_hex(4)}.h5")
    summary = run_local_pipeline(
        output, frames=args.frames, shape=args.shape, dtype=args.dtype, workers=args.workers,
        rate=args.rate, seed=args.seed, overwrite=args.overwrite, liveness=_liveness(args),
        ready_timeout_s=args.ready_timeout, fanout=args.fanout, ring_slots=args.ring_slots,
        compression=args.compress, kernels=args.kernels, log_level=args.log_level,
        live=not args.quiet and sys.stderr.isatty())
    print(summary.text())
    return summary.exit_code


def _source(args: argparse.Namespace) -> int:
    from stream_node.source import Source, SourceConfig

    source = Source(SourceConfig(
        control=args.control, data=args.data, workers=args.workers, frames=args.frames,
        shape=args.shape, dtype=args.dtype, seed=args.seed, rate=args.rate,
        ring_slots=args.ring_slots, ready_timeout_s=args.ready_timeout,
        compression=args.compress, origin=args.origin, recorded_rate=args.recorded_rate,
        origin_timeout_s=args.origin_timeout,
        kernels=args.kernels, status=args.status, metrics_port=args.metrics_port,
        reliable=args.reliable, credit=args.credit, window=args.window,
        collector_restart_s=args.collector_restart or 0.0,
        limits=_limits(args), liveness=_liveness(args)))

    def stop(signum: int, frame: object) -> None:
        """The first signal ends the run at the last frame sent; the next aborts it."""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _terminate)
        if not source.stop():
            _terminate(signum, frame)
        log.warning("source: %s: ending the run at the last frame sent (signal again to abort)",
                    signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    summary = source.run()
    print(summary.text())
    return summary.exit_code


def _worker(args: argparse.Namespace) -> int:
    from stream_node.worker import Worker, WorkerConfig

    Worker(WorkerConfig(control=args.control, inputs=args.input, output=args.output,
                        name=args.name, index=args.index, ready_timeout_s=args.ready_timeout,
                        status=args.status, metrics_port=args.metrics_port,
                        limits=_limits(args), liveness=_liveness(args))).run()
    return ExitCode.OK


def _collector(args: argparse.Namespace) -> int:
    from stream_node.collector import Collector, CollectorConfig
    from stream_node.errors import StorageError

    collector = Collector(CollectorConfig(
        control=args.control, input=args.input, path=args.file, overwrite=args.overwrite,
        drain_timeout_s=args.drain_timeout, ready_timeout_s=args.ready_timeout,
        flush_interval_s=args.flush_interval, frames_per_file=args.frames_per_file,
        resume=args.resume,
        status=args.status, metrics_port=args.metrics_port, tap=args.tap, tap_rate=args.tap_rate,
        limits=_limits(args), liveness=_liveness(args)))
    try:
        summary = collector.run()
    except StorageError as exc:
        if collector.writer is None or not collector.writer.abandoned:
            raise
        # The output file was abandoned after a failed write: end now, before HDF5's exit-time
        # close can write metadata the disk has no room for (it would spoil the flushed file).
        print(f"stream-node collector: error: {exc}", file=sys.stderr, flush=True)
        zmq.Context.instance().destroy(linger=2000)
        os._exit(int(exc.exit_code))
    return ExitCode.OK if summary.get("missing", 1) == 0 else ExitCode.FRAMES_MISSING


def _inspect(args: argparse.Namespace) -> int:
    from stream_node.inspect import describe

    print(describe(args.file))
    return ExitCode.OK


def _status(args: argparse.Namespace) -> int:
    from stream_node.live import show_status

    return show_status(args.endpoints, args.timeout, as_json=args.json, live=args.live)


def _view(args: argparse.Namespace) -> int:
    from stream_node.view import view

    view(args.endpoint, png=args.png, every_s=args.every, count=args.count,
         timeout_s=args.timeout)
    return ExitCode.OK


def _global_args(args: argparse.Namespace) -> list[str]:
    """The options every stage of `run` gets from the command that started it."""
    return ["--log-level", args.log_level] + (["--log-json"] if args.log_json else [])


def _load_topology(args: argparse.Namespace) -> Topology:
    from stream_node.topology import load

    return load(args.topology, role_parsers(build_parser()), sets=args.overrides)


def _run(args: argparse.Namespace) -> int:
    from stream_node.launcher import Launcher

    topo = _load_topology(args)
    if args.dry_run:
        for command in topo.commands(topo.node(args.node).name):
            print(shlex.join(["stream-node", *_global_args(args), *command.args]))
        return ExitCode.OK
    return Launcher(topo, args.node, _global_args(args), args.log_json).run()


def _check(args: argparse.Namespace) -> int:
    from stream_node.topology import TopologyError

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


def _config(args: argparse.Namespace) -> int:
    from stream_node.config import Setting, builtin, environment, render, role_options

    sections: list[tuple[str, dict[str, Setting], list[str]]] = []
    if args.topology is None:  # the role commands as typed on this host: defaults < env
        if args.overrides:
            raise ConfigError("--set needs a TOPOLOGY.toml (a role command takes flags)")
        env = environment(os.environ)
        for role, parser in role_parsers(build_parser()).items():
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
                mine = [shlex.join(["stream-node", *_global_args(args), *c.args])
                        for c in commands if c.role == stage.role]
                sections.append((f"nodes.{node.name}.{stage.kind}", settings, mine))
    print(render(sections, args.json))
    return ExitCode.OK


def _keys(args: argparse.Namespace) -> int:
    from stream_node.security import generate

    for path in generate(args.directory):
        print(path)
    print(f"give every node of the topology --keys {args.directory}; a node accepts the public "
          f"keys in {args.directory / 'authorized'}")
    return ExitCode.OK


COMMANDS = {"keys": _keys, "demo": _demo, "source": _source, "worker": _worker,
            "collector": _collector, "inspect": _inspect, "status": _status, "view": _view,
            "run": _run, "check": _check, "config": _config}


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a node the way Ctrl-C does: it finalises what it holds, then exits."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A role command's settings: built-in default < environment (STREAM_NODE_KEY) < flag.
    env_errors = {role: env_defaults(p, os.environ) for role, p in role_parsers(parser).items()}
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
    signal.signal(signal.SIGTERM, _terminate)
    # A file-size limit must give an I/O error the collector reports, not kill it silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    configure_logs(args.log_level, args.log_json)
    keep_message_buffers()  # received frames reuse heap memory instead of faulting in new pages
    try:
        if getattr(args, "keys", None) is not None and args.command != "keys":
            from stream_node import security

            security.use(security.Keys.load(args.keys))
        return int(COMMANDS[args.command](args))
    except StreamNodeError as exc:
        print(f"stream-node {args.command}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        print(f"stream-node {args.command}: interrupted ({exc or 'SIGINT'}), finalised",
              file=sys.stderr)
        return int(ExitCode.ABORTED)
    finally:
        # Zero-copy messages still queued refer to Python buffers: the context must finish
        # (or drop them, after the bounded linger) while the interpreter is still alive. A
        # further signal must not cut that short with a traceback: the node has finalised.
        for signum in before:
            signal.signal(signum, signal.SIG_IGN)
        if "stream_node.security" in sys.modules:
            sys.modules["stream_node.security"].stop()
        zmq.Context.instance().destroy(linger=2000)
        for signum, handler in before.items():  # SIGTERM from now on: the default, exit
            signal.signal(signum, handler)
