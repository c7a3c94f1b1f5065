"""The native UDP receiver on loopback: real sockets, real packets, frames in real ring slots."""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass, field

import h5py
import numpy as np
import pytest

from conftest import finish, wait_run_started
from stream_node import ExitCode, read_run
from stream_node.links.ring import Ring
from stream_node.model.errors import ConfigError, RingTimeout
from stream_node.model.frame import FLAG_PARTIAL
from stream_node.origins.udp import (
    PRESETS,
    UdpConfig,
    UdpReceiver,
    default_positions,
    expected_frame,
    module_images,
    schedule,
    send,
)

GEO = PRESETS["jungfrau"]
PPF = GEO.packets_per_frame


def free_udp_ports(n: int) -> int:
    """A first port of n consecutive free UDP ports on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        try:
            socks = []
            for k in range(n):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(t)
                t.bind(("127.0.0.1", first + k))
            return first
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free UDP port range")


@dataclass
class Received:
    frames: dict[int, tuple[int, int, np.ndarray]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    events: list = field(default_factory=list)


def receive(sched: np.ndarray, images: np.ndarray, positions: np.ndarray, options: str,
            modules: int, before_send=None, rate_pps: float = 60_000) -> Received:
    """Run a receiver on a fresh ring, send `sched` from another thread (native, no GIL), and
    consume every frame published until the receiver is done (its `frames=` option).

    Paced: this test's consumer copies each frame under the GIL on a shared 2-core machine; at
    the sender's full rate it can fall behind, and the ring-full frames (reported, not lost
    silently) would make the frame checks below meaningless."""
    port = free_udp_ports(modules)
    cfg = UdpConfig.from_endpoint(f"127.0.0.1:{port}?modules={modules}&{options}")
    name = f"udp-{os.getpid()}-{threading.get_ident() % 10000}"
    out = Received()
    with Ring.create(name, slots=32, slot_bytes=int(np.prod(cfg.shape)) * GEO.bytes_per_pixel) \
            as ring:
        rx = UdpReceiver(cfg, ring, run_id=7)
        consumer = ring.consumer("workers")
        rx.start()
        if before_send:
            before_send(port)
        sender = threading.Thread(target=send, args=("127.0.0.1", cfg.ports, GEO, sched, images,
                                                     positions, rate_pps))
        sender.start()
        try:
            for _ in range(200):  # bounded: at most ~100 s of 0.5 s waits
                try:
                    got = consumer.acquire(timeout=0.5, max_frames=4)
                except RingTimeout:
                    if rx.stats()["done"] and not sender.is_alive():
                        break
                    continue
                for f in got:
                    out.frames[f.frame_id] = (f.header.flags, f.header.parts, f.data.copy())
                consumer.release(got)
        finally:
            sender.join(60)
            rx.stop()
            out.stats = rx.stats()
            out.events = rx.events()
            consumer.close()
    return out


def lost_of(sched: np.ndarray, dropped: np.ndarray, first: int) -> dict[int, dict[int, list]]:
    """{frame id: {module: [packets]}} of the dropped schedule rows."""
    lost: dict[int, dict[int, list]] = {}
    for row in sched[dropped]:
        lost.setdefault(int(row["frame"]) - first, {}).setdefault(int(row["module"]), []).append(
            int(row["packet"]))
    return lost


def check_frames(got: Received, images, positions, grid, frames: int, first: int,
                 lost: dict | None = None, fill: int = 0xFFFF) -> None:
    lost = lost or {}
    assert sorted(got.frames) == list(range(frames))
    for fid, (flags, parts, data) in got.frames.items():
        frame_lost = lost.get(fid, {})
        expected = expected_frame(GEO, images, positions, grid, fid + first, frame_lost, fill)
        assert np.array_equal(data.reshape(expected.shape), expected), f"frame {fid} differs"
        n_lost = sum(len(p) for p in frame_lost.values())
        assert bool(flags & FLAG_PARTIAL) == bool(n_lost), fid
        assert parts == len(images) * PPF - n_lost


def bitmap_of(frame_lost: dict[int, list], modules: int) -> bytes:
    bits = np.zeros(modules * PPF, bool)
    for m, packets in frame_lost.items():
        bits[[m * PPF + p for p in packets]] = True
    return np.packbits(bits, bitorder="little").tobytes()


@pytest.mark.timeout(60)
def test_every_packet_delivered_frames_byte_exact_no_extra_copy():
    images, positions = module_images(GEO, 1, seed=1), default_positions(1, (1, 1))
    sched = schedule(GEO, 100, 1, first=1000)
    got = receive(sched, images, positions, "frames=100&first=1000", 1)
    check_frames(got, images, positions, (1, 1), 100, 1000)
    module = got.stats["modules"][0]
    assert module["packets"] == 100 * PPF and module["duplicates"] == module["late"] == 0
    # The kernel's copy into the slot is the only one: nothing was moved afterwards.
    assert module["moved"] == 0
    assert got.stats["frames_complete"] == 100 and got.events == []


@pytest.mark.timeout(60)
def test_four_modules_assembled_into_their_places():
    # 2x2 grid with the modules in a shuffled order: each packet's rows are scattered to the
    # full image's rows (four iovecs per packet), the place comes from the header.
    positions = np.array([(1, 1), (0, 0), (1, 0), (0, 1)], np.uint16)
    images = module_images(GEO, 4, seed=2)
    sched = schedule(GEO, 30, 4, first=1)
    got = receive(sched, images, positions, "grid=2x2&frames=30", 4)
    check_frames(got, images, positions, (2, 2), 30, 1)
    assert got.frames[0][2].reshape(1024, 2048).shape == (1024, 2048)


@pytest.mark.timeout(60)
def test_one_percent_loss_reports_exactly_the_lost_packets():
    rng = np.random.default_rng(3)
    images, positions = module_images(GEO, 2, seed=3), default_positions(2, (2, 1))
    sched = schedule(GEO, 60, 2, first=1)
    dropped = rng.random(len(sched)) < 0.01
    dropped[[0, 1]] = False  # the first packets start the run at frame number 1
    got = receive(sched[~dropped], images, positions, "frames=60&first=1", 2)
    lost = lost_of(sched, dropped, 1)
    check_frames(got, images, positions, (2, 1), 60, 1, lost)
    partial = {frame - 1: bits for kind, frame, _parts, bits in got.events if kind == 1}
    assert set(partial) == set(lost)
    for fid, frame_lost in lost.items():
        assert partial[fid] == bitmap_of(frame_lost, 2)
    assert got.stats["frames_partial"] == len(lost)
    assert got.stats["frames_complete"] == 60 - len(lost)


@pytest.mark.timeout(60)
def test_reordered_and_duplicated_packets():
    rng = np.random.default_rng(4)
    images, positions = module_images(GEO, 1, seed=4), default_positions(1, (1, 1))
    sched = schedule(GEO, 40, 1, first=1)
    swap = np.flatnonzero(rng.random(len(sched) - 1) < 0.05)
    swap = swap[np.diff(swap, prepend=-2) > 1]  # disjoint adjacent pairs
    order = np.arange(len(sched))
    order[swap], order[swap + 1] = swap + 1, swap
    reordered = sched[order]
    dup = rng.random(len(sched)) < 0.02
    with_dups = np.concatenate([reordered, reordered[dup]])
    # duplicates follow soon after their original: insert each after the next few packets
    positions_dup = np.concatenate([np.arange(len(sched)), np.flatnonzero(dup) + 3.5])
    with_dups = with_dups[np.argsort(positions_dup, kind="stable")]
    got = receive(with_dups, images, positions, "frames=40", 1)
    check_frames(got, images, positions, (1, 1), 40, 1)
    module = got.stats["modules"][0]
    # a copy that comes after its frame was published is late, not a duplicate
    assert module["duplicates"] + module["late"] == int(dup.sum())
    assert module["packets"] == 40 * PPF


@pytest.mark.timeout(60)
def test_silent_module_does_not_stall_the_others():
    images, positions = module_images(GEO, 2, seed=5), default_positions(2, (2, 1))
    sched = schedule(GEO, 30, 2, first=1)
    sched = sched[sched["module"] == 0]  # module 1 never sends
    got = receive(sched, images, positions, "frames=30&frame_timeout_ms=20", 2)
    lost = {fid: {1: list(range(PPF))} for fid in range(30)}
    check_frames(got, images, positions, (2, 1), 30, 1, lost)
    assert got.stats["frames_partial"] == 30


@pytest.mark.timeout(60)
def test_late_module_waits_a_bounded_time_and_arrives_complete():
    images, positions = module_images(GEO, 2, seed=6), default_positions(2, (2, 1))
    sched = schedule(GEO, 40, 2, first=1)
    # module 1 sends each frame two frames after module 0 did (a steady lag)
    key = sched["frame"].astype(np.int64) * PPF * 2 + sched["packet"] * 2 + sched["module"]
    key[sched["module"] == 1] += 2 * PPF * 2
    got = receive(sched[np.argsort(key, kind="stable")], images, positions, "frames=40", 2)
    check_frames(got, images, positions, (2, 1), 40, 1)


@pytest.mark.timeout(60)
def test_module_restarting_its_counter_is_detected_and_reported():
    images, positions = module_images(GEO, 2, seed=7), default_positions(2, (2, 1))
    sched = schedule(GEO, 60, 2, first=1)
    restarted = (sched["module"] == 1) & (sched["frame"] > 40)
    sched["frame"][restarted] -= 40  # module 1 counts 1, 2, ... again after frame 40
    got = receive(sched, images, positions, "frames=60", 2)
    assert got.stats["modules"][1]["restarts"] == 1
    assert [e[:1] + e[2:3] for e in got.events if e[0] == 4] == [(4, 1)]
    lost = {fid: {1: list(range(PPF))} for fid in range(40, 60)}
    check_frames(got, images, positions, (2, 1), 60, 1, lost)


@pytest.mark.timeout(60)
def test_frames_that_never_came_are_reported_missing():
    images, positions = module_images(GEO, 1, seed=8), default_positions(1, (1, 1))
    sched = schedule(GEO, 50, 1, first=1)
    gone = np.isin(sched["frame"], [11, 12, 13, 30])
    got = receive(sched[~gone], images, positions, "frames=50&first=1", 1)
    assert sorted(got.frames) == [i for i in range(50) if i + 1 not in (11, 12, 13, 30)]
    missing = sorted(f for kind, frame, n, _ in got.events if kind == 2
                     for f in range(frame, frame + n))  # runs of consecutive frames
    assert missing == [11, 12, 13, 30]
    assert got.stats["frames_missing"] == 4


@pytest.mark.timeout(60)
def test_malformed_foreign_and_unknown_module_packets_never_touch_a_slot():
    images, positions = module_images(GEO, 1, seed=9), default_positions(1, (1, 1))
    sched = schedule(GEO, 20, 1, first=1)

    def garbage(port: int) -> None:
        header = struct.Struct("<QIIQQHHHHIHBB")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            payload = b"\xab" * GEO.payload_bytes
            s.sendto(b"short", ("127.0.0.1", port))
            s.sendto(header.pack(1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2) + payload[:100],
                     ("127.0.0.1", port))  # wrong size
            s.sendto(header.pack(1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 3, 9) + payload,
                     ("127.0.0.1", port))  # header version 9
            s.sendto(header.pack(1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2) + payload,
                     ("127.0.0.1", port))  # an EIGER packet
            s.sendto(header.pack(1, 0, 8, 0, 0, 0, 3, 0, 0, 0, 0, 3, 2) + payload,
                     ("127.0.0.1", port))  # module row 3 of a 1x1 grid
            s.sendto(header.pack(1, 0, 999, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2) + payload,
                     ("127.0.0.1", port))  # packet number out of range

    got = receive(sched, images, positions, "frames=20&first=1", 1, before_send=garbage)
    check_frames(got, images, positions, (1, 1), 20, 1)
    module = got.stats["modules"][0]
    assert (module["malformed"], module["foreign"], module["unknown_module"]) == (3, 2, 1)


def test_bad_endpoints_are_configuration_errors():
    with pytest.raises(ConfigError, match="unknown options"):
        UdpConfig.from_endpoint("127.0.0.1:5000?modulez=2")
    with pytest.raises(ConfigError, match="preset"):
        UdpConfig.from_endpoint("127.0.0.1:5000?preset=nope")
    with pytest.raises(ConfigError, match="grid"):
        UdpConfig.from_endpoint("127.0.0.1:5000?modules=4&grid=1x2")
    cfg = UdpConfig.from_endpoint("127.0.0.1:5000?modules=2")
    with Ring.create(f"udpbad-{os.getpid()}", slots=2, slot_bytes=1024) as ring, \
            pytest.raises(ConfigError, match="slot"):
        UdpReceiver(cfg, ring, 1)


def start_udp_roles(node, tmp_path, origin: str, extra_source=()):
    """Collector, two workers on the ring, and a source receiving `origin`, as a user starts
    them; returns when the source says every peer is ready (its ports are bound by then)."""
    control, fanin = f"ipc://{tmp_path}/control", f"ipc://{tmp_path}/fanin"
    ring = f"ring://udp-e2e-{os.getpid()}"
    timing = ("--peer-timeout", "5", "--ready-timeout", "30")
    collector = node("collector", "--control", control, "--input", fanin, "--file",
                     str(tmp_path / "udp.h5"), "--drain-timeout", "5", *timing)
    workers = [node("worker", "--control", control, "--input", ring, "--output", fanin,
                    "--name", f"w{i}", "--index", str(i), *timing) for i in range(2)]
    source = node("source", "--control", control, "--data", ring, "--workers", "2",
                  "--from", origin, *timing, *extra_source)
    wait_run_started(source)
    return source, collector, workers


@pytest.mark.timeout(120)
def test_udp_source_through_workers_to_the_file(node, tmp_path):
    """The CLI as a user runs it: packets with 1 % loss and two frames that never came; the
    file holds every frame, partial ones flagged with their lost-packet bitmap, and the ledger
    names the missing ones."""
    port = free_udp_ports(1)
    path = tmp_path / "udp.h5"
    source, collector, workers = start_udp_roles(
        node, tmp_path, f"udp://127.0.0.1:{port}?frames=40&first=1")
    images, positions = module_images(GEO, 1, seed=10), default_positions(1, (1, 1))
    sched = schedule(GEO, 40, 1, first=1)
    rng = np.random.default_rng(10)
    dropped = (rng.random(len(sched)) < 0.01) & (sched["frame"] > 1)
    dropped |= np.isin(sched["frame"], [20, 21])
    # paced: two workers forwarding 1 MiB frames over ipc on 2 shared cores are slower than
    # the sender's full rate, and frames then (correctly) find the ring full
    send("127.0.0.1", [port], GEO, sched[~dropped], images, positions, rate_pps=20_000)
    code, _out, err = finish(source)
    assert code == ExitCode.FRAMES_MISSING, err
    assert finish(collector)[0] == ExitCode.FRAMES_MISSING
    for proc in workers:
        assert finish(proc)[0] == ExitCode.OK
    run = read_run(path)
    assert set(run.missing) == {19, 20}, run.missing
    assert all("no packet" in reason for reason in run.missing.values())
    lost = lost_of(sched, dropped & ~np.isin(sched["frame"], [20, 21]), 1)
    with h5py.File(path) as f:
        flags, parts = f["entry/frames/flags"][()], f["entry/frames/parts"][()]
        partial_ids = f["entry/partial/frame_id"][()].tolist()
        bitmaps = f["entry/partial/missing_parts"][()]
        counters = dict(zip(f["entry/stream_node/counters"].attrs["names"],
                            f["entry/stream_node/counters"][()], strict=True))
    assert partial_ids == sorted(lost), str(run.counters["reports"]["source"])
    for row, fid in enumerate(partial_ids):
        assert bitmaps[row].tobytes() == bitmap_of(lost[fid], 1)
    assert counters["partial"] == len(lost)
    for fid in range(40):
        if fid in (19, 20):
            continue
        n_lost = sum(len(p) for p in lost.get(fid, {}).values())
        assert bool(flags[fid] & FLAG_PARTIAL) == bool(n_lost)
        assert parts[fid] == PPF - n_lost
        expected = expected_frame(GEO, images, positions, (1, 1), fid + 1, lost.get(fid))
        assert np.array_equal(run.frames[fid], expected), fid


@pytest.mark.timeout(60)
def test_detector_that_never_sends_ends_the_run_with_a_clear_error(node, tmp_path):
    port = free_udp_ports(1)
    source, collector, workers = start_udp_roles(
        node, tmp_path, f"udp://127.0.0.1:{port}?frames=5&wait_s=1")
    code, _out, err = finish(source)
    assert code == ExitCode.PEER_TIMEOUT
    assert f"no packet on 127.0.0.1 ports [{port}] within 1 s" in err
    for proc in (collector, *workers):
        assert finish(proc)[0] != ExitCode.OK  # told the run was aborted; none hangs


def test_a_port_in_use_is_refused_by_name():
    port = free_udp_ports(1)
    cfg = UdpConfig.from_endpoint(f"127.0.0.1:{port}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, \
            Ring.create(f"udpbusy-{os.getpid()}", slots=16, slot_bytes=1 << 20) as ring:
        taken.bind(("127.0.0.1", port))
        with pytest.raises(ConfigError, match=f"cannot bind 127.0.0.1 ports \\[{port}\\]"):
            UdpReceiver(cfg, ring, 1)


@pytest.mark.timeout(30)
def test_udp_source_needs_a_ring(node, tmp_path):
    source = node("source", "--control", f"ipc://{tmp_path}/c", "--data",
                  f"ipc://{tmp_path}/d", "--from", "udp://127.0.0.1:5999?frames=3")
    code, _out, err = finish(source)
    assert code == ExitCode.CONFIG and "ring://" in err
