"""Asking nodes for their status: every node at once, each answer by one deadline.

`query_status` returns by its deadline whatever answered, so one dead node never hides the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import zmq


def query_status(endpoints: Iterable[str], timeout_s: float = 2.0,
                 ctx: zmq.Context | None = None) -> dict[str, dict[str, Any]]:
    """Ask every node at once; by `timeout_s` return each endpoint's status.

    A node that did not answer in time maps to `{"error": "no answer within ..."}`, so the
    caller prints what it has and names what it lacks; nothing here waits longer than the
    deadline, dead peers included (every socket closes with linger 0).
    """
    ctx = ctx or zmq.Context.instance()
    endpoints = list(dict.fromkeys(endpoints))
    results: dict[str, dict[str, Any]] = {}
    socks: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    try:
        for endpoint in endpoints:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(endpoint)
                # The empty delimiter makes the reply envelope the same as a REQ client's.
                sock.send_multipart([b"", b'{"request": "status"}'], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                sock.close()
                results[endpoint] = {"error": f"cannot ask {endpoint!r}: {exc.strerror}"}
                continue
            socks[sock] = endpoint
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while len(results) < len(endpoints):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                endpoint = socks[sock]
                *_, reply = sock.recv_multipart()
                try:
                    results[endpoint] = json.loads(reply)
                except ValueError:
                    results[endpoint] = {"error": "the answer is not JSON"}
                poller.unregister(sock)
    finally:
        for sock in socks:
            sock.close(linger=0)
    for endpoint in endpoints:
        results.setdefault(endpoint, {"error": f"no answer within {timeout_s:g} s "
                                               "(node not running, or unreachable)"})
    return {endpoint: results[endpoint] for endpoint in endpoints}
