"""End-to-end benchmark: stream-node's pipeline against the one a user would write by hand.

Both pipelines move the SAME synthetic frames (``SyntheticDetector(shape, dtype, seed=0)``)
from one source through W worker processes to one HDF5 collector, on this host, and both output
files are checked afterwards (frame count, and a sample of frames byte-equal to
``SyntheticDetector.frame(i)``), so a fast number can never come from a pipeline that dropped or
mangled frames.

The naive side is deliberately what a scientist writes with plain ``multiprocessing`` + pyzmq +
h5py: ``tobytes()`` and ``copy=True`` everywhere, PUSH/PULL over tcp on 127.0.0.1,
``dset[i] = frame`` into a dataset chunked one frame per chunk. It is not a straw man: there are no
sleeps, start-up is synchronised (nothing is sent before every peer has bound), nothing is lost,
and it is timed the same way as stream-node (first frame sent -> output file closed).

Usage::

    python bench/e2e.py                      # quick: 300 frames of 512x1024 uint16, 2 workers
    python bench/e2e.py --full               # 2000 frames, 1, 2 and 3 workers
    python bench/e2e.py --frames 500 --shape 256x512 --workers 1,2
    python bench/e2e.py --only naive         # skip stream-node (e.g. while it is being written)
    python bench/e2e.py --naive-transport both --repeat 3   # naive over tcp and ipc, medians
    python bench/e2e.py --durable            # each run timed until its bytes are on disk

The exit status is 0 only when every pipeline that ran wrote every frame correctly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq

from _common import reap  # bench/ is on sys.path when run as a script
from stream_node.origins.synthetic import SyntheticDetector

QUICK_FRAMES = 300
FULL_FRAMES = 2000
DEFAULT_SHAPE = (512, 1024)
DEFAULT_DTYPE = "uint16"
QUICK_WORKERS = (2,)
FULL_WORKERS = (1, 2, 3)

# A wedged pipeline must fail the bench, not hang it: every wait below is bounded by these.
STARTUP_TIMEOUT_S = 60.0
IDLE_TIMEOUT_S = 30.0  # the naive collector gives up after this long without a frame
JOIN_TIMEOUT_S = 10.0

# Frames checked byte for byte in each output file (plus a few chosen at random, seeded).
SAMPLE_RANDOM = 4

# Copies of a whole frame per frame in the naive pipeline, whatever W is (each frame crosses
# exactly one worker). Generating the frame (SyntheticDetector.frame) is not counted, as it is the
# same for both pipelines. Kernel copies are counted because shared memory avoids them: a socket hop
# costs one copy into the socket buffer and one out of it (libzmq reads large messages straight
# into the message buffer, so it adds none), and the HDF5 file write costs one into the page cache.
# (where, copies, in the kernel?)
NAIVE_COPIES: tuple[tuple[str, int, bool], ...] = (
    ("source: frame.tobytes()", 1, False),
    ("source: send copy=True (bytes -> zmq msg)", 1, False),
    ("hop 1: socket copy in + out", 2, True),
    ("worker: recv copy=True (zmq msg -> bytes)", 1, False),
    ("worker: send copy=True (array -> zmq msg)", 1, False),
    ("hop 2: socket copy in + out", 2, True),
    ("collector: recv copy=True (zmq msg -> bytes)", 1, False),
    ("collector: dset[i] = frame (into HDF5 chunk cache)", 1, False),
    ("collector: HDF5 write() into the page cache", 1, True),
)
NAIVE_COPIES_PER_FRAME = sum(n for _, n, _ in NAIVE_COPIES)
NAIVE_KERNEL_COPIES = sum(n for _, n, kernel in NAIVE_COPIES if kernel)


@dataclass
class RunResult:
    """One pipeline run, reduced to what the table needs, whichever pipeline produced it."""

    pipeline: str
    workers: int
    frames: int
    frame_nbytes: int
    frames_written: int = 0
    missing: int = 0
    seconds: float = float("nan")
    copies_per_frame: str = "?"
    verified: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    gain: bool = False  # the frames were gain-corrected: float32 keV, checked against numpy

    @property
    def ok(self) -> bool:
        return self.error is None and self.verified and self.missing == 0

    @property
    def frames_per_s(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else float("nan")

    @property
    def gb_per_s(self) -> float:
        """Uncompressed payload rate (10^9 B/s), so a compressing pipeline is not flattered."""
        return self.frames_per_s * self.frame_nbytes / 1e9


# --------------------------------------------------------------------------------------------
# stream-node side
# --------------------------------------------------------------------------------------------


def run_stream_node(
    output: Path, frames: int, shape: tuple[int, int], dtype: str, workers: int,
    fanin: str = "ring", direct: bool = False, compression: str = "none",
    name: str = "stream-node", gain: bool = False,
) -> RunResult:
    """Run stream-node's local demo pipeline: the one place that knows its API, easy to adapt.

    Contract: ``stream_node.deploy.demo.run_local_pipeline(...)`` returns an object with
    ``frames_written``, ``missing``, ``bytes_written``, ``seconds`` (first frame sent -> file
    closed) and optionally ``copies_per_frame``.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    result = RunResult(name, workers, frames, nbytes, gain=gain)  # direct: `workers` loop
    try:
        from stream_node.deploy.demo import run_local_pipeline  # may not exist yet
    except ImportError as exc:
        result.error = f"not available: {exc}"
        return result
    summary = run_local_pipeline(
        output=output, frames=frames, shape=shape, dtype=dtype,
        workers=0 if direct else workers, overwrite=True, fanin=fanin, compression=compression,
        kernels=[gain_spec(output.parent.parent, shape)] if gain else None,
    )
    result.frames_written = int(summary.frames_written)
    result.missing = int(summary.missing)
    result.seconds = float(summary.seconds)
    copies = getattr(summary, "copies_per_frame", None)
    result.copies_per_frame = "?" if copies is None else str(copies)
    bytes_written = getattr(summary, "bytes_written", None)
    if bytes_written is not None and result.frames_written:
        ratio = bytes_written / (result.frames_written * nbytes)
        if abs(ratio - 1.0) > 0.01:
            result.notes.append(f"bytes_written is {ratio:.2f}x the raw payload")
    return result


def run_limit(
    output: Path, frames: int, shape: tuple[int, int], dtype: str, workers: int
) -> RunResult:
    """The one copy no pipeline avoids: the same frames written with h5py's
    ``write_direct_chunk`` into a fresh file chunked one frame per chunk (as stream-node's).
    Only HDF5's calls are timed (opening, every write, closing); each frame is made just
    before its write, untimed. Made all beforehand, 200 frames of 8 MiB held 1.6 GB of fresh
    memory, and on this VM the page cache then took the writes 5-10x slower than with the
    little memory a pipeline holds: the row measured the allocation, not the write."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    result = RunResult("limit: write_direct_chunk", workers, frames, nbytes)
    detector = SyntheticDetector(shape, dtype, seed=0)
    t0 = time.perf_counter()
    with h5py.File(output, "w", libver=("v110", "v110")) as f:
        dset = f.create_dataset("data", (frames, *shape), dtype, chunks=(1, *shape))
        made = 0.0
        for i in range(frames):
            t = time.perf_counter()
            frame = detector.frame(i)
            made += time.perf_counter() - t
            # A memoryview, as the collector passes: h5py is several times slower given the
            # ndarray itself (8 MiB frames here).
            dset.id.write_direct_chunk((i, 0, 0), memoryview(frame))
    result.seconds = time.perf_counter() - t0 - made
    result.frames_written = frames
    result.copies_per_frame = "0 + 1 kernel"
    return result


# --------------------------------------------------------------------------------------------
# JUNGFRAU gain correction: the same maps for both pipelines
# --------------------------------------------------------------------------------------------


def gain_maps(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pedestal and gain maps (3, ny, nx) float32 for the three gain stages, fixed seed."""
    rng = np.random.default_rng(7)
    pedestal = rng.uniform(900, 1100, (3, *shape)).astype(np.float32)
    gain = np.stack([rng.uniform(35, 45, shape), rng.uniform(-1.6, -1.4, shape),
                     rng.uniform(-0.12, -0.1, shape)]).astype(np.float32)
    return pedestal, gain


def gain_spec(tmp: Path, shape: tuple[int, int]) -> dict[str, Any]:
    """The stream-node kernel spec, its maps saved once under `tmp` as .npy files."""
    ped, gain = tmp / f"pedestal-{shape[0]}x{shape[1]}.npy", tmp / f"gain-{shape[0]}x{shape[1]}.npy"
    if not ped.exists():
        pedestal, gains = gain_maps(shape)
        np.save(ped, pedestal)
        np.save(gain, gains)
    return {"kernel": "gain_correction", "pedestal": str(ped), "gain": str(gain)}


def corrected(frame: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What both pipelines must write for a frame: the numpy reference's keV."""
    from stream_node.kernels.reference import gain_correction

    out = np.empty(frame.shape, np.float32)
    gain_correction(frame, out, maps[0], maps[1], None, float("nan"))
    return out


# --------------------------------------------------------------------------------------------
# naive side: plain multiprocessing + pyzmq + h5py, as a user would write it
# --------------------------------------------------------------------------------------------
# Topology: collector binds PULL; each worker binds its own PULL and connects PUSH to the
# collector; the source connects PUSH to every worker. Every connect happens after the peer has
# bound (the endpoints travel through a queue), and a connecting PUSH gets its pipe at connect(),
# so frames queue instead of being lost or all going to the first worker whose connection is up:
# that ordering is the ready handshake, with no sleeps.


def _bind(sock: zmq.Socket, transport: str, ipc_dir: str, name: str) -> str:
    """Bind to a free tcp port on loopback, or to an ipc path; the endpoint peers connect to."""
    if transport == "tcp":
        return f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    endpoint = f"ipc://{ipc_dir}/{name}"
    sock.bind(endpoint)
    return endpoint


@contextlib.contextmanager
def _child_zmq(role: str, results: Any = None) -> Iterator[zmq.Context]:
    """A naive child's zmq context, closed with its sockets (each at its own linger) however the
    child ends. With `results`, a failure's traceback goes to the parent first, so that the run
    fails at once with the cause rather than on a timeout."""
    ctx = zmq.Context()
    try:
        yield ctx
    except BaseException:
        if results is not None:
            results.put((f"{role}-error", traceback.format_exc()))
        raise
    finally:
        ctx.destroy()


def _naive_collector(
    path: str,
    frames: int,
    shape: tuple[int, int],
    dtype: str,
    transport: str,
    ports: Any,
    results: Any,
    stop: Any,
    gain: bool = False,
) -> None:
    """PULL every frame and write it at its index; stop after `frames` frames, when idle too long
    (frames were lost: the shortfall is reported as missing) or when the parent gives up.
    `gain`: float32 frames, into a dataset compressed with the bitshuffle/LZ4 filter."""
    with _child_zmq("collector", results) as ctx:
        sock = ctx.socket(zmq.PULL)
        sock.linger = 0
        endpoint = _bind(sock, transport, str(Path(path).parent), "collector")
        seen = np.zeros(frames, dtype=bool)
        received = 0
        if gain:
            import hdf5plugin

            dtype, options = "float32", hdf5plugin.Bitshuffle(cname="lz4")
        else:
            options = {}
        with h5py.File(path, "w") as f:
            dset = f.create_dataset("data", shape=(frames, *shape), dtype=dtype, chunks=(1, *shape),
                                    **options)
            ports.put(("collector", endpoint))
            last = time.monotonic()
            while received < frames and not stop.is_set():
                if not sock.poll(100):
                    if time.monotonic() - last > IDLE_TIMEOUT_S:
                        break
                    continue
                last = time.monotonic()
                id_bytes, payload = sock.recv_multipart(copy=True)
                frame_id = int.from_bytes(id_bytes, "little")
                dset[frame_id] = np.frombuffer(payload, dtype=dtype).reshape(shape)
                if not seen[frame_id]:
                    seen[frame_id] = True
                    received += 1
        closed = time.monotonic()  # file closed: the end of the timed span
        results.put(("collector", received, frames - received, closed))


def _naive_worker(
    collector: str,
    shape: tuple[int, int],
    dtype: str,
    transport: str,
    ipc_dir: str,
    index: int,
    ports: Any,
    stop: Any,
    gain: bool = False,
) -> None:
    """Forward frames PULL -> PUSH with copy=True: the hop a real pipeline's kernels sit in.
    `gain`: each frame gain-corrected in numpy on the way (float32 keV)."""
    maps = gain_maps(shape) if gain else None
    with _child_zmq("worker") as ctx:
        pull = ctx.socket(zmq.PULL)
        push = ctx.socket(zmq.PUSH)
        pull.linger = 0
        push.linger = int(JOIN_TIMEOUT_S * 1000)
        endpoint = _bind(pull, transport, ipc_dir, f"worker-{index}")
        push.connect(collector)
        ports.put(("worker", endpoint))
        # PUSH round-robin cannot broadcast an end marker, so the parent says stop by event.
        while not stop.is_set():
            if not pull.poll(100):
                continue
            id_bytes, payload = pull.recv_multipart(copy=True)
            frame = np.frombuffer(payload, dtype=dtype).reshape(shape)
            if maps is not None:
                frame = corrected(frame, maps)
            push.send_multipart([id_bytes, frame], copy=True)


def _naive_source(
    worker_endpoints: list[str],
    frames: int,
    shape: tuple[int, int],
    dtype: str,
    results: Any,
) -> None:
    """Generate frames and PUSH them round-robin to the workers; report when the first was sent."""
    with _child_zmq("source", results) as ctx:
        push = ctx.socket(zmq.PUSH)
        push.linger = int(IDLE_TIMEOUT_S * 1000)  # let queued frames drain before exit, bounded
        detector = SyntheticDetector(shape, dtype, seed=0)
        for endpoint in worker_endpoints:
            push.connect(endpoint)
        started = time.monotonic()
        for frame_id in range(frames):
            frame = detector.frame(frame_id)
            push.send_multipart([frame_id.to_bytes(8, "little"), frame.tobytes()], copy=True)
        results.put(("source", started))


def _expect(
    queue: Any, kinds: set[str], timeout: float, procs: Sequence[SpawnProcess]
) -> tuple[Any, ...]:
    """Next message of one of `kinds`; a child's traceback, death or a timeout raises instead.

    Waits in short slices so a child that died without reporting (killed, or failed before its
    error handler) fails the run at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = queue.get(timeout=0.2)
            break
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"{dead[0].name} died, exit code {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {sorted(kinds)} message within {timeout:.0f} s") from None
    if message[0].endswith("-error"):  # the full traceback is on stderr already
        raise RuntimeError(f"{message[0]}: {message[1].strip().splitlines()[-1]}")
    if message[0] not in kinds:
        raise RuntimeError(f"expected {sorted(kinds)}, got {message[0]!r}")
    return message


def run_naive(
    output: Path,
    frames: int,
    shape: tuple[int, int],
    dtype: str,
    workers: int,
    transport: str = "tcp",
    gain: bool = False,
) -> RunResult:
    """Run the hand-written pipeline; every process started here is joined or killed on exit."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    user = NAIVE_COPIES_PER_FRAME - NAIVE_KERNEL_COPIES
    copies = f"{user} + {NAIVE_KERNEL_COPIES} kernel"
    name = ("naive" if transport == "tcp" else f"naive-{transport}") + (
        ", numpy gain correction + bslz4" if gain else "")
    result = RunResult(name, workers, frames, nbytes, copies_per_frame=copies, gain=gain)
    ipc_dir = str(output.parent)
    # spawn, not fork: stream-node's run in this same parent may leave zmq/io threads behind.
    ctx: SpawnContext = mp.get_context("spawn")
    ports = ctx.Queue()
    results = ctx.Queue()
    stop = ctx.Event()
    procs: list[SpawnProcess] = []

    def start(target: Callable[..., None], *args: Any, name: str) -> None:
        proc = ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        procs.append(proc)

    try:
        start(
            _naive_collector,
            str(output),
            frames,
            shape,
            dtype,
            transport,
            ports,
            results,
            stop,
            gain,
            name="naive-collector",
        )
        collector = _expect(ports, {"collector"}, STARTUP_TIMEOUT_S, procs)[1]
        for i in range(workers):
            args = (collector, shape, dtype, transport, ipc_dir, i, ports, stop, gain)
            start(_naive_worker, *args, name=f"naive-worker-{i}")
        endpoints = [
            _expect(ports, {"worker"}, STARTUP_TIMEOUT_S, procs)[1] for _ in range(workers)
        ]
        start(_naive_source, endpoints, frames, shape, dtype, results, name="naive-source")

        # The source reports when it finished sending, the collector when its file is closed;
        # either may come first. time.monotonic is one system-wide clock on Linux.
        budget = STARTUP_TIMEOUT_S + IDLE_TIMEOUT_S + frames * 0.1
        messages = {}
        for _ in range(2):
            msg = _expect(results, {"source", "collector"}, budget, procs)
            messages[msg[0]] = msg
        started = messages["source"][1]
        _, received, missing, closed = messages["collector"]
        result.frames_written, result.missing = received, missing
        result.seconds = closed - started
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        reap(*procs, join_s=JOIN_TIMEOUT_S, term_s=JOIN_TIMEOUT_S)
        for proc in procs:
            if proc.exitcode not in (0, None) and result.error is None:
                result.error = f"{proc.name} exited with code {proc.exitcode}"
        for q in (ports, results):
            q.close()
            q.join_thread()
    return result


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def _find_frames_dataset(h5file: Any, shape: tuple[int, int]) -> Any:
    """The frames dataset: NeXus path first (stream-node), then ``data`` (naive), else any match."""
    for name in ("entry/data/data", "data"):
        if name in h5file and isinstance(h5file[name], h5py.Dataset):
            return h5file[name]
    found: list[Any] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3 and tuple(obj.shape[1:]) == shape:
            found.append(obj)

    h5file.visititems(visit)
    if not found:
        raise LookupError(f"no dataset of (n, {shape[0]}, {shape[1]}) frames in {h5file.filename}")
    return found[0]


def verify(result: RunResult, path: Path, shape: tuple[int, int], dtype: str) -> None:
    """Check the file holds every frame and that sampled frames are byte-equal to the source's."""
    if result.error is not None:
        return
    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401 - registers bitshuffle/LZ4 if stream-node compresses
    n = result.frames
    if result.frames_written != n or result.missing:
        result.error = f"wrote {result.frames_written} of {n} frames, {result.missing} missing"
        return
    detector = SyntheticDetector(shape, dtype, seed=0)
    maps = gain_maps(shape) if result.gain else None
    rng = np.random.default_rng(12345)
    sample = sorted({0, 1, n // 2, n - 2, n - 1, *rng.integers(0, n, SAMPLE_RANDOM).tolist()})
    sample = [i for i in sample if 0 <= i < n]
    try:
        with h5py.File(path, "r") as f:
            dset = _find_frames_dataset(f, shape)
            if dset.shape[0] != n:
                result.error = f"dataset {dset.name} has {dset.shape[0]} frames, expected {n}"
                return
            # One chunk per frame: a frame never written leaves no chunk (reads as fill value).
            if dset.chunks is not None and dset.chunks[0] == 1 and not dset.is_virtual:
                chunks = dset.id.get_num_chunks()
                if chunks != n:
                    result.error = f"dataset {dset.name} holds {chunks} chunks, expected {n}"
                    return
            for i in sample:
                got = dset[i]
                want = detector.frame(i)
                if maps is not None:  # the Numba kernel computes what numpy does, bit for bit
                    want = corrected(want, maps)
                if got.dtype != want.dtype or got.tobytes() != want.tobytes():
                    result.error = f"frame {i} differs from SyntheticDetector.frame({i})"
                    return
    except Exception as exc:
        result.error = f"verify failed: {type(exc).__name__}: {exc}"
        return
    result.verified = True
    result.notes.append(f"verified {len(sample)} frames byte-equal")


# --------------------------------------------------------------------------------------------
# driver and table
# --------------------------------------------------------------------------------------------


def median_run(runs: Sequence[RunResult]) -> RunResult:
    """The median run by time, noting the spread; any failed run makes the row fail."""
    failed = [r for r in runs if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.seconds)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(runs) > 1:
        rates = [r.frames_per_s for r in ordered]
        chosen.notes.append(
            f"median of {len(runs)} runs, {min(rates):,.0f}-{max(rates):,.0f} frames/s"
        )
    return chosen


def _fmt(value: float, spec: str) -> str:
    return "—" if not np.isfinite(value) else format(value, spec)


def print_table(results: Sequence[RunResult], baseline: str = "naive") -> None:
    """Markdown table; ratio is this row's frames/s over the baseline's, same workers and frames."""
    # A gain-corrected row is compared with the naive pipeline doing the same correction.
    naive = {(r.workers, r.frames, r.gain): r for r in results
             if r.pipeline.startswith(baseline) and r.ok}
    limit = {(r.workers, r.frames, False): r for r in results
             if r.pipeline.startswith("limit") and r.ok}
    print("| pipeline | workers | frames | MiB/frame | copies/frame | frames/s | GB/s "
          "| vs naive | vs limit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if r.error is not None:
            print(
                f"| {r.pipeline} | {r.workers} | {r.frames} | {r.frame_nbytes / 2**20:.2f} "
                f"| {r.copies_per_frame} | — | — | — | — |"
            )
            continue
        key = (r.workers, r.frames, r.gain)
        ratios = [r.frames_per_s / b.frames_per_s if b is not None else float("nan")
                  for b in (naive.get(key), limit.get(key))]
        print(
            f"| {r.pipeline} | {r.workers} | {r.frames} | {r.frame_nbytes / 2**20:.2f} "
            f"| {r.copies_per_frame} | {_fmt(r.frames_per_s, ',.0f')} "
            f"| {_fmt(r.gb_per_s, '.2f')} | {_fmt(ratios[0], '.2f')} | {_fmt(ratios[1], '.2f')} |"
        )
    print()
    breakdown = ", ".join(f"{what} {n}{' (kernel)' * kernel}" for what, n, kernel in NAIVE_COPIES)
    print(f"naive copies/frame = {NAIVE_COPIES_PER_FRAME}: {breakdown}.")
    print("stream-node copies/frame: as reported by its summary ('?' when it reports none).")
    print(f"vs naive = frames/s of the row / frames/s of {baseline} (the same workers where "
          "it has them; a gain-correction row: of the naive one correcting in numpy); vs "
          "limit = / the limit row (the same frames written with write_direct_chunk from "
          "memory). Every run starts after os.sync() and, as root, with the page cache "
          "dropped.")
    print("GB/s = uncompressed payload, 10^9 B/s; time = first frame sent -> output file closed.")
    for r in results:
        status = "ok" if r.ok else f"FAILED: {r.error}"
        extra = f" ({'; '.join(r.notes)})" if r.notes else ""
        print(f"- {r.pipeline}, {r.workers} worker(s): {status}{extra}")


def parse_shape(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024)."""
    try:
        ny, nx = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 512x1024, got {text!r}") from None
    if ny < 1 or nx < 1:
        raise argparse.ArgumentTypeError("shape dimensions must be positive")
    return ny, nx


def parse_workers(text: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        msg = f"workers must look like 2 or 1,2,3, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be >= 1")
    return counts


def warm_up(tmp: Path, frames: int, shape: tuple[int, int], dtype: str) -> None:
    """One untimed write of a run's size, deleted and synced: the first large writer on a
    fresh file system pays for allocating its blocks, which no row should."""
    path = tmp / "warm-up.h5"
    run_limit(path, frames, shape, dtype, 0)
    path.unlink()
    os.sync()


def settle(wait_s: float) -> None:
    """Each run starts from the same memory state: dirty pages written back, (as root) the
    clean ones dropped, then `wait_s` for the host to take back what was freed.

    This VM reports the guest's free memory to its host (virtio-balloon free page reporting,
    2 s after a free), which then drops it: the next write into the page cache faults each
    such page in from the host. A run that started within those 2 s of the last run's file
    being deleted wrote into pages still held, and went 3-5x faster than one that did not
    (8 MiB frames, raw write_direct_chunk: 213-530 frames/s at once, 98-137 after 4 s, the same
    loop). So without the wait every row, the limit row too, swung between the two, run after
    run; with it, every row writes into memory the host has to give back, as a run long after
    the last one does."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    if wait_s > 0:
        time.sleep(wait_s)  # not a synchronisation: the host's reclaim has no event to wait on


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full", action="store_true", help=f"{FULL_FRAMES} frames with {FULL_WORKERS} workers"
    )
    parser.add_argument("--frames", type=int, help=f"frames per run (quick: {QUICK_FRAMES})")
    parser.add_argument("--shape", type=parse_shape, default=DEFAULT_SHAPE, help="NYxNX")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE)
    parser.add_argument("--workers", type=parse_workers, help="worker counts, e.g. 1,2,3")
    parser.add_argument("--only", choices=("naive", "stream-node"), help="run one pipeline only")
    parser.add_argument(
        "--naive-transport",
        choices=("tcp", "ipc", "both"),
        default="tcp",
        help="links of the naive pipeline (tcp as a user would; ipc to match stream-node's demo)",
    )
    parser.add_argument("--rows", default=None, metavar="TEXT",
                        help="only the rows whose name holds TEXT (comma: any of several), "
                             "the first (naive) row always")
    parser.add_argument("--dir", type=Path, help="where the temporary output directory goes")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per row, interleaved; the median is shown"
    )
    parser.add_argument(
        "--gain", action="store_true",
        help="the JUNGFRAU gain-correction rows too: numpy in the naive workers (its collector "
             "compressing with the bitshuffle filter), Numba + bslz4 in stream-node's")
    parser.add_argument(
        "--settle-s", type=float, default=4.0,
        help="seconds to wait after dropping the page cache before each run, so that the host "
             "has taken back the memory the last run freed (see settle(); 0: no wait)")
    parser.add_argument(
        "--durable", action="store_true",
        help="count each run until its bytes are on disk (an os.sync() after it, timed): "
             "every row then pays the disk, not whatever the page cache still held")
    args = parser.parse_args(argv)
    # Ctrl-C and kill both unwind through the finally blocks that end the child processes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)

    frames = args.frames or (FULL_FRAMES if args.full else QUICK_FRAMES)
    if frames < 2:
        parser.error("--frames must be >= 2")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    workers_list = args.workers or (FULL_WORKERS if args.full else QUICK_WORKERS)
    shape: tuple[int, int] = args.shape
    dtype: str = np.dtype(args.dtype).name
    transports = ("tcp", "ipc") if args.naive_transport == "both" else (args.naive_transport,)
    pipelines: list[tuple[str, Callable[..., RunResult]]] = []
    if args.only != "stream-node":
        pipelines += [
            ("naive" if t == "tcp" else f"naive-{t}", functools.partial(run_naive, transport=t))
            for t in transports
        ]
    if args.only != "naive":
        pipelines.append(("limit", run_limit))
        for fanin in ("ipc", "ring"):
            for comp in ("none", "bslz4"):
                name = f"stream-node {fanin} fan-in" + (", bslz4" if comp != "none" else "")
                pipelines.append((name, functools.partial(
                    run_stream_node, fanin=fanin, compression=comp, name=name)))
        pipelines.append(("stream-node no workers (source -> ring -> collector)",
                          functools.partial(run_stream_node, direct=True,
                                            name="stream-node no workers")))
    if args.gain:
        gain_rows: list[tuple[str, Callable[..., RunResult]]] = []
        if args.only != "stream-node":
            gain_rows.append(("naive, numpy gain correction + bslz4",
                              functools.partial(run_naive, transport=transports[0], gain=True)))
        if args.only != "naive":
            for fanin in ("ipc", "ring"):
                name = f"stream-node {fanin} fan-in, gain correction + bslz4"
                gain_rows.append((name, functools.partial(
                    run_stream_node, fanin=fanin, compression="bslz4", name=name, gain=True)))
        pipelines += gain_rows

    if args.rows:
        wanted = args.rows.split(",")
        pipelines = pipelines[:1] + [(n, r) for n, r in pipelines[1:]
                                     if any(w in n for w in wanted)]
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    print(
        f"# e2e: {frames} frames of {shape[0]}x{shape[1]} {dtype} ({nbytes / 2**20:.2f} MiB), "
        f"workers {list(workers_list)}, {os.cpu_count()} CPUs, "
        # Other work on a small host skews every figure; the load average makes that visible.
        f"load {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}, "
        f"{args.settle_s:g} s settling before each run\n",
        flush=True,
    )
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="stream-node-e2e-", dir=args.dir) as tmp:
        warm_up(Path(tmp), frames, shape, dtype)
        for workers in workers_list:
            runs: dict[str, list[RunResult]] = {name: [] for name, _ in pipelines}
            # Interleaved (naive, stream-node, naive, ...) so drift on a shared host hits both.
            for rep in range(args.repeat):
                # Rotated each round: on a VM the first large writer after a deleted file and a
                # sync can be several times slower, so no row may always follow the same one.
                shift = rep % len(pipelines)
                for name, run in pipelines[shift:] + pipelines[:shift]:
                    run_dir = Path(tmp) / f"{name}-w{workers}-r{rep}"
                    run_dir.mkdir()
                    path = run_dir / "run.h5"
                    print(
                        f"running {name} with {workers} worker(s), run {rep + 1}/{args.repeat}",
                        file=sys.stderr,
                        flush=True,
                    )
                    settle(args.settle_s)
                    try:
                        result = run(path, frames, shape, dtype, workers)
                    except Exception as exc:
                        msg = f"{type(exc).__name__}: {exc}"
                        result = RunResult(name, workers, frames, nbytes, error=msg)
                    if args.durable and result.error is None:
                        t0 = time.perf_counter()
                        os.sync()
                        result.seconds += time.perf_counter() - t0
                    verify(result, path, shape, dtype)
                    runs[name].append(result)
                    shutil.rmtree(run_dir)  # disk holds one run's output at a time
            results.extend(median_run(r) for r in runs.values())
    print_table(results, baseline=pipelines[0][0])
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
