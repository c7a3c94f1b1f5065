"""A network partition between hosts mid-run: two network namespaces joined by a veth pair, the
worker host's link cut while it holds frames. No process hangs, the ledger is exact, and in
reliable mode the frames the cut-off worker held reach the file through the other worker."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import numpy as np
import pytest

from conftest import finish, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run
from test_multihost import ip, why_no_namespaces

SHAPE = (64, 128)
FRAMES = 800
SLOW = '[{"kernel": "python:stream_node.kernels.examples.delay", "seconds": 0.004}]'


@pytest.fixture
def two_hosts() -> Iterator[dict[str, tuple[str, str, str]]]:
    """name -> (namespace, address, link): "main" (source, collector, a worker) and "remote"
    (a worker); deleted afterwards with every process left in them."""
    reason = why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    net = f"10.{secrets.randbelow(50) + 150}.{secrets.randbelow(250) + 1}"
    hosts = {"main": (f"sn-main-{tag}", f"{net}.1", f"snm{tag}"),
             "remote": (f"sn-remote-{tag}", f"{net}.2", f"snr{tag}")}
    made = []
    try:
        for ns, _, _ in hosts.values():
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        (a_ns, _a_addr, a_link), (b_ns, _b_addr, b_link) = hosts.values()
        ip("link", "add", a_link, "netns", a_ns, "type", "veth", "peer", "name", b_link,
           "netns", b_ns)
        for ns, addr, link in hosts.values():
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", link)
            ip("-n", ns, "link", "set", link, "up")
        yield hosts
    finally:
        for ns in made:
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                os.kill(int(pid), 9)
            ip("netns", "del", ns, check=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reliable", [False, True], ids=["default", "reliable"])
def test_a_partition_cuts_off_a_worker_host_mid_run(node, tmp_path, two_hosts, reliable):
    (main_ns, main_addr, _), (remote_ns, _, remote_link) = two_hosts.values()
    on_main, on_remote = ("ip", "netns", "exec", main_ns), ("ip", "netns", "exec", remote_ns)
    control, data, fanin = (f"tcp://{main_addr}:{port}" for port in (5550, 5551, 5552))
    status = f"ipc://{tmp_path}/status"  # a socket file: reachable from the test's namespace
    path = tmp_path / "run.h5"
    chain = tmp_path / "chain.json"
    chain.write_text(SLOW)
    timing = ("--peer-timeout", "1", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "4", "--status", status, *timing, prefix=on_main)
    cut_off = node("worker", "--control", control, "--input", data, "--output", fanin,
                   "--name", "remote", "--index", "0", *timing, prefix=on_remote)
    node("worker", "--control", control, "--input", data, "--output", fanin,
         "--name", "local", "--index", "1", *timing, prefix=on_main)
    source = node("source", "--control", control, "--data", data, "--workers", "2",
                  "--frames", str(FRAMES), "--shape", "x".join(map(str, SHAPE)),
                  "--kernels", str(chain), *(["--reliable"] if reliable else []), *timing,
                  prefix=on_main)
    wait_run_started(source)
    wait_written(status, 100)
    ip("-n", remote_ns, "link", "set", remote_link, "down")  # the partition

    code, _out, err = finish(source, timeout=90)
    expected = (ExitCode.OK,) if reliable else (ExitCode.OK, ExitCode.FRAMES_MISSING)
    assert code in expected, err
    # The cut-off worker hears nothing more from the source: it ends by itself, named.
    code, _, err = finish(cut_off, timeout=30)
    assert code == ExitCode.PEER_TIMEOUT, err
    assert "silent" in err
    assert finish(collector)[0] in (ExitCode.OK, ExitCode.FRAMES_MISSING)

    run = read_run(path)
    written = set(np.flatnonzero(run.received).tolist())
    assert written | set(run.missing) == set(range(FRAMES))
    assert not written & set(run.missing)
    det = SyntheticDetector(SHAPE, "uint16")
    for i in sorted(written):
        assert run.frames[i].tobytes() == det.frame(i).tobytes()
    assert run.counters["reports"]["workers"]["remote"] == {"error": "no final report"}
    if reliable:
        assert run.missing == {}
    else:
        assert all("worker remote ended without a final report" in reason
                   for reason in run.missing.values())
