"""A run across three hosts, as on a beamline: three network namespaces (detector, compute,
storage) joined by veth pairs on a bridge, each running `stream-node run TOPOLOGY --node NAME`
exactly as a user would on that host. The file must hold every frame once, the ledger nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from stream_node import read_run
from stream_node.model.errors import ExitCode
from stream_node.origins.synthetic import SyntheticDetector

NODES = ("detector", "compute", "storage")
FRAMES = 300
SHAPE = (256, 256)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def why_no_namespaces() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"sn-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def hosts() -> Iterator[dict[str, tuple[str, str]]]:
    """Three namespaces on one bridge: node name -> (namespace, address). Names carry a random
    suffix and the subnet is random, so parallel runs never meet; all is deleted afterwards,
    every process left in a namespace included."""
    reason = why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    net = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250) + 1}"
    bridge = f"snb{tag}"
    made: dict[str, tuple[str, str]] = {}
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "up")
        for i, node in enumerate(NODES):
            ns, outer, inner = f"sn-{node}-{tag}", f"snv{i}{tag}", f"snp{i}{tag}"
            ip("netns", "add", ns)
            made[node] = (ns, f"{net}.{i + 1}")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{net}.{i + 1}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
        yield made
    finally:
        for ns, _ in made.values():
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                os.kill(int(pid), 9)  # only processes this test started live in them
            ip("netns", "del", ns, check=False)  # takes its veth end, and so the pair
        ip("link", "del", bridge, check=False)
        leftovers = [n for n in ip("netns", "list").stdout.split() if tag in n]
        assert not leftovers, f"namespaces left behind: {leftovers}"


def topology(path: Path, hosts: dict[str, tuple[str, str]], out: Path) -> Path:
    path.write_text(textwrap.dedent(f"""\
        name = "beamline"

        [defaults]
        ready_timeout = 60
        peer_timeout = 5

        [nodes.detector]
        host = "{hosts["detector"][1]}"

        [nodes.detector.source]
        control = "tcp://*:5550"
        data = "tcp://*:5551"
        frames = {FRAMES}
        shape = {list(SHAPE)}

        [nodes.compute]
        host = "{hosts["compute"][1]}"

        [nodes.compute.workers]
        count = 2

        [nodes.storage]
        host = "{hosts["storage"][1]}"

        [nodes.storage.collector]
        input = "tcp://*:5552"
        file = "{out}/{{run}}.h5"
        """))
    return path


@pytest.mark.timeout(240)
def test_a_topology_runs_across_three_hosts(hosts, tmp_path):
    topo = topology(tmp_path / "beamline.toml", hosts, tmp_path / "data")
    check = subprocess.run([sys.executable, "-m", "stream_node", "check", str(topo)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    procs = {}
    try:
        for node in reversed(NODES):  # any order works; storage first as on a beamline
            ns = hosts[node][0]
            procs[node] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "stream_node", "run",
                 str(topo), "--node", node],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        results = {node: proc.communicate(timeout=180) for node, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for node, proc in procs.items():
        assert proc.returncode == ExitCode.OK, f"{node}:\n{results[node][1][-4000:]}"
    out = results["detector"][0]
    assert f"{FRAMES} written of {FRAMES} sent" in out and "missing    0" in out, out
    # The workers really ran on the compute host and reached the others over the bridge:
    compute_log = results["compute"][1]
    assert f"--control tcp://{hosts['detector'][1]}:5550" in compute_log
    assert f"--output tcp://{hosts['storage'][1]}:5552" in compute_log
    path = tmp_path / "data" / "beamline.h5"
    run = read_run(path)
    assert run.missing == {} and run.received.all() and len(run.frames) == FRAMES
    assert sorted(run.frame_ids.tolist()) == list(range(FRAMES))
    with h5py.File(path) as f:  # both workers of the compute host took frames
        assert set(np.unique(f["entry/frames/worker"][()]).tolist()) == {0, 1}
    detector = SyntheticDetector(SHAPE, "uint16", 0)
    for i in range(0, FRAMES, 37):
        assert np.array_equal(run.frames[i], detector.frame(i))
