"""Bounded memory (seed Problem 2): a stalled consumer never makes a node grow past the bound it
prints at start."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import finish, wait_run_started
from stream_node import ExitCode, LinkLimits, read_run

MiB = 1 << 20
FRAME = 512 * 1024 * 2


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.timeout(120)
def test_a_stalled_collector_keeps_source_and_worker_within_their_bounds(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    control, fanout, fanin = ipc("control"), ipc("fanout"), ipc("fanin")
    timing = ("--peer-timeout", "30", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "3", *timing)
    worker = node("worker", "--control", control, "--input", fanout, "--output", fanin, *timing)
    source = node("source", "--control", control, "--data", fanout, "--frames", "400",
                  "--shape", "512x1024", *timing)
    wait_run_started(source)
    collector.send_signal(signal.SIGSTOP)  # the consumer stalls; nothing drains the pipeline
    base = {p.pid: rss(p.pid) for p in (source, worker)}
    peak = dict(base)
    for _ in range(20):  # 2 s of samples: long enough for every queue to fill up
        for pid in peak:
            peak[pid] = max(peak[pid], rss(pid))
        time.sleep(0.1)
    bound = LinkLimits().bound_bytes(FRAME)  # what each node prints for one link
    margin = 32 * MiB  # allocator slack; the frames queued in user space are inside the bound
    assert peak[source.pid] - base[source.pid] <= bound + margin, peak[source.pid] / MiB
    assert peak[worker.pid] - base[worker.pid] <= 2 * bound + margin, peak[worker.pid] / MiB
    # Resumed, the run completes. A process frozen longer than the ZMTP heartbeat timeout looks
    # dead to its peers, which drop the connection and the frames queued on it: those frames
    # are in the missing record, so the ledger still holds.
    collector.send_signal(signal.SIGCONT)
    code, _, err = finish(source, timeout=90)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), err
    run = read_run(path)
    assert int(run.received.sum()) + len(run.missing) == 400
