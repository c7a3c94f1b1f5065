"""Fixtures that start real processes and always end them, and endpoints that never collide."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest


def free_tcp_endpoint() -> str:
    """A loopback endpoint on a port the kernel just handed out (nothing else is bound to it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Endpoints:
    def __init__(self, tmp_path, transport: str) -> None:
        self.tmp_path = tmp_path
        self.transport = transport

    def __call__(self, name: str) -> str:
        if self.transport == "ring" and name == "fanout":
            return f"ring://t{os.getpid()}-{self.tmp_path.name}"
        if self.transport == "tcp":
            return free_tcp_endpoint()
        return f"ipc://{self.tmp_path}/{name}"


@pytest.fixture(params=["ipc", "tcp", "ring"])
def endpoints(request, tmp_path) -> Endpoints:
    return Endpoints(tmp_path, request.param)


@pytest.fixture
def ipc(tmp_path) -> Endpoints:
    return Endpoints(tmp_path, "ipc")


@pytest.fixture
def node() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python -m stream_node ARGS...` as a real process; every one is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str, preexec_fn: Callable[[], None] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """`prefix`: run it under a wrapper, e.g. ("ip", "netns", "exec", NS) on another host."""
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "stream_node", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=preexec_fn,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    """Wait for a node to exit by itself; its output for the assertion message. A node that
    does not exit in time is a hang: it is killed and what it printed is in the failure."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, proc.args[3:6]))} hung for {timeout} s; "
                             f"its stderr ends:\n{err[-4000:]}") from None
    return proc.returncode, out, err


def wait_run_started(source: subprocess.Popen) -> None:
    """Block until the source logs that every peer is READY (a handshake, not a delay)."""
    for line in source.stderr:
        if "the collector ready" in line:
            return
    raise AssertionError("the source exited before the run started")


def wait_written(status: str, n: int, timeout_s: float = 30) -> None:
    """Block until the collector answering on `status` has written `n` frames (each question
    waits for its answer: a poll with a deadline, not a delay)."""
    import time

    from stream_node import query_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if query_status([status], timeout_s=0.5)[status].get("frames", 0) >= n:
            return
    raise AssertionError(f"the collector did not reach {n} frames in {timeout_s} s")


@pytest.fixture
def ctx():
    """A ZeroMQ context of the test's own, destroyed (linger 0) at teardown."""
    import zmq

    context = zmq.Context()
    yield context
    context.destroy(linger=0)
