"""Detector protocols: each module turns one foreign stream into stream-node frames and metadata.

Endpoints name the protocol before the ZeroMQ transport, and `stream-node source --from` takes them:

    dectris+tcp://HOST:9999     DECTRIS SIMPLON stream v1 (JSON multipart, PULL)
    dectris2+tcp://HOST:31001   DECTRIS stream v2 (CBOR, PULL)
    karabo+tcp://HOST:4545      European XFEL karabo-bridge (msgpack multipart; REQ "next",
                                PULL or SUB: `?pattern=req|pull|sub`)

Query options after the address apply to every protocol: `?timeout=S` (how long the detector may
stay silent, default the source's `--origin-timeout`), `?verify=header|structure|full` (how the
source checks a compressed blob: its header, the workers then walk its blocks (default); its
block structure itself; or by decompressing it), `?decompress=1` (compressed frames
become raw pixels at the source instead of passing through), and per protocol those its module
documents (DECTRIS v1: `?verify_hash=1`).
Importing this package registers the schemes (see `stream_node.origins.open_origin`); a module's
own dependencies (cbor2 for stream2) are imported only when its scheme is used.
"""

from __future__ import annotations

from stream_node.origins import Origin, OriginOptions, register_origin


def _dectris(address: str, options: OriginOptions) -> Origin:
    from stream_node.protocols.dectris import DectrisOrigin

    return DectrisOrigin(address, options)


def _dectris2(address: str, options: OriginOptions) -> Origin:
    from stream_node.protocols.stream2 import Stream2Origin

    return Stream2Origin(address, options)


def _karabo(address: str, options: OriginOptions) -> Origin:
    from stream_node.protocols.karabo import KaraboOrigin

    return KaraboOrigin(address, options)


register_origin("dectris", _dectris)
register_origin("dectris2", _dectris2)
register_origin("karabo", _karabo)
