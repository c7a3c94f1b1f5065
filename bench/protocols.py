"""Detector protocols: ingest rate of each origin against raw pyzmq, and compressed pass-through
against decompress-then-recompress.

    python bench/protocols.py          # quick: 40 frames of 4 MiB per case
    python bench/protocols.py --full   # 200 frames per case

Ingest: a sender thread pushes prebuilt messages (4 MiB uint16 frames, raw and bitshuffle/LZ4)
over tcp loopback; the baseline receives the same messages with `recv_multipart(copy=False)` and
nothing else, the origin parses, checks (bslz4: block structure) and hands each frame to an output
that takes it at once. Floor: origin >= 0.9x baseline.

Pass-through: frames from the DECTRIS v1 origin written with `write_direct_chunk` into a
filter-32008 dataset (what the collector does with a passed-through frame) against the same
frames decompressed and recompressed on the way (what a pipeline without pass-through does).
In-process, one core, so the ratio is the data path's, not process start-up's. Floor: >= 3x.
Copies per frame (user space): raw pyzmq 0; origin v1/karabo 0, stream2 1 (cbor2 copies the
byte string); pass-through 0 before the file, recompressing 2 (decompress, compress).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import protocol_senders as ps
from stream_node import compression
from stream_node.origins import OriginOptions, open_origin
from stream_node.protocols import chunks

SHAPE = (1024, 2048)  # 4 MiB of uint16


class TakeAll:
    """An output that takes every frame at once (the ingest path alone is measured)."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.writer = None

    def put(self, header, payload, timeout_ms):
        self.frames += 1
        self.bytes += memoryview(payload).nbytes
        return True

    def end(self):
        pass


class NoControl:
    def poll(self):
        pass

    def stalled(self, stall):
        pass


def args_for(protocol: str, encoding: str, frames: int) -> argparse.Namespace:
    return argparse.Namespace(shape=SHAPE, dtype="uint16", frames=frames, encoding=encoding,
                              detail="basic", series=1, seed=1, fault="none", fault_frame=-1,
                              pattern="pull")


def messages(protocol: str, encoding: str, frames: int) -> tuple[list, list, list]:
    """(header messages, frame messages, end messages) as lists of multipart messages."""
    a = args_for(protocol, encoding, frames)
    if protocol == "dectris":
        return ([ps.dectris_header(a, 1)], [ps.dectris_image(a, 1, i) for i in range(frames)],
                [[ps._jsonb({"htype": "dseries_end-1.0", "series": 1})]])
    if protocol == "stream2":
        end = ps.stream2_message({"type": "end", "series_id": 1})
        return ([[ps.stream2_start(a)]], [[ps.stream2_image(a, i)] for i in range(frames)],
                [[end]])
    return [], [ps.karabo_message(a, i) for i in range(frames)], []


def serve(sock: zmq.Socket, batches: list[list]) -> None:
    for batch in batches:
        for msg in batch:
            sock.send_multipart(msg, copy=False)


def ingest(protocol: str, encoding: str, frames: int) -> tuple[float, float, float, float]:
    """(baseline frames/s, GB/s, origin frames/s, GB/s) for one protocol and encoding."""
    head, body, end = messages(protocol, encoding, frames)
    wire = sum(sum(memoryview(p).nbytes for p in m) for m in body)
    ctx = zmq.Context.instance()
    results = []
    for mode in ("pyzmq", "origin"):
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        thread = threading.Thread(target=serve, args=(push, [head, body, end]))
        thread.start()
        if mode == "pyzmq":
            pull = ctx.socket(zmq.PULL)
            pull.connect(f"tcp://127.0.0.1:{port}")
            for _ in head:
                pull.recv_multipart(copy=False)
            t0 = time.perf_counter()
            for _ in body:
                pull.recv_multipart(copy=False)
            dt = time.perf_counter() - t0
            pull.close(linger=0)
        else:
            scheme = {"dectris": "dectris", "stream2": "dectris2", "karabo": "karabo"}[protocol]
            query = f"&pattern=pull&trains={frames}" if protocol == "karabo" else ""
            origin = open_origin(f"{scheme}+tcp://127.0.0.1:{port}?timeout=10{query}",
                                 OriginOptions(frames=frames))
            t0 = time.perf_counter()  # stream2 and karabo hold their first frame: counted here
            done = origin.emit(TakeAll(), 1, NoControl())
            dt = time.perf_counter() - t0
            origin.close()
            assert done.sent == frames and not done.missing, done
        thread.join()
        push.close()
        results += [frames / dt, wire / dt / 1e9]
    return tuple(results)


def passthrough(frames: int) -> tuple[float, float]:
    """(pass-through frames/s, recompressing frames/s) into a filter-32008 dataset."""
    compression.set_codec_threads(1)
    blobs = [ps.bslz4_blob(ps.frame(i, SHAPE, "uint16")) for i in range(min(frames, 16))]
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for recompress in (False, True):
            path = Path(tmp) / f"run{int(recompress)}.h5"
            with h5py.File(path, "w", libver="latest") as f:
                dset = f.create_dataset("data", shape=(frames, *SHAPE), dtype=np.uint16,
                                        chunks=(1, *SHAPE), **compression.hdf5_filter())
                out = np.empty(SHAPE, np.uint16)
                t0 = time.perf_counter()
                for i in range(frames):
                    blob = blobs[i % len(blobs)]
                    chunks.check_bslz4(blob, out.nbytes, 2)
                    if recompress:
                        pixels = compression.decompress(blob, SHAPE, out.dtype, out=out)
                        blob = compression.compress(pixels)
                    dset.id.write_direct_chunk((i, 0, 0), blob)
                f.flush()
                rates.append(frames / (time.perf_counter() - t0))
    return rates[0], rates[1]


def cost_of_checks() -> tuple[float, float]:
    """Microseconds per 4 MiB frame: the structure walk vs a full decompress."""
    blob = ps.bslz4_blob(ps.frame(0, SHAPE, "uint16"))
    out = np.empty(SHAPE, np.uint16)
    chunks.check_bslz4(blob, out.nbytes, 2)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        chunks.check_bslz4(blob, out.nbytes, 2)
    walk = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        compression.decompress(blob, SHAPE, out.dtype, out=out)
    full = (time.perf_counter() - t0) / n * 1e6
    return walk, full


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="200 frames per case (default 40)")
    frames = 200 if p.parse_args(argv).full else 40
    compression.set_codec_threads(1)
    print(f"frames of {SHAPE[0]}x{SHAPE[1]} uint16 (4 MiB), {frames} per case, tcp loopback\n")
    print("| protocol | payload | raw pyzmq frames/s | GB/s | origin frames/s | GB/s | ratio |"
          " floor |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    ok = True
    cases = [("dectris", "bs16-lz4<"), ("dectris", "<"), ("stream2", "bslz4"),
             ("stream2", "none"), ("karabo", "raw")]
    for protocol, encoding in cases:
        ingest(protocol, encoding, 8)  # warm-up: imports, allocator, caches (steady state)
        base, base_gb, rate, gb = ingest(protocol, encoding, frames)
        ratio = rate / base
        ok &= ratio >= 0.9
        print(f"| {protocol} | {encoding} | {base:.0f} | {base_gb:.2f} | {rate:.0f} | {gb:.2f} | "
              f"{ratio:.2f}x | {'ok' if ratio >= 0.9 else 'BELOW'} >= 0.9x |")
    fast, slow = passthrough(frames)
    ratio = fast / slow
    ok &= ratio >= 3
    print("\n| file path (DECTRIS bs16-lz4 frames) | frames/s | GB/s (raw) | ratio | floor |")
    print("| --- | ---: | ---: | ---: | --- |")
    nbytes = SHAPE[0] * SHAPE[1] * 2
    print(f"| decompress + recompress + write_direct_chunk | {slow:.0f} | "
          f"{slow * nbytes / 1e9:.2f} | 1.00x | |")
    print(f"| pass-through: check + write_direct_chunk | {fast:.0f} | "
          f"{fast * nbytes / 1e9:.2f} | {ratio:.1f}x | {'ok' if ratio >= 3 else 'BELOW'} >= 3x |")
    walk, full = cost_of_checks()
    print(f"\nper 4 MiB frame: block-structure check {walk:.1f} us, full decompress check "
          f"{full:.0f} us (endpoint option verify=full)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
