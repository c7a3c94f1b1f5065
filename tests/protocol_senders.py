"""Detector senders written from the published protocol descriptions, for the protocol tests.

Run as a separate process: `python tests/protocol_senders.py PROTOCOL [options]`. The sender binds
a free loopback port, prints `ENDPOINT tcp://127.0.0.1:PORT` on its first line, then sends one
series (ZeroMQ PUSH blocks until the receiver connects, so nothing is lost to a slow joiner; the
karabo PUB variant waits for the subscription itself, through XPUB) and exits once ZeroMQ has
delivered everything (or after 10 s if the receiver went away). `--fault` makes it break the
protocol in one documented way.

Frame content and compressed blobs come from `frame()` and `bslz4_blob()`, which the tests call
too, so they know exactly what was sent. The blobs use a bitshuffle block of 1024 elements, not
the 8 KiB block stream-node's own compressor picks: a stored chunk equal to the sent blob proves
the bytes passed through untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import time

import bitshuffle
import lz4.block
import numpy as np
import zmq

SEND_BLOCK = 1024  # bitshuffle block (elements) of the sent blobs
FAULTS = ("none", "unknown_htype", "image_before_header", "second_header", "wrong_size",
          "corrupt_blob", "no_end", "skip_train", "bad_hash", "huge_id", "overflow_id",
          "empty_hash", "no_hash", "headerless", "interrupted")
# The frame number a detector's damaged header gives the fault frame instead of its own.
ABSURD_IDS = {"huge_id": 10**12, "overflow_id": 2**70}


def frame(i: int, shape: tuple[int, ...], dtype: str, seed: int = 1) -> np.ndarray:
    """Frame i of a series: Poisson counts (compressible like real data), stamped with i."""
    rng = np.random.default_rng(seed * 100003 + i)
    a = rng.poisson(1.5, size=shape).astype(dtype)
    a.reshape(-1)[0] = i % 251
    return a


def bslz4_blob(array: np.ndarray, block: int | None = None) -> bytes:
    """A bitshuffle/LZ4 blob in the HDF5 filter-32008 framing, as DECTRIS detectors send:
    u64 BE total bytes, u32 BE block bytes, then the compressed blocks. Blocks of `block`
    elements (default SEND_BLOCK, which the benchmark sets to bitshuffle's own default)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    block = block or SEND_BLOCK
    body = bitshuffle.compress_lz4(flat, block)
    return struct.pack(">QI", flat.nbytes, block * flat.itemsize) + body.tobytes()


def lz4_hdf5_blob(array: np.ndarray, block: int = 1 << 16) -> bytes:
    """Plain LZ4 in the HDF5 LZ4 filter framing (stream2 "lz4"), blocks of `block` bytes."""
    raw = np.ascontiguousarray(array).tobytes()
    out = [struct.pack(">QI", len(raw), block)]
    for start in range(0, len(raw), block):
        part = raw[start:start + block]
        packed = lz4.block.compress(part, store_size=False)
        if len(packed) >= len(part):
            packed = part
        out.append(struct.pack(">I", len(packed)) + packed)
    return b"".join(out)


def corrupt(blob: bytes) -> bytes:
    """A blob cut short mid-block, as a lost packet or truncated write leaves it."""
    return blob[: max(13, len(blob) * 2 // 3)]


def _bind(kind: int) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 10_000)  # deliver what is queued, but never hang on exit
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"ENDPOINT tcp://127.0.0.1:{port}", flush=True)
    return ctx, sock


def _jsonb(obj: dict) -> bytes:
    return json.dumps(obj).encode()


# -- DECTRIS SIMPLON stream v1 ------------------------------------------------------------------

def dectris_config(args: argparse.Namespace) -> dict:
    y, x = args.shape
    return {
        "auto_summation": True, "beam_center_x": 31.5, "beam_center_y": 20.25,
        "bit_depth_image": np.dtype(args.dtype).itemsize * 8, "bit_depth_readout": 12,
        "compression": {"<": "none", "lz4<": "lz4"}.get(args.encoding, "bslz4"),
        "count_time": 0.0099, "countrate_correction_applied": True,
        "countrate_correction_count_cutoff": 126902, "description": "Dectris EIGER2 Si 500K",
        "detector_distance": 0.125, "detector_number": "E-32-0123", "frame_time": 0.01,
        "nimages": args.frames, "ntrigger": 1, "omega_increment": 0.1, "omega_start": 10.0,
        "photon_energy": 12398.4,
        "sensor_material": "Si", "sensor_thickness": 0.00045, "software_version": "2022.1.2",
        "threshold_energy": 6199.2, "trigger_mode": "ints", "wavelength": 1.0,
        "x_pixel_size": 7.5e-05, "y_pixel_size": 7.5e-05,
        "x_pixels_in_detector": x, "y_pixels_in_detector": y,
    }


def dectris_arrays(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    y, x = shape
    # Per-pixel gains like a real flatfield: noise, which compresses poorly (a 4M-pixel
    # detector's flatfield stays about 16 MiB in the run's START message).
    flat = (1 + 0.05 * np.random.default_rng(7).standard_normal((y, x))).astype(np.float32)
    mask = np.zeros((y, x), np.uint32)
    mask[:, x // 2] = 1  # a module gap
    mask[3, 5] = 8
    table = np.linspace(0, 1e6, 2 * x, dtype=np.float32).reshape(2, x)
    return {"flatfield": flat, "pixel_mask": mask, "countrate_correction_table": table}


def dectris_header(args: argparse.Namespace, series: int) -> list[bytes]:
    parts = [_jsonb({"htype": "dheader-1.0", "series": series, "header_detail": args.detail})]
    if args.detail in ("basic", "all"):
        parts.append(_jsonb(dectris_config(args)))
    if args.detail == "all":
        arrays = dectris_arrays(args.shape)
        for htype, name, dtype in (("dflatfield-1.0", "flatfield", "float32"),
                                   ("dpixelmask-1.0", "pixel_mask", "uint32"),
                                   ("dcountrate_table-1.0", "countrate_correction_table",
                                    "float32")):
            a = arrays[name]
            parts += [_jsonb({"htype": htype, "shape": [a.shape[1], a.shape[0]], "type": dtype}),
                      a.tobytes()]
    return parts


def dectris_blob(args: argparse.Namespace, i: int) -> bytes:
    a = frame(i, args.shape, args.dtype, args.seed)
    if args.encoding == "<":
        return a.tobytes()
    if args.encoding == "lz4<":
        return lz4.block.compress(a.tobytes(), store_size=False)
    return bslz4_blob(a)


def dectris_image(args: argparse.Namespace, series: int, i: int,
                  blob: bytes | None = None) -> list[bytes]:
    """Frame i's message; `blob` (the benchmark's, built once) instead of frame i's own."""
    y, x = args.shape
    blob = dectris_blob(args, i) if blob is None else blob
    if args.fault == "corrupt_blob" and i == args.fault_frame:
        blob = corrupt(blob)
    if args.fault == "headerless":  # as simulators that call bitshuffle directly send it
        a = frame(i, args.shape, args.dtype, args.seed)
        blob = bitshuffle.compress_lz4(np.ascontiguousarray(a).reshape(-1), 0).tobytes()
    size = len(blob)
    if args.fault == "wrong_size" and i == args.fault_frame:
        x += 8  # the description no longer matches the series
    start = 1_000_000 * i
    digest = hashlib.md5(blob).hexdigest()
    if args.fault == "bad_hash" and i == args.fault_frame:
        digest = hashlib.md5(blob[1:]).hexdigest()  # as if a byte went astray on the way
    number = ABSURD_IDS.get(args.fault, i) if i == args.fault_frame else i
    image = {"htype": "dimage-1.0", "series": series, "frame": number, "hash": digest}
    if args.fault == "empty_hash" and i == args.fault_frame:
        image["hash"] = ""  # a detector whose hashing is off
    if args.fault == "no_hash" and i == args.fault_frame:
        del image["hash"]
    return [_jsonb(image),
            _jsonb({"htype": "dimage_d-1.0", "shape": [x, y], "type": args.dtype,
                    "encoding": args.encoding, "size": size}),
            blob,
            _jsonb({"htype": "dconfig-1.0", "start_time": start, "stop_time": start + 990_000,
                    "real_time": 990_000})]


def send_dectris(args: argparse.Namespace) -> None:
    ctx, sock = _bind(zmq.PUSH)
    for k in range(args.series_count):  # a detector armed again `--gap-ms` after each end
        if k:
            time.sleep(args.gap_ms / 1000)
        _dectris_series(args, sock, args.series + k)
        print(f"SENT {args.series + k} {time.time():.6f}", flush=True)
    time.sleep(args.stay_s)  # connected, sending nothing: a detector not armed yet
    sock.close()
    ctx.term()


def _dectris_series(args: argparse.Namespace, sock: zmq.Socket, series: int) -> None:
    if args.fault == "image_before_header":
        sock.send_multipart(dectris_image(args, series, 0))
    sock.send_multipart(dectris_header(args, series))
    for i in range(args.frames):
        if args.fault == "no_end" and i == args.fault_frame:
            break  # the detector (or its network) stops mid-series
        if args.fault == "interrupted" and i == args.fault_frame and series == args.series:
            return  # the first series is cut off: the next one's header comes without its end
        if i == args.fault_frame and args.fault == "unknown_htype":
            sock.send_multipart([_jsonb({"htype": "dstatus-9.9", "series": series}), b"?"])
        if i == args.fault_frame and args.fault == "second_header":
            sock.send_multipart(dectris_header(args, series))
        sock.send_multipart(dectris_image(args, series, i), copy=False)
    if args.fault != "no_end":
        sock.send_multipart([_jsonb({"htype": "dseries_end-1.0", "series": series})])


# -- DECTRIS stream2 (CBOR) ---------------------------------------------------------------------

TYPED_ARRAY_TAGS = {"uint8": 64, "uint16": 69, "uint32": 70, "float32": 85}  # RFC 8746, LE


def _cbor():
    import cbor2

    return cbor2


def stream2_array(a: np.ndarray, compression: str) -> object:
    """An RFC 8746 multi-dimensional array (tag 40) of a typed array; the byte string is
    wrapped in DECTRIS tag 56500 when compressed."""
    cbor2 = _cbor()
    if compression == "bslz4":
        data = cbor2.CBORTag(56500, ["bslz4", a.dtype.itemsize, bslz4_blob(a)])
    elif compression == "lz4":
        data = cbor2.CBORTag(56500, ["lz4", 0, lz4_hdf5_blob(a)])
    else:
        data = np.ascontiguousarray(a).tobytes()
    return cbor2.CBORTag(40, [list(a.shape), cbor2.CBORTag(TYPED_ARRAY_TAGS[str(a.dtype)], data)])


def stream2_message(body: dict) -> bytes:
    cbor2 = _cbor()
    return cbor2.dumps(cbor2.CBORTag(55799, body))  # self-described CBOR, as DECTRIS sends


def stream2_start(args: argparse.Namespace) -> bytes:
    cbor2 = _cbor()
    y, x = args.shape
    arrays = dectris_arrays(args.shape)
    body = {
        "type": "start", "series_id": args.series, "series_unique_id": f"test-{args.series}",
        "arm_date": cbor2.CBORTag(0, "2026-11-27T10:00:00Z"),
        "beam_center_x": 31.5, "beam_center_y": 20.25, "channels": ["threshold_1"],
        "count_time": 0.0099, "countrate_correction_enabled": True,
        "detector_description": "Dectris EIGER2 Si 500K", "detector_serial_number": "E-32-0123",
        "detector_translation": [0.0, 0.0, 0.125], "flatfield_enabled": True,
        "frame_time": 0.01, "goniometer": {"omega": {"increment": 0.1, "start": 10.0}},
        "image_size_x": x, "image_size_y": y, "incident_energy": 12398.4,
        "incident_wavelength": 1.0, "number_of_images": args.frames,
        "pixel_mask_enabled": True, "pixel_size_x": 7.5e-05, "pixel_size_y": 7.5e-05,
        "saturation_value": 126902, "sensor_material": "Si", "sensor_thickness": 0.00045,
        "threshold_energy": {"threshold_1": 6199.2},
        "virtual_pixel_interpolation_enabled": True,
    }
    if args.detail == "all":
        body["flatfield"] = {"threshold_1": stream2_array(arrays["flatfield"], "none")}
        body["pixel_mask"] = {"threshold_1": stream2_array(arrays["pixel_mask"], "none")}
        table = arrays["countrate_correction_table"].reshape(-1)
        body["countrate_correction_lookup_table"] = cbor2.CBORTag(85, table.tobytes())
    return stream2_message(body)


def stream2_image(args: argparse.Namespace, i: int, a: np.ndarray | None = None) -> bytes:
    """Image i's message; `a` (the benchmark's, built once) instead of frame i's pixels."""
    a = frame(i, args.shape, args.dtype, args.seed) if a is None else a
    array = stream2_array(a, args.encoding)
    if args.fault == "corrupt_blob" and i == args.fault_frame:
        tag = array.value[1].value
        tag.value[2] = corrupt(tag.value[2])
    if args.fault == "wrong_size" and i == args.fault_frame:
        array.value[0] = [a.shape[0] + 1, a.shape[1]]
    base = 100_000_000  # time base (Hz) of the rationals
    return stream2_message({
        "type": "image", "series_id": args.series, "series_unique_id": f"test-{args.series}",
        "image_id": i, "real_time": [990_000, base], "series_date": "2026-11-27T10:00:01Z",
        "start_time": [1_000_000 * i, base], "stop_time": [1_000_000 * i + 990_000, base],
        "data": {"threshold_1": array}, "user_data": {"note": "stream-node test"},
    })


def send_stream2(args: argparse.Namespace) -> None:
    ctx, sock = _bind(zmq.PUSH)
    if args.fault == "image_before_header":
        sock.send(stream2_image(args, 0))
    sock.send(stream2_start(args))
    for i in range(args.frames):
        if args.fault == "no_end" and i == args.fault_frame:
            break
        if i == args.fault_frame and args.fault == "unknown_htype":
            sock.send(stream2_message({"type": "status", "series_id": args.series}))
        if i == args.fault_frame and args.fault == "second_header":
            sock.send(stream2_start(args))
        sock.send(stream2_image(args, i), copy=False)
    if args.fault != "no_end":
        sock.send(stream2_message({"type": "end", "series_id": args.series,
                                   "series_unique_id": f"test-{args.series}"}))
    sock.close()
    ctx.term()


# -- karabo-bridge ----------------------------------------------------------------------------

KARABO_SOURCE = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
FIRST_TRAIN = 10000


def msgpack_numpy_encode(obj: object) -> object:
    """msgpack-numpy's encoding of an array, as karabo-bridge protocol 1.0 sends them: a map
    with byte-string keys nd, type (the dtype's str), kind, shape and data."""
    if isinstance(obj, np.ndarray):
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": obj.shape,
                b"data": np.ascontiguousarray(obj).data}
    if isinstance(obj, np.number):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def karabo_message(args: argparse.Namespace, i: int, a: np.ndarray | None = None) -> list:
    """One train as karabo_bridge's serializer makes it. Protocol 2.2: per source a msgpack
    header + data pair, then a header + raw bytes pair per array; 1.0: one msgpack part."""
    import msgpack

    pack = msgpack.Packer(use_bin_type=True).pack
    tid = FIRST_TRAIN + i
    sec = 1_700_000_000 + i // 10
    frac = (i % 10) * 100_000_000_000_000_000
    meta = {"source": KARABO_SOURCE, "timestamp": sec + frac / 1e18,
            "timestamp.sec": str(sec), "timestamp.frac": f"{frac:018d}",
            "timestamp.tid": tid, "ignored_keys": []}
    a = frame(i, args.shape, args.dtype, args.seed) if a is None else a
    if args.fault == "wrong_size" and i == args.fault_frame:
        a = a[:-1]
    cell = np.arange(4, dtype=np.uint16) + i
    data = {"header.pulseCount": 4, "image.passport": ["offset"], "detector.trainId": tid}
    if getattr(args, "karabo_version", "2.2") == "1.0":
        # One msgpack map of sources; each source's arrays inline (msgpack-numpy's encoding)
        # and its metadata under "metadata" (karabo_bridge's `_serialize_old`).
        body = {**data, "image.cellId": cell, "image.data": a, "metadata": meta}
        return [msgpack.packb({KARABO_SOURCE: body}, use_bin_type=True,
                              default=msgpack_numpy_encode)]
    return [pack({"source": KARABO_SOURCE, "content": "msgpack", "metadata": meta}),
            pack(data),
            pack({"source": KARABO_SOURCE, "content": "array", "path": "image.cellId",
                  "dtype": str(cell.dtype), "shape": list(cell.shape)}),
            cell.data,
            pack({"source": KARABO_SOURCE, "content": "array", "path": "image.data",
                  "dtype": str(a.dtype), "shape": list(a.shape)}),
            a.data]


def send_karabo(args: argparse.Namespace) -> None:
    kind = {"req": zmq.REP, "pull": zmq.PUSH, "sub": zmq.XPUB}[args.pattern]
    ctx, sock = _bind(kind)
    if args.pattern == "sub":
        sock.recv()  # the subscription: from here on the subscriber gets every train
    trains = [i for i in range(args.frames)
              if not (args.fault == "skip_train" and i == args.fault_frame)]
    if args.fault == "no_end":
        trains = trains[:args.fault_frame]  # the bridge stops sending (and has no end message)
    for i in trains:
        if args.pattern == "req" and sock.recv() != b"next":
            sock.send(b"Error: bad request")
            continue
        sock.send_multipart(karabo_message(args, i), copy=False)
        if args.fault == "unknown_htype" and i == args.fault_frame and args.pattern != "req":
            sock.send_multipart([b"\x93garbage", b"x"])
    sock.close()
    ctx.term()


# -- for the tests: start a sender, run the pipeline against it ----------------------------------

def _sender_fixture():
    """Start `protocol_senders.py ARGS` as a process; returns its endpoint. Killed at teardown."""
    import subprocess

    started: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        started.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("ENDPOINT "), proc.stderr.read()
        return line.split()[1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def run_series(node, ipc, tmp_path, sender, protocol: str, scheme: str, *sender_args: str,
               frames: int = 8, timeout: float | None = 3.0, query: str = "", extra_source=()):
    """Send one series with `protocol`, collect it through source, one worker and the
    collector (real processes); returns (source exit code, its stderr, the run, the path).
    `timeout` is the endpoint's ?timeout= (None: the source's --origin-timeout applies)."""
    from conftest import finish
    from stream_node import read_run
    from test_pipeline import start_roles

    endpoint = sender(protocol, "--frames", str(frames), *sender_args)
    path = tmp_path / "run.h5"
    options = "&".join(([f"timeout={timeout}"] if timeout is not None else [])
                       + ([query.lstrip("&")] if query else []))
    source, collector, workers = start_roles(
        node, ipc, path, 1, frames=frames,
        extra_source=("--from", f"{scheme}+{endpoint}" + (f"?{options}" if options else ""),
                      *extra_source))
    code, _out, err = finish(source)
    for proc in (collector, *workers):
        finish(proc)
    assert path.exists(), f"no file written; source exit code {code}, stderr:\n{err[-3000:]}"
    return code, err, read_run(path), path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("protocol", choices=["dectris", "stream2", "karabo"])
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--shape", type=lambda s: tuple(int(n) for n in s.split("x")),
                   default=(48, 64))
    p.add_argument("--dtype", default="uint16")
    p.add_argument("--encoding", default="bs16-lz4<",
                   help="dectris: <, lz4<, bs16-lz4<, bs32-lz4<; stream2: none, bslz4, lz4")
    p.add_argument("--detail", default="basic", choices=["none", "basic", "all"])
    p.add_argument("--series", type=int, default=7)
    p.add_argument("--series-count", type=int, default=1,
                   help="dectris: send this many series, one after the other")
    p.add_argument("--stay-s", type=float, default=0.0,
                   help="dectris: stay connected this long after the last series")
    p.add_argument("--gap-ms", type=float, default=10.0,
                   help="dectris: the detector arms again this long after a series ended")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pattern", default="req", choices=["req", "pull", "sub"])
    p.add_argument("--karabo-version", default="2.2", choices=["1.0", "2.2"])
    p.add_argument("--fault", default="none", choices=FAULTS)
    p.add_argument("--fault-frame", type=int, default=3)
    args = p.parse_args(argv)
    {"dectris": send_dectris, "stream2": send_stream2, "karabo": send_karabo}[args.protocol](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
