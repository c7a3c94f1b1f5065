"""Endpoints in a topology: what a string names, where a peer connects to reach it, and whether
an endpoint on one host reaches what a stage binds on another. Pure functions: no socket opened."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WILDCARDS = {"*", "0.0.0.0", "::", ""}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TCP = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/\[\]]*):(?P<port>[^:/]+)$")
RING_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def nth_bind(value: Any, i: int) -> Any:
    """What worker i of a group binds for a served endpoint: port + i, or the ipc path + .i."""
    if isinstance(value, int):
        return value + i
    if str(value).startswith("tcp://"):
        head, _, port = str(value).rpartition(":")
        return f"{head}:{int(port) + i}"
    return f"{value}.{i}" if i else value


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # tcp, ipc, ring
    host: str  # tcp only
    port: int  # tcp only
    path: str  # ipc path or ring name


def parse_endpoint(text: str, schemes: Sequence[str], binds: bool) -> Endpoint:
    """Raises ValueError saying what is wrong with `text` as a `schemes` endpoint."""
    scheme, sep, rest = str(text).partition("://")
    expect = " or ".join(f"{s}://" + {"tcp": "HOST:PORT", "ipc": "PATH", "ring": "NAME"}[s]
                         for s in schemes)
    if not sep or scheme not in schemes:
        raise ValueError(f"{text!r} is not an endpoint here: expected {expect}")
    if scheme == "tcp":
        match = TCP.match(str(text))
        if not match or not match["port"].isdigit() or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{text!r}: expected tcp://HOST:PORT with a port 1-65535")
        host = match["host"].strip("[]")
        if host in WILDCARDS and not binds:
            raise ValueError(f"{text!r}: a connecting endpoint needs a host, not {host or '*'!r}")
        return Endpoint("tcp", host, int(match["port"]), "")
    if scheme == "ring" and not RING_NAME.match(rest):
        raise ValueError(f"{text!r}: a ring name is letters, digits, '.', '_', '-'")
    if not rest:
        raise ValueError(f"{text!r}: the {scheme}:// endpoint has no path")
    return Endpoint(scheme, "", 0, rest)


# Per role and endpoint flag: the schemes it takes and whether the stage binds it.
ENDPOINT_FLAGS = {
    ("source", "control"): (("tcp", "ipc"), True),
    ("source", "data"): (("tcp", "ipc", "ring"), True),
    ("worker", "control"): (("tcp", "ipc"), False),
    ("worker", "input"): (("tcp", "ipc", "ring"), False),
    ("worker", "output"): (("tcp", "ipc"), False),
    ("collector", "control"): (("tcp", "ipc"), False),
    ("collector", "input"): (("tcp", "ipc"), True),
    **{(role, "status"): (("tcp", "ipc"), True) for role in ("source", "worker", "collector")},
    ("collector", "tap"): (("tcp", "ipc"), True),
    ("view", "input"): (("tcp", "ipc"), False),
}


def connect_address(endpoint: str, host: str) -> str:
    """Where a peer connects to reach `endpoint` bound on `host` (`*` becomes the host)."""
    ep = parse_endpoint(endpoint, ("tcp", "ipc", "ring"), True)
    if ep.scheme == "tcp" and ep.host in WILDCARDS:
        return f"tcp://{host}:{ep.port}"
    return endpoint


def reaches(endpoint: str, from_host: str, bound: str, bound_host: str) -> bool:
    """Does connecting to `endpoint` from `from_host` reach `bound`, bound on `bound_host`?"""
    try:
        a = parse_endpoint(endpoint, ("tcp", "ipc", "ring"), False)
        b = parse_endpoint(bound, ("tcp", "ipc", "ring"), True)
    except ValueError:
        return False
    if a.scheme != b.scheme:
        return False
    if a.scheme != "tcp":  # ipc paths and ring names exist on one host only
        return a.path == b.path and from_host == bound_host
    if a.port != b.port:
        return False
    if a.host in LOOPBACK:
        return from_host == bound_host and (b.host in WILDCARDS or b.host in LOOPBACK)
    return a.host == b.host or (b.host in WILDCARDS and a.host == bound_host)


def why_unreached(endpoint: str, host: str, bound: str, bound_host: str) -> str:
    """A hint for an endpoint that does not reach what is bound, when the reason is clear."""
    if host != bound_host and not endpoint.startswith("tcp"):
        return "; ring:// and ipc:// work within one host, tcp:// between hosts"
    if host != bound_host and any(f"//{a}:" in bound for a in LOOPBACK):
        return "; it binds loopback only: bind * or an address others reach"
    return ""
