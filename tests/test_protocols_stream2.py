"""DECTRIS stream v2 (CBOR) in: a sender from the spec in its own process, the real pipeline, and
the file checked against what was sent."""

from __future__ import annotations

import cbor2
import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 for plain h5py reads)
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol_senders
from protocol_senders import bslz4_blob, dectris_arrays, frame
from stream_node import ExitCode
from stream_node.origins import stream2

SHAPE = (48, 64)
sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


def run_series(node, ipc, tmp_path, sender, *sender_args, **kw):
    return protocol_senders.run_series(node, ipc, tmp_path, sender, "stream2", "dectris2",
                                       *sender_args, **kw)


def sent(i: int, dtype: str = "uint16") -> np.ndarray:
    return frame(i, SHAPE, dtype)


def counters(run) -> dict:
    return run.counters["reports"]["source"]["origin"]


@pytest.mark.timeout(60)
def test_bslz4_images_are_stored_byte_identical_with_nxmx_metadata(node, ipc, tmp_path,
                                                                   sender):
    code, err, run, path = run_series(node, ipc, tmp_path, sender, "--encoding", "bslz4",
                                      "--detail", "all")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    with h5py.File(path, "r") as f:
        data = f["entry/data/data"]
        for i in range(8):
            _, chunk = data.id.read_direct_chunk((i, 0, 0))
            assert chunk == bslz4_blob(sent(i)), f"chunk {i} was not passed through untouched"
            assert np.array_equal(data[i], sent(i))
        det = f["entry/instrument/detector"]
        assert det["distance"][()] == 0.125 and det["distance"].attrs["units"] == "m"
        assert det["x_pixel_size"][()] == 7.5e-05
        assert f["entry/instrument/beam/incident_wavelength"].attrs["units"] == "angstrom"
        assert det["threshold_energy"][()] == 6199.2
        assert det["serial_number"][()] == b"E-32-0123"
        arrays = dectris_arrays(SHAPE)
        assert np.array_equal(det["flatfield"][()], arrays["flatfield"])
        assert np.array_equal(det["pixel_mask"][()], arrays["pixel_mask"])
        assert np.array_equal(det["countrate_correction_table"][()],
                              arrays["countrate_correction_table"].reshape(-1))
        times = f["entry/frames"]
        assert times["start_time_ns"][()].tolist() == [10_000_000 * i for i in range(8)]
        assert times["real_time_ns"][()].tolist() == [9_900_000] * 8


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("encoding", "dtype"), [("none", "uint32"), ("lz4", "uint16")])
def test_raw_and_lz4_images_are_written_bit_exact(node, ipc, tmp_path, sender, encoding, dtype):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--encoding", encoding,
                                   "--dtype", dtype)
    assert code == ExitCode.OK, err
    assert run.frames.dtype == np.dtype(dtype) and run.missing == {}
    for i in range(8):
        assert run.frames[i].tobytes() == sent(i, dtype).tobytes(), f"frame {i} differs"


@pytest.mark.timeout(60)
def test_unknown_message_type_is_counted_and_every_frame_written(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--encoding", "bslz4",
                                   "--fault", "unknown_htype")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris2_unknown_htype": 1}
    assert "unknown message type 'status'" in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fault", "text"), [
    ("image_before_header", "image message (image 0) before any start message"),
    ("second_header", "a second start message of series 7 mid-series (after 3 frames)")])
def test_out_of_sequence_messages_are_counted_and_the_series_written(node, ipc, tmp_path,
                                                                     sender, fault, text):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", fault)
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris2_out_of_sequence": 1}
    assert text in err


@pytest.mark.timeout(60)
def test_wrong_size_image_is_recorded_missing_with_reason(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "wrong_size")
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {3}
    assert "dectris2: image 3: array [49, 64] uint16, the series has [48, 64]" in run.missing[3]
    assert counters(run) == {"dectris2_wrong_size": 1}


@pytest.mark.timeout(60)
def test_corrupt_bslz4_image_is_recorded_missing_with_reason(node, ipc, tmp_path, sender):
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--encoding", "bslz4",
                                   "--fault", "corrupt_blob")
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {3}
    assert run.missing[3].startswith("worker 0: frame 3 as it came: corrupt bitshuffle/LZ4 blob")
    assert counters(run) == {}  # found by the worker that passed it on, not at the source


@pytest.mark.timeout(60)
def test_stream_without_end_message_ends_after_the_origin_timeout(node, ipc, tmp_path, sender):
    """The silence allowed is the source's --origin-timeout when the endpoint names none."""
    code, err, run, _ = run_series(node, ipc, tmp_path, sender, "--fault", "no_end",
                                   "--fault-frame", "6", timeout=None,
                                   extra_source=("--origin-timeout", "1.5"))
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {6, 7}
    assert all("stopped without an end message (silent for 1.5 s)" in r
               for r in run.missing.values())
    assert counters(run) == {"dectris2_no_end": 1}


def _leaves(value, out):
    if isinstance(value, bytes):
        out.append(value)
    elif isinstance(value, cbor2.CBORTag):
        _leaves(value.value, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _leaves(k, out)
            _leaves(v, out)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, out)
    return out


_scalars = (st.integers(-2**64 + 1, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=70)
            | st.binary(max_size=200) | st.booleans() | st.none())
_items = st.recursive(_scalars, lambda inner: (
    st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    | st.builds(cbor2.CBORTag, st.sampled_from([40, 69, 56500, 1000]), inner)), max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(_items)
def test_head_walk_finds_exactly_the_large_byte_strings(value):
    """The walk that keeps pixel data out of cbor2's copies finds every byte string of at least
    the threshold (here 64 bytes), where cbor2's own encoding put it, and nothing else."""
    message = cbor2.dumps(value)
    buf = np.frombuffer(message, np.uint8)
    where = np.empty((64, 3), np.int64)
    count = stream2._large_strings(buf, 64, where)
    large = [b for b in _leaves(value, []) if len(b) >= 64]
    assert count == len(large)
    assert [message[s:s + n] for _, s, n in where[:count]] == large
    assert stream2._large_strings(buf[:-1], 64, where) < 0  # cut short


def test_head_walk_steps_over_indefinite_lengths():
    """cbor2 never writes them, a detector may: a byte string in chunks (each chunk found, so
    the decode falls back to cbor2 whole), an indefinite array and map."""
    chunk = b"\x59\x01\x00" + b"c" * 256
    message = (b"\xa3\x61a\x5f" + chunk + chunk + b"\xff\x61b\x9f\x01\x02\xff\x61c"
               b"\xbf\x61d\xd8\x45\x59\x01\x00" + b"p" * 256 + b"\xff")
    where = np.empty((8, 3), np.int64)
    assert stream2._large_strings(np.frombuffer(message, np.uint8), 200, where) == 3
    assert cbor2.loads(message)["a"] == b"c" * 512


def test_pixel_data_is_a_slice_of_the_message_and_other_bytes_are_decoded_whole():
    pixels = np.arange(64 * 64, dtype=np.uint16)
    message = protocol_senders.stream2_message({
        "type": "image", "user_data": {"blob": b"u" * 5000},
        "data": {"c": cbor2.CBORTag(40, [[64, 64], cbor2.CBORTag(69, pixels.tobytes())])}})
    body = stream2.decode(message)  # a large byte string in user data: decoded by cbor2 whole
    assert body["user_data"]["blob"] == b"u" * 5000
    assert bytes(body["data"]["c"].array.data) == pixels.tobytes()
    blob = bslz4_blob(frame(0, (256, 256), "uint16"))
    image = protocol_senders.stream2_message({
        "type": "image", "data": {"c": cbor2.CBORTag(40, [[256, 256], cbor2.CBORTag(
            69, cbor2.CBORTag(56500, ["bslz4", 2, blob]))])}})
    data = stream2.decode(image)["data"]["c"].array.data
    assert isinstance(data.data, memoryview) and bytes(data.data) == blob
    assert np.shares_memory(np.frombuffer(data.data, np.uint8), np.frombuffer(image, np.uint8))
