"""Where a run's frames come from: each module turns one kind of stream into stream-node frames.

`stream-node source --from` names the origin by its endpoint:

    synthetic:                  the detector simulator (`synthetic.py`)
    synthetic:jungfrau?...      a JUNGFRAU with a known calibration (`jungfrau_sim.py`)
    file://RUN.h5               a written run, replayed (`replay.py`)
    udp://HOST:PORT?...         detector modules sending UDP packets (`udp.py`, native receiver)
    dectris+tcp://HOST:9999     DECTRIS SIMPLON stream v1 (JSON multipart, PULL; `dectris.py`)
    dectris2+tcp://HOST:31001   DECTRIS stream v2 (CBOR, PULL; `stream2.py`)
    karabo+tcp://HOST:4545      European XFEL karabo-bridge (msgpack multipart; REQ "next",
                                PULL or SUB: `?pattern=req|pull|sub`; `karabo.py`)

Query options after a detector protocol's address apply to every protocol: `?timeout=S` (how
long the detector may stay silent, default the source's `--origin-timeout`),
`?verify=header|structure|full` (how the source checks a compressed blob: its header, the workers
then walk its blocks (default); its block structure itself; or by decompressing it),
`?decompress=1` (compressed frames become raw pixels at the source instead of passing through),
and per protocol those its module documents (DECTRIS v1: `?verify_hash=1`).

A run imports only the module of the origin it names: the protocols pull in cbor2, lz4 and a
Numba block walk, the UDP origin its native receiver. Origins never import the stages or storage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stream_node.model.errors import ConfigError
from stream_node.origins.base import Origin, OriginOptions

if TYPE_CHECKING:
    from stream_node.origins.received import DetectorConnection

# scheme (what precedes "://" or ":") -> (module, class or factory); it takes (address, options).
ORIGINS: dict[str, tuple[str, str]] = {
    "synthetic": ("stream_node.origins.synthetic", "open_synthetic"),
    "file": ("stream_node.origins.replay", "ReplayOrigin"),
    "udp": ("stream_node.origins.udp", "UdpOrigin"),
    "dectris": ("stream_node.origins.dectris", "DectrisOrigin"),
    "dectris2": ("stream_node.origins.stream2", "Stream2Origin"),
    "karabo": ("stream_node.origins.karabo", "KaraboOrigin"),
}
# Spoken over a ZeroMQ transport: named `SCHEME+tcp://` (or +ipc).
OVER_ZMQ = frozenset({"dectris", "dectris2", "karabo"})


def known_origins() -> str:
    """The endpoint forms a user may write, for error messages."""
    return ", ".join("synthetic:" if s == "synthetic" else f"{s}+tcp://" if s in OVER_ZMQ
                     else f"{s}://" for s in sorted(ORIGINS))


def origin_scheme(endpoint: str) -> str | None:
    """`dectris+tcp://h:1` -> "dectris"; None when the endpoint names no known origin."""
    scheme, sep, _ = endpoint.partition("://")
    if not sep:
        scheme, sep, _ = endpoint.partition(":")
    scheme = scheme.split("+", 1)[0]
    return scheme if sep and scheme in ORIGINS else None


def _address(endpoint: str) -> tuple[str, str]:
    """(scheme, what the origin's class gets) for a known origin's endpoint."""
    scheme = origin_scheme(endpoint)
    if scheme is None:
        raise ConfigError(f"unknown frame origin {endpoint!r}: use one of {known_origins()}")
    head, sep, rest = endpoint.partition("://")
    if not sep:
        rest = endpoint.partition(":")[2]
    elif "+" in head:
        rest = f"{head.split('+', 1)[1]}://{rest}"
    return scheme, rest


SERIES = frozenset({"dectris", "dectris2"})  # detectors that push series a serving node waits for


def series_origin(endpoint: str) -> bool:
    """Whether runs of this origin begin when the detector sends a series (else on command)."""
    return origin_scheme(endpoint) in SERIES


def detector_connection(endpoint: str) -> DetectorConnection:
    """A serving node's connection to a detector that pushes series, kept between them."""
    from stream_node.origins.received import DetectorConnection

    scheme, address = _address(endpoint)
    if scheme not in SERIES:
        raise ConfigError(f"{endpoint}: only {', '.join(sorted(SERIES))} detectors push the "
                          "series a serving node waits for")
    return DetectorConnection(address)


def open_origin(endpoint: str, options: OriginOptions) -> Origin:
    """The origin an endpoint names: `synthetic:`, `file://PATH`, `SCHEME://ADDRESS`, or
    `PROTOCOL+TRANSPORT://ADDRESS` (a protocol spoken over a ZeroMQ transport, e.g.
    `dectris+tcp://host:9999`; the origin gets `tcp://host:9999`)."""
    scheme, rest = _address(endpoint)
    module, name = ORIGINS[scheme]
    return getattr(importlib.import_module(module), name)(rest, options)
