"""`stream-node` command line: argument parsing only; the work happens in the package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from stream_node import __version__
from stream_node.control import Liveness
from stream_node.errors import ExitCode, StreamNodeError

log = logging.getLogger("stream_node")

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
    p.add_argument("--peer-timeout", type=_positive(float), default=5.0, metavar="S",
                   help="a peer silent this long is dead (default 5)")


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
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: WARNING for demo, INFO for the roles")
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
    _timing(src)

    wrk = sub.add_parser("worker", help="process frames between source and collector",
                         formatter_class=fmt, epilog=HAND_EXAMPLE + EPILOG)
    wrk.add_argument("--control", required=True, help="the source's control endpoint")
    wrk.add_argument("--input", required=True, action="append",
                     help="endpoint(s) to pull frames from (repeatable), or one ring://NAME")
    wrk.add_argument("--output", required=True, help="the collector's input endpoint")
    wrk.add_argument("--name", default="w0")
    wrk.add_argument("--index", type=int, default=0, help="number written with each frame")
    _timing(wrk)

    col = sub.add_parser("collector", help="write frames to HDF5",
                         formatter_class=fmt, epilog=HAND_EXAMPLE + EPILOG)
    col.add_argument("--control", required=True, help="the source's control endpoint")
    col.add_argument("--input", required=True, help="endpoint to bind for frames")
    col.add_argument("--file", required=True, type=Path, help="HDF5 output file")
    col.add_argument("--overwrite", action="store_true", help="replace an existing file")
    col.add_argument("--drain-timeout", type=_positive(float), default=10.0, metavar="S",
                     help="after END, wait this long without progress before recording the "
                          "rest missing (default 10)")
    col.add_argument("--flush-interval", type=_positive(float), default=1.0, metavar="S",
                     help="flush for SWMR readers and crash safety this often (default 1)")
    col.add_argument("--frames-per-file", type=int, default=0, metavar="N",
                     help="rotate into numbered files of N frames under a VDS master file")
    _timing(col)

    ins = sub.add_parser("inspect", help="summarise a run file", formatter_class=fmt,
                         epilog="example:\n  stream-node inspect run.h5\n" + EPILOG)
    ins.add_argument("file", type=Path)
    return parser


def _liveness(args: argparse.Namespace) -> Liveness:
    return Liveness(heartbeat_s=min(0.5, args.peer_timeout / 4), peer_timeout_s=args.peer_timeout)


def _demo(args: argparse.Namespace) -> int:
    from stream_node.demo import run_local_pipeline

    output = args.output or Path(f"stream-node-demo-{secrets.token_hex(4)}.h5")
    summary = run_local_pipeline(
        output, frames=args.frames, shape=args.shape, dtype=args.dtype, workers=args.workers,
        rate=args.rate, seed=args.seed, overwrite=args.overwrite, liveness=_liveness(args),
        ready_timeout_s=args.ready_timeout, fanout=args.fanout, ring_slots=args.ring_slots,
        compression=args.compress, kernels=args.kernels, log_level=args.log_level)
    print(summary.text())
    return summary.exit_code


def _source(args: argparse.Namespace) -> int:
    from stream_node.source import Source, SourceConfig

    summary = Source(SourceConfig(
        control=args.control, data=args.data, workers=args.workers, frames=args.frames,
        shape=args.shape, dtype=args.dtype, seed=args.seed, rate=args.rate,
        ring_slots=args.ring_slots, ready_timeout_s=args.ready_timeout,
        compression=args.compress, origin=args.origin, recorded_rate=args.recorded_rate,
        kernels=args.kernels,
        liveness=_liveness(args))).run()
    print(summary.text())
    return summary.exit_code


def _worker(args: argparse.Namespace) -> int:
    from stream_node.worker import Worker, WorkerConfig

    Worker(WorkerConfig(control=args.control, inputs=args.input, output=args.output,
                        name=args.name, index=args.index, ready_timeout_s=args.ready_timeout,
                        liveness=_liveness(args))).run()
    return ExitCode.OK


def _collector(args: argparse.Namespace) -> int:
    from stream_node.collector import Collector, CollectorConfig
    from stream_node.errors import StorageError

    collector = Collector(CollectorConfig(
        control=args.control, input=args.input, path=args.file, overwrite=args.overwrite,
        drain_timeout_s=args.drain_timeout, ready_timeout_s=args.ready_timeout,
        flush_interval_s=args.flush_interval, frames_per_file=args.frames_per_file,
        liveness=_liveness(args)))
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


COMMANDS = {"demo": _demo, "source": _source, "worker": _worker, "collector": _collector,
            "inspect": _inspect}


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a node the way Ctrl-C does: it finalises what it holds, then exits."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_level = args.log_level or (
        "WARNING" if args.command in ("demo", "inspect") else "INFO")
    signal.signal(signal.SIGTERM, _terminate)
    # A file-size limit must give an I/O error the collector reports, not kill it silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
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
        # (or drop them, after the bounded linger) while the interpreter is still alive.
        zmq.Context.instance().destroy(linger=2000)
