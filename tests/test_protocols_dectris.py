"""DECTRIS SIMPLON stream v1 in: a sender from the spec in its own process, the real pipeline
(source, worker, collector processes), and the file checked against what was sent."""

from __future__ import annotations

import hashlib
import json
import struct

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 for plain h5py reads)
import numpy as np
import pytest

import protocol_senders
from conftest import Endpoints, finish
from protocol_senders import bslz4_blob, dectris_arrays, frame
from stream_node import ExitCode, read_run
from stream_node.kernels import build_chain
from stream_node.model.errors import ConfigError
from stream_node.origins import open_origin
from stream_node.origins.base import OriginOptions
from test_pipeline import start_roles

SHAPE = (48, 64)
sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


def run_series(node, ipc, tmp_path, sender, *sender_args, **kw):
    return protocol_senders.run_series(node, ipc, tmp_path, sender, "dectris", "dectris",
                                       *sender_args, **kw)


def sent(i: int, dtype: str = "uint16") -> np.ndarray:
    return frame(i, SHAPE, dtype)


@pytest.mark.timeout(60)
def test_bslz4_series_is_stored_byte_identical_with_nxmx_metadata(node, endpoints, tmp_path,
                                                                  sender):
    """Through each transport the source can hand frames to workers by, the ring included
    (where a compressed frame is fewer bytes than its slot's pixels)."""
    code, err, run, path = run_series(node, endpoints, tmp_path, sender, "--encoding",
                                      "bs16-lz4<", "--detail", "all")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    for i in range(8):
        assert run.frames[i].tobytes() == sent(i).tobytes(), f"frame {i} differs"
    # Plain h5py + hdf5plugin: the chunks are the detector's bytes, the NXmx fields are there.
    with h5py.File(path, "r") as f:
        assert f["entry"].attrs["run_id"] == 7  # the detector's series id
        data = f["entry/data/data"]
        for i in range(8):
            _, chunk = data.id.read_direct_chunk((i, 0, 0))
            assert chunk == bslz4_blob(sent(i)), f"chunk {i} was not passed through untouched"
        assert np.array_equal(data[5], sent(5))
        det = f["entry/instrument/detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["distance"][()] == 0.125 and det["distance"].attrs["units"] == "m"
        assert det["x_pixel_size"].attrs["units"] == "m"
        assert det["beam_center_x"][()] == 31.5
        assert det["count_time"].attrs["units"] == "s"
        assert f["entry/instrument/beam/incident_wavelength"][()] == 1.0  # NXmx: NXbeam
        assert det["sensor_material"][()] == b"Si"
        assert det["sensor_thickness"][()] == 0.00045
        assert det["description"][()] == b"Dectris EIGER2 Si 500K"
        assert det["serial_number"][()] == b"E-32-0123"
        arrays = dectris_arrays(SHAPE)
        for name in ("flatfield", "pixel_mask", "countrate_correction_table"):
            assert np.array_equal(det[name][()], arrays[name]), name
        frames = f["entry/frames"]
        assert frames["start_time_ns"][()].tolist() == [1_000_000 * i for i in range(8)]
        assert frames["real_time_ns"][()].tolist() == [990_000] * 8
        start = json.loads(f["entry"].attrs["start"])
        assert start["series_id"] == 7 and start["protocol"] == "DECTRIS SIMPLON stream v1"
        assert start["detector"]["flatfield"]["data"].endswith(" bytes>")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("encoding", "dtype"), [("<", "uint32"), ("lz4<", "uint16")])
def test_raw_and_lz4_series_are_written_bit_exact(node, ipc, tmp_path, sender, encoding, dtype):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--encoding", encoding,
                                   "--dtype", dtype, "--detail", "basic")
    assert code == ExitCode.OK, err
    assert run.frames.dtype == np.dtype(dtype) and run.missing == {}
    for i in range(8):
        assert run.frames[i].tobytes() == sent(i, dtype).tobytes(), f"frame {i} differs"


@pytest.mark.timeout(60)
def test_header_detail_none_takes_geometry_from_first_image(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--detail", "none")
    assert code == ExitCode.OK, err
    assert run.received.all() and len(run.frames) == 8
    assert run.frames[7].tobytes() == sent(7).tobytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["ipc", "ring"])
def test_worker_with_kernels_decompresses_passed_through_frames(node, tmp_path, sender,
                                                                transport):
    """A kernel needs pixels: the worker decompresses the detector's chunk into its buffer
    first; the chain's output is what the reference computes from the sent frame."""
    spec = [{"kernel": "bin2x2"}]
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(spec))
    endpoint = sender("dectris", "--frames", "6", "--encoding", "bs16-lz4<")
    path = tmp_path / "run.h5"
    source, _, _ = start_roles(node, Endpoints(tmp_path, transport), path, 1, frames=6,
                               extra_source=("--from", f"dectris+{endpoint}?timeout=3",
                                             "--kernels", str(chain)))
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err
    run = read_run(path)
    reference = build_chain(spec, SHAPE, np.uint16, backend="reference")
    assert run.frames.shape == (6, 24, 32) and run.missing == {}
    for i in range(6):
        assert np.array_equal(run.frames[i], reference.apply(sent(i), frame_id=i)), f"frame {i}"


def counters(run) -> dict:
    return run.counters["reports"]["source"]["origin"]


@pytest.mark.timeout(60)
def test_unknown_htype_is_counted_and_every_frame_written(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "unknown_htype")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris_unknown_htype": 1}
    assert "unknown htype 'dstatus-9.9'" in err


@pytest.mark.timeout(60)
def test_image_before_header_is_counted_and_the_series_written(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "image_before_header")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris_out_of_sequence": 1}
    assert "dimage-1.0 (frame 0 of series 7) before any dheader-1.0" in err


@pytest.mark.timeout(60)
def test_second_header_mid_series_is_counted_and_ignored(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "second_header")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris_out_of_sequence": 1}
    assert "a second dheader-1.0 of series 7 mid-series (after 3 frames)" in err


@pytest.mark.timeout(60)
def test_wrong_size_frame_is_recorded_missing_with_reason(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "wrong_size")
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {3}
    assert "dectris: dimage_d-1.0 of frame 3: shape [x, y] = [72, 48]" in run.missing[3]
    assert counters(run) == {"dectris_wrong_size": 1}
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert run.frames[i].tobytes() == sent(i).tobytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verify", ["header", "structure"])
def test_corrupt_compressed_blob_is_recorded_missing_with_reason(node, ipc, tmp_path, sender,
                                                                 verify):
    """By default the worker that passes the blob on finds it corrupt (the source checks only
    its header); with ?verify=structure the source does, and counts it as a protocol error."""
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "corrupt_blob",
                                   query=f"verify={verify}")
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {3}
    workers = run.counters["reports"]["workers"]
    if verify == "header":
        assert run.missing[3].startswith("worker 0: frame 3 as it came: corrupt "
                                         "bitshuffle/LZ4 blob")
        assert counters(run) == {}
        assert sum(w["failed"] for w in workers.values()) == 1
    else:
        assert run.missing[3].startswith("detector: dectris: dimage-1.0 frame 3: frame 3: "
                                         "corrupt bitshuffle/LZ4 blob")
        assert counters(run) == {"dectris_corrupt": 1}
    assert sum(run.received) == 7


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verify", ["header", "structure"])
def test_bslz4_blobs_sent_without_the_filter_header_are_written_readable(
        node, ipc, tmp_path, sender, verify):
    """Some detector simulators send bitshuffle's blocks without the HDF5 filter's 12-byte
    header: before, every such frame was recorded corrupt. Now the source recognises such a
    blob (its blocks walk exactly to its end) and adds the header, so every reader decodes
    the chunk."""
    code, err, run, path = run_series(node, ipc, tmp_path, sender, "--encoding", "bs16-lz4<",
                                      "--fault", "headerless", query=f"verify={verify}")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    for i in range(8):
        assert run.frames[i].tobytes() == sent(i).tobytes(), f"frame {i} differs"
    with h5py.File(path, "r") as f:
        _, chunk = f["entry/data/data"].id.read_direct_chunk((2, 0, 0))
    assert struct.unpack(">QI", chunk[:12]) == (sent(2).nbytes, 8192)


@pytest.mark.timeout(60)
def test_stream_stopping_without_end_ends_the_run_after_the_timeout(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "no_end",
                                   "--fault-frame", "5", timeout=1.5)
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {5, 6, 7}
    assert all("the stream stopped without an end message (silent for 1.5 s)" in r
               for r in run.missing.values())
    assert counters(run) == {"dectris_no_end": 1}
    for i in range(5):
        assert run.frames[i].tobytes() == sent(i).tobytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verify", [True, False])
def test_blob_not_matching_its_md5_is_recorded_missing_when_checked(node, ipc, tmp_path,
                                                                      sender, verify):
    """dimage-1.0's `hash` is checked with ?verify_hash=1 (off by default: MD5 costs more than
    the rest of the ingest); unchecked, the frame whose hash is wrong is written as it came."""
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "bad_hash",
                                   query="&verify_hash=1" if verify else "")
    if not verify:
        assert code == ExitCode.OK, err
        assert run.missing == {} and counters(run) == {}
        return
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {3}
    blob = bslz4_blob(sent(3))
    assert run.missing[3] == (
        f"detector: dectris: dimage-1.0 frame 3: md5 of the {len(blob)}-byte blob is "
        f"{hashlib.md5(blob).hexdigest()}, dimage-1.0 says {hashlib.md5(blob[1:]).hexdigest()}")
    assert counters(run) == {"dectris_hash_mismatch": 1}
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert run.frames[i].tobytes() == sent(i).tobytes()


@pytest.mark.timeout(90)
def test_full_header_of_a_4m_detector_reaches_the_file(node, ipc, tmp_path, sender):
    """header_detail "all" of an EIGER2 4M (2068 x 2162 pixels): a 17.9 MB float32 flatfield of
    per-pixel noise, a pixel mask and a countrate table go to every node in START (about 18 MB
    compressed); the control sockets take it and the file has them exactly."""
    shape = (2162, 2068)
    code, err, run, path = run_series(node, ipc, tmp_path, sender, "--detail", "all",
                                      "--shape", f"{shape[0]}x{shape[1]}", frames=3)
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.frames.shape == (3, *shape)
    assert run.frames[2].tobytes() == frame(2, shape, "uint16").tobytes()
    with h5py.File(path, "r") as f:
        det = f["entry/instrument/detector"]
        for name, array in dectris_arrays(shape).items():
            assert np.array_equal(det[name][()], array), name
        assert det["flatfield"].dtype == np.float32 and det["flatfield"].shape == shape


@pytest.mark.timeout(60)
def test_decompress_option_stores_raw_pixels(node, ipc, tmp_path, sender):
    """?decompress=1: the origin decodes the detector's chunks; the file holds the same pixels,
    uncompressed (no filter), as a reader without filter 32008 needs."""
    code, err, run, path = run_series(node, ipc, tmp_path, sender, "--encoding", "bs16-lz4<",
                                      query="&decompress=1")
    assert code == ExitCode.OK, err
    assert run.missing == {}
    for i in range(8):
        assert run.frames[i].tobytes() == sent(i).tobytes(), f"frame {i} differs"
    with h5py.File(path, "r") as f:
        assert not f["entry/data/data"]._filters


@pytest.mark.timeout(10)
def test_endpoint_options_are_checked_by_name_before_anything_waits():
    options = OriginOptions(timeout_s=0.1)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['nope'\]; known: timeout, "
                                          "verify, decompress, verify_hash"):
        open_origin("dectris+tcp://127.0.0.1:9?nope=1", options)
    with pytest.raises(ConfigError, match="decompress='maybe': use 1 or 0"):
        open_origin("dectris+tcp://127.0.0.1:9?decompress=maybe", options)
    with pytest.raises(ConfigError, match="verify_hash='2': use 1 or 0"):
        open_origin("dectris+tcp://127.0.0.1:9?verify_hash=2", options)
