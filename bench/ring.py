"""Shared-memory hand-off benchmark: stream-node's `Ring` against what else a Python user has.

Every row moves frames from a producer (this process) to a consumer in ANOTHER process (spawned,
so nothing is inherited by fork), for frames of 64 B, 1 MiB and 8 MiB, in one run so the numbers
are comparable:

* ``memcpy``: ``np.copyto`` of one frame in one process, no hand-off: no transport can move a
  frame faster than writing it once. Twice: into ONE destination, which stays in cache (the
  ceiling, and the reference of the "GB/s vs memcpy" ratio), and over S destinations in turn (the
  working set of a transport that cycles through S slots: for 1 MiB / 8 MiB frames that no longer
  fits in cache, which costs about half the bandwidth). shm + mp.Queue cycles through its S
  slots (a FIFO of free indices); the Ring's producer takes the slot freed last, then the lowest
  free one, so a Ring whose consumer keeps up touches only a few slots.
* ``stream-node Ring``: the producer claims a slot, writes the frame once into it (one
  ``np.copyto`` from a prepared source array for 1 MiB / 8 MiB; for 64 B only the 96-byte header
  and the 8-byte counter), publishes it; the consumer batch-acquires (64 or 1 at a time) and reads
  in place. Both handles keep the default wait: spin up to 20 us, then sleep on a futex.
* ``stream-node Ring, busy-poll``: the same, but both handles call ``set_spin(0.5)``: claim and
  acquire spin up to 0.5 s before sleeping, which for these passes is busy-polling, as iceoryx2's
  consumer does; its latency is the one to compare with iceoryx2's. It costs a whole core per
  waiting side.
* ``shm + mp.Queue``: the naive multiprocessing version: one ``SharedMemory`` block of S slots,
  the producer takes a free slot index from a free ``mp.Queue``, copies the frame into it and puts
  the index on a full ``mp.Queue``; the consumer reads the slot and puts the index back.
* ``faster-fifo`` and ``iceoryx2`` (PyPI shared-memory IPC libraries), when they import; else a row
  says why not. faster-fifo is given its best case: raw bytes, no pickling (identity
  ``dumps``/``loads``), the frame put straight from a prepared ctypes buffer; it still copies each
  frame into its shared circular buffer and out again into the consumer's buffer. iceoryx2 is
  zero-copy like the Ring (loan a sample, write into it, send); its pub/sub has no blocking
  receive, so the consumer busy-polls ``receive()`` (best case for its latency).

The "waits" column says how each row's sides wait for each other: ``futex (20 µs spin)`` (the
Ring's default), ``busy-poll`` (spins, a core per waiting side, the lowest latency), ``blocking``
(sleeps in the kernel until woken: a pipe and lock for mp.Queue, a shared condition variable for
faster-fifo).

What the consumer does with each frame, the same in every row: it reads the frame's first 8 bytes
(the producer's frame counter, checked to arrive in order, or the latency stamp); for 1 MiB and
8 MiB frames it also sums the WHOLE frame with ``np.add.reduce`` on a uint64 view, so every byte
really crosses to the consumer's core (the bandwidth case).

Each row has two passes over the same transport (so both run on warm, already faulted-in
memory). First 2*S+8 warm-up frames, then a latency pass paced at 5k frames/s (large frames at
one per 10 cold-memcpy times, a few hundred/s) so queueing does not dominate: the producer writes
``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock in every process) into the first 8
payload bytes just before it publishes, after the payload copy; the consumer takes
``perf_counter_ns()`` when its acquire/get returns, and the difference is the hop latency. Then
the throughput passes: the producer sends as fast as it can for a fixed time, timed from the
producer's first write to the consumer's last processed frame. GB/s is frames x frame bytes /
that time / 1e9; hand-offs/s is frames / that time; the median pass is reported (this runs on
shared 2-core machines: one pass disturbed by another process must not make the number), the
note gives the slowest and fastest. Passes end with an in-band marker frame, and
a row fails (exit status 1) unless every frame of the throughput pass arrived, in order.

"copies/frame" counts how many times the frame's bytes are written between the producer's source
and what the consumer reads.

Usage::

    python bench/ring.py             # quick (default): 3 throughput passes of 0.25 s per row
    python bench/ring.py --full      # 5 passes of 1 s, 5x the latency samples
    python bench/ring.py --only ring # only rows whose name contains "ring" (memcpy always runs)
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Protocol

import numpy as np

from _common import bench_parser, reap  # bench/ is on sys.path when run as a script
from _format import fmt, fmt_rate, md_table
from stream_node.links.ring import Ring
from stream_node.model.errors import EndOfStream
from stream_node.model.frame import frame_header

SIZES: tuple[tuple[str, int, int], ...] = (
    # (label, frame bytes, slots S): many small slots so batches fill; few large ones, like a DAQ.
    ("64 B", 64, 256),
    ("1 MiB", 1 << 20, 16),
    ("8 MiB", 8 << 20, 8),
)
SMALL_BATCH = 64  # the Ring's BATCH_MAX
LARGE_THRESHOLD = 4096  # frames at least this big are summed whole by the consumer

# In-band markers in a frame's first 8 bytes; counters and perf_counter_ns stamps never reach them.
END = (1 << 64) - 1
WARM = (1 << 64) - 2
# `value` arguments of the producers' send(): the first 8 bytes of each frame get...
STAMP = -1  # ... perf_counter_ns() at publish
COUNTER = -2  # ... the frame's number in its pass (0, 1, 2, ...)

TIMEOUT_S = 20.0  # no wait is unbounded: a dead peer fails the row, it does not hang the bench
TIMEOUT_NS = int(TIMEOUT_S * 1e9)
START_TIMEOUT_S = 60.0  # a spawned consumer imports numpy and friends on 2 busy cores
SMALL_LAT_INTERVAL_NS = 200_000  # 5k frames/s
PACE_SPIN_NS = 60_000  # the paced producer sleeps until this close to its next frame, then spins
MEMCPY_HOT = "memcpy, 1 dst"
MEMCPY_COLD = "memcpy, S dsts"
MPQ = "shm + mp.Queue"
BUSY_SPIN_S = 0.5  # set_spin of the busy-poll Ring rows: longer than any wait in a pass
BUSY_POLL_MAX = 1 << 20  # busy-poll Ring rows for frames up to this size (64 B and 1 MiB)


@dataclass(frozen=True)
class Mode:
    """Run lengths: quick keeps the whole bench under a minute on a 2-core machine."""

    tp_seconds: float  # per throughput pass
    tp_passes: int  # the median pass is reported: one disturbed pass does not make the number
    lat_frames_small: int
    lat_frames_large: int


QUICK = Mode(tp_seconds=0.25, tp_passes=3, lat_frames_small=2000, lat_frames_large=150)
FULL = Mode(tp_seconds=1.0, tp_passes=5, lat_frames_small=10000, lat_frames_large=1000)


@dataclass
class Row:
    """One line of the table; `ok` is False when frames went missing or arrived out of order."""

    case: str
    size_label: str
    size: int
    batch: str
    copies: str
    waits: str = "—"  # how the sides wait for each other: futex (20 µs spin), busy-poll, blocking
    frames: int = 0
    seconds: float = 0.0
    p50_us: float = math.nan
    p99_us: float = math.nan
    ok: bool = True
    note: str = ""
    rates: tuple[float, ...] = ()  # hand-offs/s of every throughput pass, for the spread

    @property
    def gbps(self) -> float:
        return self.frames * self.size / self.seconds / 1e9 if self.seconds > 0 else math.nan

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.nan

    def take_median(self, passes: list[tuple[int, float]]) -> None:
        """Report the median pass (by rate) of `passes` [(frames, seconds)], keep all rates."""
        passes = sorted(passes, key=lambda fs: fs[0] / fs[1])
        self.frames, self.seconds = passes[len(passes) // 2]
        self.rates = tuple(f / sec for f, sec in passes)

    @property
    def spread(self) -> str:
        if len(self.rates) < 2:
            return ""
        return f"{len(self.rates)} passes {fmt_rate(self.rates[0])} to {fmt_rate(self.rates[-1])}/s"


# -- consumer side (runs in the spawned process) -------------------------------------------------


class Tally:
    """Per-pass consumer bookkeeping, shared by every transport so all pay the same per-frame cost.

    `frame` returns True at the pass's END marker.
    """

    def __init__(self, phase: str, lat_cap: int) -> None:
        self.phase = phase
        self.lat = np.zeros(lat_cap if phase == "lat" else 0, np.int64)
        self.n_lat = 0
        self.expected = 0
        self.bad = 0
        self.t_last = 0

    def frame(self, head: int, full: np.ndarray | None, now: int) -> bool:
        if full is not None:
            np.add.reduce(full)  # the bandwidth case: read every byte of the frame in place
        if head == END:
            return True
        if self.phase == "lat":
            if head != WARM and self.n_lat < self.lat.size:
                self.lat[self.n_lat] = now - head
                self.n_lat += 1
        else:
            if head != self.expected:
                self.bad += 1
            self.expected += 1
        return False

    def report(self) -> dict[str, Any]:
        if self.phase == "lat":
            return {"lat": self.lat[: self.n_lat].copy()}
        return {"frames": self.expected, "bad": self.bad, "t_last": self.t_last}


class Source(Protocol):
    """A consumer's end of one transport: runs one pass into `tally`."""

    def run_pass(self, tally: Tally) -> None: ...


class RingSource:
    """Batch acquire through the Ring's fast path, read in place, release_n.

    `spin` (seconds), when given, is the consumer handle's set_spin: how long acquire busy-polls
    before it sleeps on the futex (None: the default, 20 us).
    """

    def __init__(self, name: str, size: int, batch: int, spin: float | None = None) -> None:
        self.ring = Ring.attach(name)
        if spin is not None:
            self.ring.set_spin(spin)
        self.c = self.ring.consumer("workers")
        self.batch = batch
        n_slots = self.ring._h.n_slots
        self.heads = [self.ring.payload(k)[:8].view(np.uint64) for k in range(n_slots)]
        self.fulls: list[np.ndarray] | None = None
        if size >= LARGE_THRESHOLD:
            self.fulls = [self.ring.payload(k)[:size].view(np.uint64) for k in range(n_slots)]

    def run_pass(self, tally: Tally) -> None:
        c, h, heads, fulls = self.c, self.c._h, self.heads, self.fulls
        group, member, slots, seqs = c.group, c.member, c._slots, c._seqs
        perf = time.perf_counter_ns
        while True:
            try:
                k = h.acquire(group, member, self.batch, TIMEOUT_NS, slots, seqs)
            except EndOfStream:
                return
            now = perf()
            done = False
            for s in slots[:k].tolist():
                if tally.frame(int(heads[s][0]), None if fulls is None else fulls[s], now):
                    done = True
                    break
            h.release_n(group, member, seqs, slots, k)
            tally.t_last = perf()
            if done:
                return


class ShmQueueSource:
    """The naive version: slot index from a Queue, read the SharedMemory slot, index back."""

    def __init__(self, shm_name: str, size: int, slots: int, full_q: Any, free_q: Any) -> None:
        self.shm = SharedMemory(shm_name)
        self.full_q, self.free_q = full_q, free_q
        buf = self.shm.buf
        self.heads = [np.ndarray((1,), np.uint64, buf, k * size) for k in range(slots)]
        self.fulls: list[np.ndarray] | None = None
        if size >= LARGE_THRESHOLD:
            self.fulls = [np.ndarray((size // 8,), np.uint64, buf, k * size) for k in range(slots)]

    def run_pass(self, tally: Tally) -> None:
        heads, fulls, get, put = self.heads, self.fulls, self.full_q.get, self.free_q.put
        perf = time.perf_counter_ns
        while True:
            s = get(timeout=TIMEOUT_S)
            now = perf()
            done = tally.frame(int(heads[s][0]), None if fulls is None else fulls[s], now)
            put(s)
            tally.t_last = perf()
            if done:
                return

    def close(self) -> None:
        """Drop the numpy views first: SharedMemory.close refuses while views of it exist."""
        self.heads, self.fulls = [], None
        self.shm.close()


class FasterFifoSource:
    """faster-fifo get_many: each message is copied out of the shared buffer into ours."""

    def __init__(self, q: Any, size: int, batch: int) -> None:
        self.q, self.batch, self.large = q, batch, size >= LARGE_THRESHOLD

    def run_pass(self, tally: Tally) -> None:
        get_many, batch, large = self.q.get_many, self.batch, self.large
        perf = time.perf_counter_ns
        while True:
            msgs = get_many(block=True, timeout=TIMEOUT_S, max_messages_to_get=batch)
            now = perf()
            done = False
            for m in msgs:
                arr = np.frombuffer(m, np.uint64)
                if tally.frame(int(arr[0]), arr if large else None, now):
                    done = True
                    break
            tally.t_last = perf()
            if done:
                return


class IoxSource:
    """iceoryx2 subscriber: busy-polls receive(), reads the sample in place, deletes it."""

    def __init__(self, service: str, size: int) -> None:
        import iceoryx2 as iox

        iox.set_log_level(iox.LogLevel.Error)
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        self.svc = (self.node.service_builder(iox.ServiceName.new(service))
                    .publish_subscribe(iox.Slice[ctypes.c_uint8]).open())
        self.sub = self.svc.subscriber_builder().create()
        self.large = size >= LARGE_THRESHOLD

    def run_pass(self, tally: Tally) -> None:
        receive, large = self.sub.receive, self.large
        perf = time.perf_counter_ns
        deadline = perf() + TIMEOUT_NS
        while True:
            sample = receive()
            if sample is None:
                if perf() > deadline:
                    raise TimeoutError(f"no iceoryx2 sample for {TIMEOUT_S} s")
                continue
            now = perf()
            arr = np.frombuffer(sample.payload().as_memory_view(), np.uint64)
            done = tally.frame(int(arr[0]), arr if large else None, now)
            del arr
            sample.delete()
            tally.t_last = perf()
            deadline = tally.t_last + TIMEOUT_NS
            if done:
                return


def consumer_main(kind: str, args: tuple[Any, ...], lat_cap: int, tp_passes: int,
                  results: Any) -> None:
    """Entry of the consumer process: attach, say ready, run the latency then throughput passes."""
    try:
        source: Source
        if kind == "ring":
            source = RingSource(*args)
        elif kind == "shmq":
            source = ShmQueueSource(*args)
        elif kind == "ff":
            source = FasterFifoSource(*args)
        elif kind == "iox":
            source = IoxSource(*args)
        else:
            raise ValueError(f"unknown transport {kind!r}")
        results.put(("ready", None))
        for phase in ["lat"] + ["tp"] * tp_passes:
            tally = Tally(phase, lat_cap)
            source.run_pass(tally)
            results.put((phase, tally.report()))
        if isinstance(source, ShmQueueSource):
            source.close()
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise


# -- producer side (this process) ----------------------------------------------------------------


def pace(nxt: int) -> None:
    """Wait until `nxt` (perf_counter_ns) for the latency pass.

    Sleeping most of the gap matters: a producer spinning the whole time keeps the GIL, and an
    mp.Queue's feeder thread (which does the actual send) then waits up to the 5 ms switch
    interval, which would charge the naive baseline for our pacing. The last PACE_SPIN_NS are
    spun so frames still leave on time.
    """
    perf = time.perf_counter_ns
    left = nxt - perf()
    if left > PACE_SPIN_NS:
        time.sleep((left - PACE_SPIN_NS) / 1e9)
    while perf() < nxt:
        pass


def bursts(count: int, check: int, interval_ns: int = 0, deadline_ns: int = 0) -> Iterator[int]:
    """How many frames a producer's `send` writes next, for its `interval_ns` and `deadline_ns`.

    Every producer's loop takes its pacing and stopping from here, yet no producer pays a Python
    call per frame for it (see `Producer`): paced (the latency pass, which waits anyway) a burst
    is one frame; unpaced it is `check` frames, the deadline being looked at between bursts, or
    all `count` at once when there is no deadline.
    """
    if interval_ns:
        nxt = time.perf_counter_ns()
        for _ in range(count):
            pace(nxt)
            nxt += interval_ns
            yield 1
    elif not deadline_ns:
        yield count
    else:
        perf = time.perf_counter_ns
        for n in range(0, count, check):
            if perf() >= deadline_ns:
                return
            yield min(check, count - n)


class Producer(Protocol):
    """A producer's end of one transport.

    `send` writes `count` frames (or fewer: it stops at `deadline_ns`, looked at every 256 small
    or every large frame, so the clock read costs little), paced at one per `interval_ns` when
    given; each frame's first 8 bytes get `value` (STAMP, COUNTER or a marker). Each transport
    spells its per-frame loop out (inside the `bursts` it shares) rather than sharing one through
    a callback: a Python call per frame would cost the fast transports a visible share of their
    rate. Returns the frames sent.
    """

    def send(self, count: int, value: int, interval_ns: int = 0, deadline_ns: int = 0) -> int: ...

    def consumer_args(self) -> tuple[Any, ...]: ...

    def close(self) -> None: ...


class RingProducer:
    """claim, one np.copyto into the slot (large frames), header + first 8 bytes, publish;
    with batch > 1 the batch forms (claim_many / publish_many) on the producer's side too.

    `spin` (seconds), when given, goes to set_spin on both handles, this producer's (claim of a
    free slot) and the consumer's (acquire); None keeps the default, 20 us then a futex sleep.
    """

    def __init__(self, name: str, size: int, slots: int, src: np.ndarray | None,
                 batch: int, spin: float | None = None) -> None:
        self.name, self.size, self.batch, self.src, self.spin = name, size, batch, src, spin
        self.ring = Ring.create(name, slots=slots, slot_bytes=size)
        if spin is not None:
            self.ring.set_spin(spin)
        n_slots = self.ring._h.n_slots
        self.pays = [self.ring.payload(k)[:size] for k in range(n_slots)]
        self.heads = [p[:8].view(np.uint64) for p in self.pays]
        # Packed once: the per-frame header write is a 96-byte copy, as in a real producer that
        # patches a template (the frame counter travels in the payload's first 8 bytes).
        self.hdr = frame_header(np.zeros(size, np.uint8), 1, 0).pack()
        self.hdrs = np.frombuffer(self.hdr * 64, np.uint8).reshape(64, 96).copy()

    def consumer_args(self) -> tuple[Any, ...]:
        return (self.name, self.size, self.batch, self.spin)

    def send_batched(self, count: int, value: int, deadline_ns: int) -> int:
        """Batch producer (claim_many / publish_many): one claim and one publish per batch."""
        ring, heads, hdrs, src, pays = self.ring, self.heads, self.hdrs, self.src, self.pays
        perf = time.perf_counter_ns
        n = 0
        while n < count:
            if deadline_ns and perf() >= deadline_ns:
                break
            slots = ring.claim_many(min(self.batch, count - n), TIMEOUT_NS / 1e9)
            for slot in slots:
                if src is not None:
                    np.copyto(pays[slot], src)
                heads[slot][0] = perf() if value == STAMP else (n if value == COUNTER else value)
                n += 1
            ring.publish_many(slots, hdrs[: len(slots)])
        return n

    def send(self, count: int, value: int, interval_ns: int = 0, deadline_ns: int = 0) -> int:
        if self.batch > 1 and not interval_ns:
            return self.send_batched(count, value, deadline_ns)
        h, hv, pays, heads, hdr, src = (self.ring._h, self.ring._headers, self.pays, self.heads,
                                        self.hdr, self.src)
        perf = time.perf_counter_ns
        n = 0
        for burst in bursts(count, 256 if src is None else 1, interval_ns, deadline_ns):
            for _ in range(burst):
                slot = h.claim(TIMEOUT_NS)
                if src is not None:
                    np.copyto(pays[slot], src)  # the one copy of the frame
                hv[slot][:] = hdr
                heads[slot][0] = perf() if value == STAMP else (n if value == COUNTER else value)
                h.publish(slot)
                n += 1
        return n

    def close(self) -> None:
        self.ring.end()
        Ring.unlink(self.name)


class ShmQueueProducer:
    """free index from a Queue, np.copyto into the SharedMemory slot, index onto the full Queue."""

    def __init__(self, ctx: SpawnContext, name: str, size: int, slots: int,
                 src: np.ndarray | None) -> None:
        self.size, self.slots, self.src = size, slots, src
        self.shm = SharedMemory(name, create=True, size=size * slots)
        buf = self.shm.buf
        self.pays = [np.ndarray((size,), np.uint8, buf, k * size) for k in range(slots)]
        self.heads = [p[:8].view(np.uint64) for p in self.pays]
        self.full_q = ctx.Queue()
        self.free_q = ctx.Queue()
        for k in range(slots):
            self.free_q.put(k)

    def consumer_args(self) -> tuple[Any, ...]:
        return (self.shm.name, self.size, self.slots, self.full_q, self.free_q)

    def send(self, count: int, value: int, interval_ns: int = 0, deadline_ns: int = 0) -> int:
        pays, heads, src, get, put = self.pays, self.heads, self.src, self.free_q.get, \
            self.full_q.put
        perf = time.perf_counter_ns
        n = 0
        for burst in bursts(count, 256 if src is None else 1, interval_ns, deadline_ns):
            for _ in range(burst):
                slot = get(timeout=TIMEOUT_S)
                if src is not None:
                    np.copyto(pays[slot], src)
                heads[slot][0] = perf() if value == STAMP else (n if value == COUNTER else value)
                put(slot)
                n += 1
        return n

    def close(self) -> None:
        self.pays, self.heads = [], []
        for q in (self.full_q, self.free_q):
            q.close()
            q.cancel_join_thread()  # indices left in the free queue must not block our exit
        self.shm.close()
        self.shm.unlink()


def _same(x: Any) -> Any:
    """faster-fifo (de)serializer that passes raw bytes through: its best case, no pickling."""
    return x


class FasterFifoProducer:
    """put() of a prepared ctypes buffer: faster-fifo copies it into its shared circular buffer."""

    def __init__(self, size: int, slots: int, src: np.ndarray | None, batch: int) -> None:
        import faster_fifo

        self.size, self.batch = size, batch
        # Room for S frames, like the other transports' S slots (+ its 8-byte length per message).
        self.q = faster_fifo.Queue(max_size_bytes=slots * (size + 16), loads=_same, dumps=_same)
        self.msg = (ctypes.c_ubyte * size)()
        view = np.frombuffer(self.msg, np.uint8)
        if src is not None:
            np.copyto(view, src)  # prepared once: put() from it is the producer's one copy
        self.head = view[:8].view(np.uint64)

    def consumer_args(self) -> tuple[Any, ...]:
        return (self.q, self.size, self.batch)

    def send(self, count: int, value: int, interval_ns: int = 0, deadline_ns: int = 0) -> int:
        put, msg, head = self.q.put, self.msg, self.head
        perf = time.perf_counter_ns
        check = 256 if self.size < LARGE_THRESHOLD else 1
        n = 0
        for burst in bursts(count, check, interval_ns, deadline_ns):
            for _ in range(burst):
                head[0] = perf() if value == STAMP else (n if value == COUNTER else value)
                put(msg, block=True, timeout=TIMEOUT_S)
                n += 1
        return n

    def close(self) -> None:
        self.q.close()


class IoxProducer:
    """loan_slice_uninit, one np.copyto into the loaned sample (large frames), send."""

    def __init__(self, service: str, size: int, slots: int, src: np.ndarray | None) -> None:
        import iceoryx2 as iox

        iox.set_log_level(iox.LogLevel.Error)
        self.service, self.size, self.src = service, size, src
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        self.svc = (self.node.service_builder(iox.ServiceName.new(service))
                    .publish_subscribe(iox.Slice[ctypes.c_uint8])
                    .subscriber_max_buffer_size(slots).history_size(0)
                    .enable_safe_overflow(False).create())
        self.pub = (self.svc.publisher_builder().initial_max_slice_len(size)
                    .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered).create())

    def consumer_args(self) -> tuple[Any, ...]:
        return (self.service, self.size)

    def connected(self) -> None:
        """Called once the subscriber exists, so the first frame is not sent to nobody."""
        self.pub.update_connections()

    def send(self, count: int, value: int, interval_ns: int = 0, deadline_ns: int = 0) -> int:
        loan, size, src = self.pub.loan_slice_uninit, self.size, self.src
        perf = time.perf_counter_ns
        n = 0
        for burst in bursts(count, 256 if src is None else 1, interval_ns, deadline_ns):
            for _ in range(burst):
                sample = loan(size)
                view = np.frombuffer(sample.payload().as_memory_view(), np.uint8)
                if src is not None:
                    np.copyto(view, src)
                view[:8].view(np.uint64)[0] = (perf() if value == STAMP
                                               else (n if value == COUNTER else value))
                del view
                sample.assume_init().send()
                n += 1
        return n

    def close(self) -> None:
        del self.pub, self.svc, self.node


# -- driver ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def consumer_process(ctx: SpawnContext, kind: str, args: tuple[Any, ...], lat_cap: int,
                     tp_passes: int, results: Any) -> Iterator[SpawnProcess]:
    """A started consumer process that is always joined, terminated if it lingers, then killed."""
    proc = ctx.Process(target=consumer_main, args=(kind, args, lat_cap, tp_passes, results),
                       daemon=True)
    proc.start()
    try:
        yield proc
    except BaseException:
        proc.terminate()  # the producer failed: the consumer's result no longer matters
        raise
    finally:
        reap(proc)


def expect(results: Any, tag: str, proc: SpawnProcess, timeout: float) -> Any:
    """The consumer's next message, which must be `tag`; fails fast if the consumer died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, payload = results.get(timeout=0.2)
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"consumer exited ({proc.exitcode}) before {tag!r}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {tag!r} from the consumer in {timeout:.0f} s") from None
            continue
        if got == "error":
            raise RuntimeError(f"consumer failed:\n{payload}")
        if got != tag:
            raise RuntimeError(f"consumer said {got!r}, expected {tag!r}")
        return payload


def run_transport(ctx: SpawnContext, row: Row, kind: str, make: Callable[[], Producer],
                  mode: Mode, slots: int, lat_interval_ns: int) -> None:
    """Warm-up + paced latency pass, then the timed throughput passes; fills `row`."""
    large = row.size >= LARGE_THRESHOLD
    lat_frames = mode.lat_frames_large if large else mode.lat_frames_small
    producer = make()
    results = ctx.Queue()
    try:
        with consumer_process(ctx, kind, producer.consumer_args(), lat_frames, mode.tp_passes,
                              results) as proc:
            expect(results, "ready", proc, START_TIMEOUT_S)
            if isinstance(producer, IoxProducer):
                producer.connected()
            producer.send(2 * slots + 8, WARM)
            producer.send(lat_frames, STAMP, interval_ns=lat_interval_ns)
            producer.send(1, END)
            lat = expect(results, "lat", proc, TIMEOUT_S + lat_frames * lat_interval_ns / 1e9)
            if lat["lat"].size:
                row.p50_us, row.p99_us = (float(v) / 1e3 for v in
                                          np.percentile(lat["lat"], [50, 99]))
            passes = []
            for _ in range(mode.tp_passes):
                t0 = time.perf_counter_ns()
                sent = producer.send(1 << 62, COUNTER,
                                     deadline_ns=t0 + int(mode.tp_seconds * 1e9))
                producer.send(1, END)
                tp = expect(results, "tp", proc, TIMEOUT_S)
                passes.append((tp["frames"], (tp["t_last"] - t0) / 1e9))
                if tp["frames"] != sent or tp["bad"]:
                    row.ok = False
                    row.note = f"sent {sent}, got {tp['frames']}, {tp['bad']} out of order"
            row.take_median(passes)
            if lat["lat"].size != lat_frames:
                row.ok = False
                row.note += f" latency pass: {lat['lat'].size}/{lat_frames} stamps"
    finally:
        try:
            producer.close()
        finally:
            results.close()
            results.cancel_join_thread()


def run_memcpy(row: Row, src: np.ndarray, slots: int, mode: Mode) -> float:
    """np.copyto over `slots` pre-faulted destinations; returns ns per copy (to pace latency)."""
    dsts = [np.ones(row.size, np.uint8) for _ in range(slots)]
    for d in dsts:
        np.copyto(d, src)
    check = 256 if row.size < LARGE_THRESHOLD else 1
    perf = time.perf_counter_ns
    passes = []
    for _ in range(mode.tp_passes):
        n = 0
        t0 = perf()
        deadline = t0 + int(mode.tp_seconds * 1e9)
        while n % check or perf() < deadline:
            np.copyto(dsts[n % slots], src)
            n += 1
        passes.append((n, (perf() - t0) / 1e9))
    row.take_median(passes)
    return row.seconds * 1e9 / row.frames


def library_status(module: str) -> str | None:
    """None when `module` imports, else why not (the row then says so instead of a number)."""
    try:
        __import__(module)
    except Exception as exc:
        pip_name = module.replace("_", "-")
        return f"not available: {type(exc).__name__}: {exc} (pip install {pip_name})"
    return None


def table(rows: list[Row]) -> str:
    """Markdown table; ratios are against the same frame size's memcpy and shm+mp.Queue rows."""
    head = ["case", "frame", "batch", "waits", "frames", "GB/s", "hand-offs/s", "p50 µs", "p99 µs",
            "copies/frame", "GB/s vs memcpy 1 dst", "hand-offs/s vs shm + mp.Queue", "note"]
    out = []
    for r in rows:
        ref = {x.case: x for x in rows if x.size_label == r.size_label and x.ok and x.frames}
        mem, mpq = ref.get(MEMCPY_HOT), ref.get(MPQ)
        vs_mem = f"{r.gbps / mem.gbps:.2f}x" if mem and r.frames else "—"
        vs_q = f"{r.rate / mpq.rate:.1f}x" if mpq and r.frames else "—"
        note = "; ".join(x for x in (r.note, r.spread) if x)
        note = note if r.ok else f"FAILED: {note}"
        out.append([r.case, r.size_label, r.batch, r.waits, r.frames or "—", fmt(r.gbps),
                    fmt_rate(r.rate), fmt(r.p50_us, 1), fmt(r.p99_us, 1), r.copies, vs_mem, vs_q,
                    note])
    return md_table(head, "llllrrrrrrrrl", out)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "small counts (default)", "longer passes, more latency samples")
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    opts = ap.parse_args(argv)
    mode = FULL if opts.full else QUICK

    ctx = mp.get_context("spawn")
    tag = f"snb{os.getpid()}"
    libs = {"faster_fifo": library_status("faster_fifo"), "iceoryx2": library_status("iceoryx2")}
    rows: list[Row] = []
    t_start = time.monotonic()
    for idx, (label, size, slots) in enumerate(SIZES):
        large = size >= LARGE_THRESHOLD
        src = np.random.default_rng(idx).integers(0, 256, size, np.uint8) if large else None
        copy_src = np.zeros(size, np.uint8) if src is None else src
        hot = Row(MEMCPY_HOT, label, size, "—", "1", note="the ceiling: destination stays in cache")
        run_memcpy(hot, copy_src, 1, mode)
        cold = Row(MEMCPY_COLD, label, size, "—", "1",
                   note=f"S={slots} destinations in turn: a transport cycling through S slots")
        copy_ns = run_memcpy(cold, copy_src, slots, mode)
        rows += [hot, cold]
        # Large frames are paced at 10 cold copies per frame, so even a transport that copies the
        # frame twice more and then sums it keeps up: latency without queueing.
        interval = SMALL_LAT_INTERVAL_NS if not large else max(SMALL_LAT_INTERVAL_NS,
                                                              int(10 * copy_ns) // 1000 * 1000)
        pace_note = f"latency paced at {1e9 / interval:.0f}/s"

        cases: list[tuple[Row, str, Callable[[], Producer]]] = []
        batches = (SMALL_BATCH, 1) if not large else (1,)
        cases.append((Row(MPQ, label, size, "1", "1", "blocking", note=pace_note), "shmq",
                      partial(ShmQueueProducer, ctx, f"{tag}-{idx}q", size, slots, src)))
        for b in batches:
            cases.append((Row("stream-node Ring", label, size, str(b), "1", "futex (20 µs spin)",
                              note=pace_note), "ring",
                          partial(RingProducer, f"{tag}-{idx}r{b}", size, slots, src, b)))
        if size <= BUSY_POLL_MAX:  # 64 B (batch 1) and 1 MiB: next to iceoryx2's busy-poll row
            cases.append((Row("stream-node Ring, busy-poll", label, size, "1", "1", "busy-poll",
                              note=f"{pace_note}; set_spin({BUSY_SPIN_S:g}) on both handles"),
                          "ring", partial(RingProducer, f"{tag}-{idx}rb", size, slots, src, 1,
                                          BUSY_SPIN_S)))
        ff_batch = SMALL_BATCH if not large else 1
        cases.append((Row("faster-fifo", label, size, f"≤{ff_batch}", "2", "blocking",
                          note=libs["faster_fifo"] or f"{pace_note}; raw bytes, no pickle"), "ff",
                      partial(FasterFifoProducer, size, slots, src, ff_batch)))
        cases.append((Row("iceoryx2", label, size, "1", "1", "busy-poll (consumer)",
                          note=libs["iceoryx2"] or f"{pace_note}; consumer busy-polls"), "iox",
                      partial(IoxProducer, f"stream-node-bench/{tag}/{idx}", size, slots, src)))

        for row, kind, make in cases:
            if opts.only and opts.only.lower() not in row.case.lower():
                continue
            rows.append(row)
            lib = {"ff": "faster_fifo", "iox": "iceoryx2"}.get(kind)
            if lib and libs[lib]:
                continue
            try:
                run_transport(ctx, row, kind, make, mode, slots, interval)
            except Exception as exc:
                # A table cell: one line, its end (a consumer's traceback ends with the error).
                why = " ".join(str(exc).split())[-300:]
                row.ok, row.note = False, f"{type(exc).__name__}: {why}"
            print(f"  {row.case:27s} {label:6s} batch {row.batch:4s} {row.frames:8d} frames "
                  f"{fmt(row.gbps):>7s} GB/s {fmt_rate(row.rate):>9s}/s p50 {fmt(row.p50_us, 1)} "
                  f"µs p99 {fmt(row.p99_us, 1)} µs {'' if row.ok else 'FAILED ' + row.note}",
                  file=sys.stderr, flush=True)

    print(f"\nstream-node ring bench ({'full' if opts.full else 'quick'}, "
          f"{time.monotonic() - t_start:.0f} s): {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}; producer = this process, consumer = a spawned process.\n"
          "Consumer reads the first 8 bytes of each frame; for 1 MiB / 8 MiB it also sums the "
          "whole frame (np.add.reduce on a uint64 view). GB/s = frames x bytes / s / 1e9. "
          "Latency: perf_counter_ns stamp written at publish -> read at acquire, "
          "in a paced pass. waits: how the sides wait for each other (busy-poll rows spin a "
          "core per waiting side).\n")
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
