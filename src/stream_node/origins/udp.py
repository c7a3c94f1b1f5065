"""Detector UDP packets straight into ring slots (`udp://HOST:PORT?modules=N...`).

The receiving itself is native (`native/src/udp_receiver.c`): one thread per module port, no
GIL, packets scattered by `recvmmsg` to their place in the frame's ring slot. This module turns
an endpoint into a receiver, runs it as the source's origin, and turns what it reports (partial
frames with their lost-packet bitmaps, frame numbers that never came, module restarts) into the
run's ledger. It also holds the packet sender used by tests and benchmarks.

Endpoint: `udp://HOST:PORT` with query options
    modules=N        module ports PORT, PORT+1, ... (or ports=P1,P2,...)
    grid=RxC         modules in the full image (default Nx1); a packet's (row, column) header
                     fields place its module
    preset=jungfrau  the packet geometry (PRESETS)
    frames=N         frames in the run (default: until the detector is silent for timeout_s)
    first=F          detector frame number of frame id 0 (default: the first one that arrives)
    window=8         frames assembled at once      frame_timeout_ms=50  wait for late packets
    rcvbuf=64MiB     socket receive buffer (bytes) cpus=0,1  pin module threads
    batch=64         packets per recvmmsg          fill=65535  value of lost pixels
    coalesce_us=300  nap after a call that got < batch/4 packets (fewer wake-ups per packet)
    wait_s=60        how long to wait for the first packet
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from stream_node._native import _udp
from stream_node.links.base import FrameOutput
from stream_node.links.ring_links import RingOutput
from stream_node.model.errors import ConfigError, PeerTimeout
from stream_node.origins.base import Emitted, Origin, OriginOptions, RunControl

log = logging.getLogger(__name__)

HEADER_BYTES = _udp.HEADER_BYTES


@dataclass(frozen=True)
class UdpGeometry:
    """How one module's frame travels: a detector is a preset, not code."""

    packets_per_frame: int
    payload_bytes: int
    module_rows: int
    module_cols: int
    bytes_per_pixel: int
    detector_type: int  # the SLS header's detector type (slsDetectorDefs::detectorType)
    header_version: int

    @property
    def module_bytes(self) -> int:
        return self.packets_per_frame * self.payload_bytes

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32}[self.bytes_per_pixel])


PRESETS = {
    # PSI JUNGFRAU: 512 x 1024 uint16 per module, 128 packets of 8192 bytes, header version 2.
    "jungfrau": UdpGeometry(128, 8192, 512, 1024, 2, 3, 2),
}


@dataclass
class UdpConfig:
    host: str
    ports: list[int]
    geometry: UdpGeometry
    grid: tuple[int, int]
    frames: int = 0
    first: int = 0
    window: int = 8
    frame_timeout_s: float = 0.05
    rcvbuf: int = 64 << 20
    cpus: tuple[int, ...] = ()
    batch: int = 64
    fill: int = 0xFFFF
    wait_s: float = 60.0
    max_events: int = 65536
    coalesce_s: float = 300e-6

    @classmethod
    def from_endpoint(cls, address: str) -> UdpConfig:
        """`HOST:PORT?options` (what follows `udp://`)."""
        where, _, query = address.partition("?")
        host, _, port = where.rpartition(":")
        try:
            q = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
            modules = int(q.pop("modules", 1))
            ports = ([int(p) for p in q.pop("ports").split(",")] if "ports" in q
                     else [int(port) + i for i in range(modules)])
            preset = q.pop("preset", "jungfrau")
            if preset not in PRESETS:
                raise ConfigError(f"preset {preset!r}: known presets are {sorted(PRESETS)}")
            rows, _, cols = q.pop("grid", f"{len(ports)}x1").partition("x")
            cfg = cls(host or "0.0.0.0", ports, PRESETS[preset], (int(rows), int(cols)),
                      frames=int(q.pop("frames", 0)), first=int(q.pop("first", 0)),
                      window=int(q.pop("window", 8)),
                      frame_timeout_s=float(q.pop("frame_timeout_ms", 50)) / 1000,
                      rcvbuf=int(q.pop("rcvbuf", 64 << 20)),
                      cpus=tuple(int(c) for c in q.pop("cpus", "").split(",") if c),
                      batch=int(q.pop("batch", 64)), fill=int(q.pop("fill", "0xffff"), 0),
                      wait_s=float(q.pop("wait_s", 60)),
                      coalesce_s=float(q.pop("coalesce_us", 300)) / 1e6)
        except ValueError as exc:
            raise ConfigError(f"udp://{address}: {exc}") from None
        if q:
            raise ConfigError(f"udp://{address}: unknown options {sorted(q)}")
        if min(cfg.grid) < 1 or cfg.grid[0] * cfg.grid[1] < len(cfg.ports):
            raise ConfigError(f"udp://{address}: grid {cfg.grid} has no place for "
                              f"{len(cfg.ports)} modules")
        if not 0 < cfg.batch <= _udp.MAX_BATCH or cfg.window < 1:
            raise ConfigError(f"udp://{address}: batch must be 1..{_udp.MAX_BATCH}, window >= 1")
        return cfg

    @property
    def shape(self) -> tuple[int, int]:
        g = self.geometry
        return (self.grid[0] * g.module_rows, self.grid[1] * g.module_cols)


def _rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


class UdpReceiver:
    """The native receiver on a ring: start, poll events and stats, stop."""

    def __init__(self, cfg: UdpConfig, ring: Any, run_id: int) -> None:
        self.cfg = cfg
        self._native = _udp.Receiver(
            ring.handle, astuple(cfg.geometry), cfg.host, list(cfg.ports), cfg.grid,
            list(cfg.cpus), cfg.rcvbuf, cfg.frame_timeout_s, cfg.window, cfg.batch, cfg.first,
            cfg.frames, run_id, cfg.fill, cfg.max_events, cfg.coalesce_s)
        self._events = np.zeros(4096 * self._native.event_bytes, np.uint8)
        granted = self.stats()["rcvbuf_granted"]
        if granted < cfg.rcvbuf:
            log.warning("udp: asked for a %d-byte socket receive buffer, the kernel gave %d "
                        "(net.core.rmem_max = %s): packets may be lost at high rates; raise "
                        "rmem_max or run as root (SO_RCVBUFFORCE)", cfg.rcvbuf, granted,
                        _rmem_max())

    def start(self) -> None:
        self._native.start()

    def stop(self) -> None:
        self._native.stop()

    def stats(self) -> dict[str, Any]:
        return self._native.stats()

    def events(self) -> list[tuple[int, int, int, bytes]]:
        """(kind, frame number, parts, lost-packet bitmap) of each event since the last call."""
        out = []
        size = self._native.event_bytes
        header = np.dtype([("frame", "<u8"), ("kind", "<u4"), ("parts", "<u4")])
        nbits = len(self.cfg.ports) * self.cfg.geometry.packets_per_frame
        while n := self._native.take_events(self._events):
            records = self._events[: n * size].reshape(n, size)
            heads = records[:, :16].copy().view(header).reshape(n)
            for rec, head in zip(records, heads, strict=True):
                out.append((int(head["kind"]), int(head["frame"]), int(head["parts"]),
                            rec[16: 16 + (nbits + 7) // 8].tobytes()))
        return out


class UdpOrigin(Origin):
    """`udp://...` — the frames a detector sends as UDP packets, assembled in ring slots."""

    needs_ring = True

    def __init__(self, address: str, options: OriginOptions) -> None:
        self.address = address
        self.cfg = UdpConfig.from_endpoint(address)
        self.options = options
        self.shape = self.cfg.shape
        self.dtype = self.cfg.geometry.dtype
        self.count = self.cfg.frames or None
        self.receiver: UdpReceiver | None = None

    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {"source": f"udp://{self.address}", "udp": {
                    "ports": c.ports, "grid": list(c.grid), "window": c.window,
                    "frame_timeout_s": c.frame_timeout_s, "fill": c.fill},
                "detector": {"description": f"UDP detector, {len(c.ports)} module(s)",
                             "module_packets": c.geometry.packets_per_frame,
                             "packet_payload_bytes": c.geometry.payload_bytes}}

    def prepare(self, out: FrameOutput, run_id: int) -> None:
        """Bind the ports and start receiving into the ring before the source says it is
        ready: the ring keeps every frame until the workers take it."""
        if not isinstance(out, RingOutput):
            raise ConfigError("udp:// frames are received straight into ring slots: give the "
                              "source a ring:// data endpoint (workers forward over tcp)")
        self.receiver = UdpReceiver(self.cfg, out.ring, run_id)
        self._usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.receiver.start()
        log.info("udp: receiving on %s ports %s", self.cfg.host, self.cfg.ports)

    def emit(self, out: FrameOutput, run_id: int, ctl: RunControl) -> Emitted:
        receiver = self.receiver
        assert receiver is not None, "prepare() binds the ports first"
        done = Emitted()
        usage0 = self._usage0
        try:
            self._watch(receiver, done, ctl)
        finally:
            receiver.stop()
            self._take(receiver, done)
        out.end()
        stats = receiver.stats()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        done.sent = stats["frames_complete"] + stats["frames_partial"]
        if self.cfg.frames and not ctl.stopping:
            done.last_id = self.cfg.frames - 1
        else:
            done.last_id = stats["highest"] - stats["base"] if stats["started"] else -1
        totals = {k: sum(m[k] for m in stats["modules"]) for k in stats["modules"][0]}
        done.counters = {
            **{k: stats[k] for k in ("frames_complete", "frames_partial", "frames_missing",
                                     "frames_ring_full", "events_lost", "rcvbuf_granted")},
            **{f"packets_{k}" if k != "packets" else k: v for k, v in totals.items()},
            "first_frame_number": stats["base"],
            "cpu_s": round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime,
                           3)}
        log.info("udp: %d frames (%d partial), %d missing, %d packets, %d moved", done.sent,
                 stats["frames_partial"], len(done.missing), totals["packets"], totals["moved"])
        return done

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()

    def _watch(self, receiver: UdpReceiver, done: Emitted, ctl: RunControl) -> None:
        """Until every frame of the run is resolved, or the detector stays silent."""
        t0 = last_change = time.monotonic()
        last = None
        while True:
            ctl.pace(time.monotonic() + 0.05)  # answers control while waiting
            self._take(receiver, done)
            if ctl.stopping:  # ended on purpose: the run is what arrived until now
                return
            stats = receiver.stats()
            if stats["done"]:
                return
            now = time.monotonic()
            seen = (stats["highest"], sum(m["packets"] + m["late"] for m in stats["modules"]))
            if seen != last:
                last, last_change = seen, now
            if not stats["started"]:
                if now - t0 > self.cfg.wait_s:
                    raise PeerTimeout(f"udp: no packet on {self.cfg.host} ports "
                                      f"{self.cfg.ports} within {self.cfg.wait_s:.0f} s")
            elif now - last_change > self.options.timeout_s:
                log.info("udp: detector silent for %.1f s: the run ends", now - last_change)
                return

    def _take(self, receiver: UdpReceiver, done: Emitted) -> None:
        base = receiver.stats()["base"]
        for kind, frame, parts, bits in receiver.events():
            if kind == _udp.EV_PARTIAL:
                done.partial[frame - base] = bits
            elif kind == _udp.EV_MISSING:
                for f in range(frame, frame + parts):
                    done.missing[f - base] = f"udp: no packet of frame number {f} arrived"
            elif kind == _udp.EV_RING_FULL:
                done.missing[frame - base] = (
                    f"udp: frame number {frame} found no free ring slot (workers did not keep "
                    f"up); {parts} packets dropped")
            elif kind == _udp.EV_RESTART:
                log.warning("udp: module %d restarted its frame counter (now at %d): its "
                            "packets are dropped until the others reach it", parts, frame)




# -- sender, for tests and benchmarks -----------------------------------------------------------

def module_images(geometry: UdpGeometry, modules: int, seed: int = 0) -> np.ndarray:
    """Random module frames (uint8 rows of module bytes) the sender takes payloads from."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (modules, geometry.module_bytes), dtype=np.uint8)


def default_positions(modules: int, grid: tuple[int, int]) -> np.ndarray:
    """(row, column) of each module: row-major in the grid."""
    return np.array([(m // grid[1], m % grid[1]) for m in range(modules)], np.uint16)


def schedule(geometry: UdpGeometry, frames: int, modules: int, first: int = 1) -> np.ndarray:
    """Every packet of `frames` frames from `modules` modules, in the order a detector sends
    them (frame by frame, modules interleaved): a structured array tests then reshape (drop,
    duplicate, reorder, delay) before sending."""
    ppf = geometry.packets_per_frame
    f, p, m = np.meshgrid(np.arange(frames, dtype=np.uint64) + np.uint64(first),
                          np.arange(ppf, dtype=np.uint32), np.arange(modules, dtype=np.uint32),
                          indexing="ij")
    out = np.empty(f.size, [("module", np.uint32), ("frame", np.uint64), ("packet", np.uint32)])
    out["module"], out["frame"], out["packet"] = m.ravel(), f.ravel(), p.ravel()
    return out


def send(host: str, ports: list[int], geometry: UdpGeometry, sched: np.ndarray,
         images: np.ndarray, positions: np.ndarray, rate_pps: float = 0.0,
         sndbuf: int = 4 << 20) -> int:
    """Send the scheduled packets with `sendmmsg` (native, no GIL); returns packets sent."""
    return _udp.send(host, list(ports), astuple(geometry), np.ascontiguousarray(positions),
                     np.ascontiguousarray(images), np.ascontiguousarray(sched["module"]),
                     np.ascontiguousarray(sched["frame"]), np.ascontiguousarray(sched["packet"]),
                     rate_pps, sndbuf)


def expected_frame(geometry: UdpGeometry, images: np.ndarray, positions: np.ndarray,
                   grid: tuple[int, int], frame_number: int,
                   lost: dict[int, list[int]] | None = None, fill: int = 0xFFFF) -> np.ndarray:
    """The full image the receiver assembles from the sender's packets of one frame: module
    images at their places, the frame number in the first 8 bytes of every packet's payload,
    and `fill` where a packet of `lost` {module: [packets]} never came."""
    g = geometry
    out = np.empty((grid[0] * g.module_rows, grid[1] * g.module_cols), g.dtype)
    stamp = np.frombuffer(int(frame_number).to_bytes(8, "little"), np.uint8)
    rows_per_packet = g.payload_bytes // (g.module_cols * g.bytes_per_pixel)
    for m in range(len(images)):
        data = images[m].reshape(g.packets_per_frame, g.payload_bytes).copy()
        data[:, :8] = stamp
        module = data.view(g.dtype).reshape(g.module_rows, g.module_cols)
        for p in (lost or {}).get(m, []):
            module[p * rows_per_packet: (p + 1) * rows_per_packet] = fill
        r, c = (int(v) for v in positions[m])
        out[r * g.module_rows: (r + 1) * g.module_rows,
            c * g.module_cols: (c + 1) * g.module_cols] = module
    return out
