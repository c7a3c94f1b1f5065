"""What several commands share: value types, option groups, and the objects built from them."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream_node.links.control import Liveness, default_topology
from stream_node.links.transport import LinkLimits

FORMAT = argparse.RawDescriptionHelpFormatter


EPILOG = """exit codes: 0 complete, 1 internal error, 2 usage, 3 frames missing, 4 peer timeout,
5 configuration (e.g. output exists), 6 I/O error, 7 aborted"""

HAND_EXAMPLE = """example, three terminals:
  stream-node collector --control tcp://127.0.0.1:5550 --input tcp://127.0.0.1:5552 --file run.h5
  stream-node worker --control tcp://127.0.0.1:5550 --input tcp://127.0.0.1:5551 \\
      --output tcp://127.0.0.1:5552 --name w0
  stream-node source --control tcp://127.0.0.1:5550 --data tcp://127.0.0.1:5551 --workers 1
"""


# The largest frame --shape may ask for: 2 GiB at the widest --dtype (4 bytes a pixel). A frame
# is one HDF5 chunk (under 4 GiB by HDF5's rule) and one message per hop; the cap is about 30
# times the largest detectors' frames (EIGER2 16M: 18 Mpixels) and refuses a typo before any
# memory is asked for.
MAX_SHAPE_PIXELS = (2 << 30) // 4


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not like 512x1024") from None
    if not shape or min(shape) < 1 or len(shape) > 3:
        raise argparse.ArgumentTypeError(f"shape {text!r}: 1 to 3 positive dimensions")
    pixels = math.prod(shape)
    if pixels > MAX_SHAPE_PIXELS:
        raise argparse.ArgumentTypeError(
            f"shape {text!r} is {pixels} pixels, more than the {MAX_SHAPE_PIXELS} a frame may "
            "have (2 GiB at 4 bytes a pixel): give the frame's own shape, e.g. 512x1024")
    return shape


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    return parse


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 (a rate: 0 means as fast as possible)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0 (0: no limit)")
    return value


def kernel_chain_file(path: str) -> list[dict]:
    try:
        chain = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read kernel chain {path}: {exc}") from None
    if not isinstance(chain, list) or not all(isinstance(k, dict) and "kernel" in k
                                              for k in chain):
        raise argparse.ArgumentTypeError(
            f'{path}: a kernel chain is a JSON list of objects with a "kernel" name')
    return chain


def timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ready-timeout", type=positive(float), default=30.0, metavar="S",
                   help="seconds to wait for peers at start (default 30)")
    p.add_argument("--peer-timeout", type=positive(float), default=2.0, metavar="S",
                   help="a peer silent this long is dead (default 2; heartbeats every "
                        "min(0.5, S/4) s; data links keep a frozen peer's frames as long)")


def size_arg(text: str) -> int:
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


def link_options(p: argparse.ArgumentParser) -> None:
    """Every data link's memory bound (seed Problem 2); the node prints the bound at start."""
    d = LinkLimits()
    g = p.add_argument_group("link memory bound, per ZeroMQ data link: about "
                             "(SNDHWM + RCVHWM + 2) x frame + 2 x (SNDBUF + RCVBUF)")
    g.add_argument("--sndhwm", type=positive(int), default=d.sndhwm, metavar="N",
                   help=f"frames queued to send (default {d.sndhwm})")
    g.add_argument("--rcvhwm", type=positive(int), default=d.rcvhwm, metavar="N",
                   help=f"frames queued on receipt (default {d.rcvhwm})")
    g.add_argument("--sndbuf", type=size_arg, default=d.sndbuf, metavar="SIZE",
                   help=f"kernel send buffer (default {d.sndbuf >> 20}MiB)")
    g.add_argument("--rcvbuf", type=size_arg, default=d.rcvbuf, metavar="SIZE",
                   help=f"kernel receive buffer (default {d.rcvbuf >> 20}MiB)")
    g.add_argument("--max-message", type=size_arg, default=d.max_message_bytes, metavar="SIZE",
                   help="a peer sending a larger message is disconnected "
                        f"(default {d.max_message_bytes >> 20}MiB)")
    p.add_argument("--keys", type=Path, default=None, metavar="DIR",
                   help="CURVE keys of the topology (`stream-node keys generate DIR`): links "
                        "accept only nodes holding them")


def link_limits(args: argparse.Namespace) -> LinkLimits:
    return LinkLimits(sndhwm=args.sndhwm, rcvhwm=args.rcvhwm, sndbuf=args.sndbuf,
                      rcvbuf=args.rcvbuf, max_message_bytes=args.max_message)


def observed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", default=None, metavar="ENDPOINT",
                   help="answer `stream-node status` requests here (e.g. tcp://0.0.0.0:5570)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="N",
                   help="serve Prometheus metrics on http://HOST:N/metrics")


def frame_options(p: argparse.ArgumentParser, default_frames: int) -> None:
    p.add_argument("--frames", type=positive(int), default=default_frames,
                   help="frames in the run (for --from file://: at most this many)")
    p.add_argument("--compress", choices=["none", "bslz4"], default="none",
                   help="bslz4: workers compress (HDF5 filter 32008), the collector writes bytes")
    p.add_argument("--kernels", type=kernel_chain_file, default=None, metavar="CHAIN.json",
                   help='the workers\' kernel chain: a JSON list like [{"kernel": "photonise", '
                        '"photon_energy_kev": 12.4}]; maps as .npy paths')
    p.add_argument("--shape", type=shape_arg, default=(512, 1024),
                   help=f"e.g. 512x1024 (at most {MAX_SHAPE_PIXELS} pixels)")
    p.add_argument("--dtype", default="uint16", choices=["uint16", "uint32", "float32", "uint8"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=non_negative, default=0.0,
                   help="frames/s (0: as fast as possible)")


def liveness_of(args: argparse.Namespace) -> Liveness:
    return Liveness(heartbeat_s=min(0.5, args.peer_timeout / 4), peer_timeout_s=args.peer_timeout)


def role_parser(sub: argparse._SubParsersAction, name: str,
                summary: str) -> argparse.ArgumentParser:
    """A role command's parser (source, worker, collector), with the three-terminal example."""
    return sub.add_parser(name, help=summary, formatter_class=FORMAT,
                          epilog=HAND_EXAMPLE + EPILOG)


def node_options(p: argparse.ArgumentParser) -> None:
    """What every node of a run takes: timeouts, link bounds and keys, status and metrics, the
    topology it belongs to."""
    p.add_argument("--topology", default=default_topology(), metavar="NAME",
                   help="the topology this node belongs to: the source refuses workers and "
                        "collectors of another (default: your user name; `run` gives the "
                        "topology file's name)")
    timing_options(p)
    link_options(p)
    observed_options(p)


def node_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every node's config takes, from `node_options`' flags."""
    return {"status": args.status, "metrics_port": args.metrics_port, "topology": args.topology,
            "limits": link_limits(args), "liveness": liveness_of(args)}
