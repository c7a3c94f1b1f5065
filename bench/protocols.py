"""Detector protocols: ingest rate of each origin against raw pyzmq, and compressed pass-through
through real stream-node processes against the same pipeline decompressing and recompressing.

    python bench/protocols.py            # quick (about a minute)
    python bench/protocols.py --full     # more frames and repeats (a few minutes)
    python bench/protocols.py --only ingest   # or --only pipeline

Ingest: a sender process pushes prebuilt messages (4 MiB uint16 frames: raw, and bitshuffle/LZ4
of Poisson counts) over tcp loopback, once per trial, and times the trial itself: from the
receiver's handshake to the receiver's "done" after the series' last message. The baseline
receiver does `recv_multipart(copy=False)` of every message and nothing else; the origin connects,
parses, checks (bslz4: the chunk header; the workers walk the block structure, see the
pipeline table) and hands each frame to an output that takes it at once. Trials
alternate baseline / origin (so drift hits both alike); the table shows the median of
each and the median of the per-pair ratios. Floor: origin >= 0.9x baseline. The receiving
process's CPU time per frame (user + system, from getrusage) is shown for both: on this 2-core
host the sender and both sides' ZeroMQ I/O threads share the cores, so a trial's rate swings
by up to 2x with scheduling and with how the allocator serves ZeroMQ's message buffers (page
faults: most of the system time; the bench applies `stream_node.stages.allocator`'s settings,
as every node does, to both), while the CPU figure shows what the origin itself adds.

Pipeline: a sender process, `stream-node source --from dectris+tcp://...`, one worker (no
kernels) and a collector writing the HDF5 file, all real processes, as a user starts them; the
source hands frames to the worker by the shared-memory ring (one host's hop), then by ipc. The
sender queues the whole series before the run starts, so the run's own rate (the source's summary:
frames written over the time from the first frame taken to the collector's last write) is the
pipeline's. Pass-through: the detector's bs16-lz4 chunks go to the file as they came. Recompress:
the same detector and pipeline with the origin decompressing (`?decompress=1`) and the worker
compressing again (`--compress bslz4`). Runs alternate between the two; the table shows each
one's median. GB/s counts uncompressed bytes. Floor: >= 3x.

The detector compresses with bitshuffle's default block (8 KiB: 4096 uint16 pixels), as
hdf5plugin and bitshuffle do unless told otherwise; the tests' senders use 1024-pixel blocks,
which make the block-structure check walk 4x as many blocks (about 40 us instead of 10 a frame).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import zmq
from zmq.utils.monitor import recv_monitor_message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import protocol_senders as ps
from stream_node.origins import open_origin
from stream_node.origins.base import OriginOptions
from stream_node.stages.allocator import keep_message_buffers

SHAPE = (1024, 2048)  # 4 MiB of uint16
DISTINCT = 8  # distinct frames per series (cycled): real content, bounded build time
CASES = [("dectris", "bs16-lz4<"), ("dectris", "<"), ("stream2", "bslz4"), ("stream2", "none"),
         ("karabo", "2.2"), ("karabo", "1.0")]
SCHEME = {"dectris": "dectris", "stream2": "dectris2", "karabo": "karabo"}


# -- the sender (its own process) ---------------------------------------------------------------

def build(protocol: str, encoding: str, frames: int) -> tuple[list, list, list]:
    """(messages before the frames, one message per frame, messages after) of one series."""
    a = argparse.Namespace(shape=SHAPE, dtype="uint16", frames=frames, encoding=encoding,
                           detail="basic", series=1, seed=1, fault="none", fault_frame=-1,
                           karabo_version=encoding)
    pixels = [ps.frame(i, SHAPE, "uint16") for i in range(DISTINCT)]
    if protocol == "dectris":
        blobs = [ps.dectris_blob(a, i) for i in range(DISTINCT)]
        body = [ps.dectris_image(a, 1, i, blobs[i % DISTINCT]) for i in range(frames)]
        return ([ps.dectris_header(a, 1)], body,
                [[ps._jsonb({"htype": "dseries_end-1.0", "series": 1})]])
    if protocol == "stream2":
        body = [[ps.stream2_image(a, i, pixels[i % DISTINCT])] for i in range(frames)]
        return [[ps.stream2_start(a)]], body, [[ps.stream2_message({"type": "end",
                                                                     "series_id": 1})]]
    return [], [ps.karabo_message(a, i, pixels[i % DISTINCT]) for i in range(frames)], []


def detector_blocks() -> None:
    """Compress as a detector does by default: bitshuffle's own block size (8 KiB of data),
    not the tests' smaller one (which makes the block-structure check walk 4x more blocks)."""
    ps.SEND_BLOCK = 8192 // 2


def serve(protocol: str, encoding: str, frames: int) -> None:
    """Send the series once per "go" from the control socket, and answer each trial's "done"
    with the seconds from the receiver's handshake to its "done"."""
    detector_blocks()
    head, body, end = build(protocol, encoding, frames)
    ctx = zmq.Context()
    data, ctl = ctx.socket(zmq.PUSH), ctx.socket(zmq.PAIR)
    data.setsockopt(zmq.SNDHWM, 0)  # queue the whole series: the sender never waits on itself
    monitor = data.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    ports = data.bind_to_random_port("tcp://127.0.0.1"), ctl.bind_to_random_port("tcp://127.0.0.1")
    print("PORTS", *ports, flush=True)
    while ctl.recv() == b"go":
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        t0 = time.perf_counter()
        for msg in (*head, *body, *end):
            data.send_multipart(msg, copy=False)
        assert ctl.recv() == b"done"
        seconds = time.perf_counter() - t0
        # The next trial starts once this receiver is gone: PUSH would deal messages to both.
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        ctl.send_string(repr(seconds))
    ctx.destroy(linger=0)


# -- ingest ---------------------------------------------------------------------------------------

class TakeAll:
    """An output that takes every frame at once: the ingest path alone is measured."""

    def put(self, header: object, payload: object, timeout_ms: int) -> bool:
        return True

    def end(self) -> None:
        pass


class NoControl:
    def poll(self) -> None:
        pass

    def stalled(self, stall: object) -> None:
        pass

    stopping = False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sender:
    """The sender process of one case, and the trials run against it."""

    def __init__(self, protocol: str, encoding: str, frames: int) -> None:
        self.protocol, self.frames = protocol, frames
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", protocol, encoding,
                                      str(frames)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "PORTS", "the sender did not start"
        self.endpoint = f"tcp://127.0.0.1:{line[1]}"
        self.ctl = zmq.Context.instance().socket(zmq.PAIR)
        self.ctl.connect(f"tcp://127.0.0.1:{line[2]}")
        self.messages = frames + (0 if protocol == "karabo" else 2)  # + header and end

    def trial(self, mode: str) -> tuple[float, float]:
        """(seconds for one series received by `mode`, "pyzmq" or "origin"; CPU seconds, user
        and system, this receiving process spent on it)."""
        cpu0 = _cpu_seconds()
        self.ctl.send(b"go")
        if mode == "pyzmq":
            pull = zmq.Context.instance().socket(zmq.PULL)
            pull.connect(self.endpoint)
            for _ in range(self.messages):
                pull.recv_multipart(copy=False)
            pull.close(linger=0)
        else:
            query = f"&pattern=pull&trains={self.frames}" if self.protocol == "karabo" else ""
            origin = open_origin(f"{SCHEME[self.protocol]}+{self.endpoint}?timeout=10{query}",
                                 OriginOptions(frames=self.frames))
            done = origin.emit(TakeAll(), 1, NoControl())
            origin.close()
            assert done.sent == self.frames and not done.missing, done
        cpu = _cpu_seconds() - cpu0
        self.ctl.send(b"done")
        return float(self.ctl.recv_string()), cpu

    def close(self) -> None:
        self.ctl.send(b"quit")
        self.ctl.close(linger=0)
        self.proc.wait(10)


def ingest(protocol: str, encoding: str, frames: int, pairs: int) -> dict[str, float]:
    """Rates (frames/s) of the baseline and the origin, and the ratio: the median of the
    pairs' ratios, with the lowest and highest; and each one's median receiving-process CPU
    time per frame (us, user + system)."""
    sender = Sender(protocol, encoding, frames)
    try:
        sender.trial("pyzmq"), sender.trial("origin")  # warm: imports, caches, allocator
        base, mine = [], []
        for _ in range(pairs):
            base.append(sender.trial("pyzmq"))
            mine.append(sender.trial("origin"))
    finally:
        sender.close()
    detector_blocks()
    _, body, _ = build(protocol, encoding, 1)
    ratios = [b / m for (b, _), (m, _) in zip(base, mine, strict=True)]
    return {"base": frames / statistics.median(t for t, _ in base),
            "origin": frames / statistics.median(t for t, _ in mine),
            "ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
            "cpu_base": statistics.median(c for _, c in base) / frames * 1e6,
            "cpu_origin": statistics.median(c for _, c in mine) / frames * 1e6,
            "wire": sum(memoryview(p).nbytes for p in body[0])}


def md5_cost_us(encoding: str) -> float:
    detector_blocks()
    a = argparse.Namespace(shape=SHAPE, dtype="uint16", encoding=encoding, seed=1)
    blob = ps.dectris_blob(a, 0)
    t0 = time.perf_counter()
    for _ in range(20):
        hashlib.md5(blob).hexdigest()
    return (time.perf_counter() - t0) / 20 * 1e6


# -- pass-through through real processes -----------------------------------------------------------

RATE = re.compile(r"rate\s+(\d+) frames/s")


def pipeline(frames: int, recompress: bool, tmp: Path, fanout: str) -> float:
    """frames/s of one run: sender -> source -> 1 worker -> collector -> file, the source
    handing frames to the worker by `fanout` ("ring" or "ipc")."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve-once", str(frames)],
                            stdout=subprocess.PIPE, text=True)
    node = [sys.executable, "-m", "stream_node"]
    ctl, fan, fin = (f"ipc://{tmp}/{n}" for n in ("control", "fanout", "fanin"))
    if fanout == "ring":
        fan = f"ring://bench-protocols-{os.getpid()}"
    path = tmp / f"run{int(recompress)}.h5"
    # Each run starts with no dirty page cache left by the ones before (they wrote ~1 GB each,
    # and the file of each is deleted once checked): otherwise a run's rate is the rate at which
    # this VM's disk takes the backlog of earlier runs, not the pipeline's.
    os.sync()
    others: list[subprocess.Popen] = []
    try:
        endpoint = proc.stdout.readline().split()[1]
        query = "?timeout=10" + ("&decompress=1" if recompress else "")
        roles = [
            [*node, "collector", "--control", ctl, "--input", fin, "--file", str(path)],
            [*node, "worker", "--control", ctl, "--input", fan, "--output", fin, "--name", "w0",
             "--index", "0"],
        ]
        others = [subprocess.Popen(r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for r in roles]
        source = subprocess.run(
            [*node, "source", "--control", ctl, "--data", fan, "--workers", "1",
             "--from", f"dectris+{endpoint}{query}", "--frames", str(frames),
             *(["--compress", "bslz4"] if recompress else [])],
            capture_output=True, text=True, timeout=300)
        for p in others:
            p.wait(60)
        rate = RATE.search(source.stdout)
        assert source.returncode == 0 and rate, source.stdout + source.stderr[-2000:]
        if not recompress:  # the file holds the detector's own bytes
            detector_blocks()
            a = argparse.Namespace(shape=SHAPE, dtype="uint16", encoding="bs16-lz4<", seed=1)
            with h5py.File(path, "r") as f:
                for i in (0, frames - 1):
                    chunk = f["entry/data/data"].id.read_direct_chunk((i, 0, 0))[1]
                    assert chunk == ps.dectris_blob(a, i % DISTINCT), f"chunk {i} differs"
        return float(rate.group(1))
    finally:
        for p in (proc, *others):
            p.kill()
            p.wait()
        path.unlink(missing_ok=True)  # its dirty pages go with it, never written back


def serve_once(frames: int) -> None:
    """The DECTRIS detector of the pipeline table: one bs16-lz4 series, then exit."""
    detector_blocks()
    head, body, end = build("dectris", "bs16-lz4<", frames)
    ctx = zmq.Context()
    data = ctx.socket(zmq.PUSH)
    data.setsockopt(zmq.SNDHWM, 0)
    print("ENDPOINT", f"tcp://127.0.0.1:{data.bind_to_random_port('tcp://127.0.0.1')}",
          flush=True)
    for msg in (*head, *body, *end):
        data.send_multipart(msg, copy=False)
    data.close(linger=-1)  # until the source has taken everything (the bench then kills us)
    ctx.term()


# -- the tables -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="more frames and repeats")
    p.add_argument("--only", choices=["ingest", "pipeline"])
    p.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--serve-once", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # Receivers here run with the malloc settings every stream-node node applies (see
    # stream_node.stages.allocator): without them a trial's rate depends on whether glibc happens to
    # fault each message's pages in again, for the raw pyzmq baseline and the origin alike.
    keep_message_buffers()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return 0
    if args.serve_once:
        serve_once(args.serve_once)
        return 0
    # frames per raw series (4 MiB messages); bslz4 series have 8x (quick) or 4x as many, so
    # every series lasts about 0.3 s: an origin's set-up per series (connect, series header:
    # about 5 ms, paid once per run in real use) stays a few percent of it. The sender holds
    # one series in memory (up to 2 GB).
    frames, pairs, more = (512, 15, 4) if args.full else (256, 9, 8)
    ok = True
    print(f"{os.cpu_count()} CPUs; frames of {SHAPE[0]}x{SHAPE[1]} uint16 (4 MiB), "
          "tcp loopback")
    if args.only != "pipeline":
        print(f"\nIngest: {frames} raw or {more * frames} bslz4 frames per series, {pairs} "
              "interleaved pairs of series, medians\n")
        print("| protocol | payload | MB per frame | raw pyzmq frames/s | GB/s | origin frames/s "
              "| GB/s | ratio | pairs' range | receiver CPU us/frame (pyzmq / origin) | floor |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
        for protocol, encoding in CASES:
            n = frames * (more if encoding in ("bs16-lz4<", "bslz4") else 1)
            r = ingest(protocol, encoding, n, pairs)
            good = r["ratio"] >= 0.9
            ok &= good
            print(f"| {protocol} | {encoding} | {r['wire'] / 1e6:.2f} | {r['base']:.0f} | "
                  f"{r['base'] * r['wire'] / 1e9:.2f} | {r['origin']:.0f} | "
                  f"{r['origin'] * r['wire'] / 1e9:.2f} | {r['ratio']:.2f}x | "
                  f"{r['low']:.2f}-{r['high']:.2f} | "
                  f"{r['cpu_base']:.0f} / {r['cpu_origin']:.0f} | "
                  f"{'ok' if good else 'BELOW'} >= 0.9x |", flush=True)
        print(f"\nmd5 of one frame's blob (DECTRIS `?verify_hash=1`): bs16-lz4 "
              f"{md5_cost_us('bs16-lz4<'):.0f} us, raw {md5_cost_us('<'):.0f} us")
    if args.only != "ingest":
        runs, n = (3, 4000) if args.full else (3, 1500)
        print(f"\nPipeline (DECTRIS bs16-lz4 detector -> source -> 1 worker -> collector -> "
              f"HDF5), {n} frames, median of {runs} run(s); source -> worker by the shared-"
              "memory ring (as on one host) and by ipc\n")
        print("| source -> worker | path | frames/s | GB/s (uncompressed) | ratio | floor |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
        nbytes = SHAPE[0] * SHAPE[1] * 2
        for fanout in ("ring", "ipc"):
            with tempfile.TemporaryDirectory() as tmp:
                rates: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(runs):  # interleaved, so drift hits both alike
                    for recompress in (True, False):
                        rates[recompress].append(pipeline(n, recompress, Path(tmp), fanout))
            slow, fast = statistics.median(rates[True]), statistics.median(rates[False])
            ratio = fast / slow
            ok &= ratio >= 3
            print(f"| {fanout} | decompress at the source + recompress in the worker | "
                  f"{slow:.0f} | {slow * nbytes / 1e9:.2f} | 1.00x | |")
            print(f"| {fanout} | pass-through (chunks written as they came) | {fast:.0f} | "
                  f"{fast * nbytes / 1e9:.2f} | {ratio:.1f}x | "
                  f"{'ok' if ratio >= 3 else 'BELOW'} >= 3x |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
