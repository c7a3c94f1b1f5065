"""karabo-bridge in (REQ "next", PUSH and PUB bridges): a sender serialising trains as the
karabo_bridge package does, in its own process; the real pipeline; the file checked."""

from __future__ import annotations

import json

import h5py
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol_senders
from protocol_senders import FIRST_TRAIN, KARABO_SOURCE, frame
from stream_node import ExitCode
from stream_node.origins import karabo

SHAPE = (48, 64)
sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


def run_trains(node, ipc, tmp_path, sender, pattern, *sender_args, frames=6, **kw):
    return protocol_senders.run_series(node, ipc, tmp_path, sender, "karabo", "karabo",
                                       "--pattern", pattern, *sender_args, frames=frames,
                                       query=f"&pattern={pattern}", **kw)


def counters(run) -> dict:
    return run.counters["reports"]["source"]["origin"]


def assert_six_trains(code, err, run) -> None:
    """The run ended OK with the six trains sent, in order, as frames with their train ids."""
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert run.frame_ids.tolist() == list(range(FIRST_TRAIN, FIRST_TRAIN + 6))
    for i in range(6):
        assert run.frames[i].tobytes() == frame(i, SHAPE, "uint16").tobytes(), f"train {i}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", ["req", "sub"])
def test_trains_become_frames_with_train_ids(node, ipc, tmp_path, sender, pattern):
    code, err, run, path = run_trains(node, ipc, tmp_path, sender, pattern)
    assert_six_trains(code, err, run)
    with h5py.File(path, "r") as f:
        stamps = f["entry/frames/timestamp_ns"][()]
        assert stamps[3] == 1_700_000_000 * 10**9 + 300_000_000
        start = json.loads(f["entry"].attrs["start"])
    assert start["karabo_source"] == KARABO_SOURCE and start["karabo_path"] == "image.data"
    assert start["first_train_data"]["header.pulseCount"] == 4


@pytest.mark.timeout(60)
def test_skipped_train_is_recorded_missing_with_reason(node, ipc, tmp_path, sender):
    code, err, run, _ = run_trains(node, ipc, tmp_path, sender, "pull", "--fault", "skip_train")
    assert code == ExitCode.FRAMES_MISSING, err
    assert run.missing == {FIRST_TRAIN + 3: "detector: karabo: train 10003 not delivered by "
                                            "the bridge"}
    assert run.frames[4].tobytes() == frame(4, SHAPE, "uint16").tobytes()


@pytest.mark.timeout(60)
def test_undecodable_message_is_counted_and_every_train_written(node, ipc, tmp_path, sender):
    code, err, run, _ = run_trains(node, ipc, tmp_path, sender, "pull", "--fault",
                                   "unknown_htype")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"karabo_undecodable": 1}


@pytest.mark.timeout(60)
def test_wrong_size_train_is_recorded_missing_with_reason(node, ipc, tmp_path, sender):
    code, err, run, _ = run_trains(node, ipc, tmp_path, sender, "pull", "--fault", "wrong_size")
    assert code == ExitCode.FRAMES_MISSING, err
    assert set(run.missing) == {FIRST_TRAIN + 3}
    assert "train 10003: image.data is [47, 64] uint16, the run has [48, 64]" in \
        run.missing[FIRST_TRAIN + 3]
    assert counters(run) == {"karabo_wrong_size": 1}


@pytest.mark.timeout(60)
def test_protocol_1_0_trains_become_frames(node, ipc, tmp_path, sender):
    """Protocol 1.0 (one msgpack part, arrays in msgpack-numpy's byte-key maps, metadata inside
    the source's data), as karabo_bridge's serializer sends it with protocol_version='1.0'."""
    code, err, run, path = run_trains(node, ipc, tmp_path, sender, "pull",
                                      "--karabo-version", "1.0")
    assert_six_trains(code, err, run)
    with h5py.File(path, "r") as f:
        assert f["entry/frames/timestamp_ns"][3] == 1_700_000_000 * 10**9 + 300_000_000
        start = json.loads(f["entry"].attrs["start"])
    assert start["karabo_path"] == "image.data"
    assert start["first_train_data"]["detector.trainId"] == FIRST_TRAIN


@pytest.mark.timeout(60)
def test_bridge_going_silent_ends_the_run_with_the_trains_due_missing(node, ipc, tmp_path,
                                                                       sender):
    code, err, run, _ = run_trains(node, ipc, tmp_path, sender, "pull", "--fault", "no_end",
                                   "--fault-frame", "4", timeout=1.5)
    assert code == ExitCode.FRAMES_MISSING, err
    assert run.missing == {
        FIRST_TRAIN + i: f"detector: karabo: train {FIRST_TRAIN + i} not delivered: the bridge "
                         "went silent for 1.5 s" for i in (4, 5)}
    assert counters(run) == {"karabo_silent_end": 1}
    for i in range(4):
        assert run.frames[i].tobytes() == frame(i, SHAPE, "uint16").tobytes()


def _bins(value, out):
    if isinstance(value, bytes):
        out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _bins(k, out)
            _bins(v, out)
    elif isinstance(value, list):
        for v in value:
            _bins(v, out)
    return out


_scalars = (st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=70)
            | st.binary(max_size=200) | st.booleans() | st.none()
            | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)))
_values = st.recursive(_scalars, lambda inner: (
    st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=5), inner, max_size=20)),
    max_leaves=40)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_value_walk_finds_exactly_the_large_bin_values(value):
    """The walk that keeps protocol 1.0's array data out of msgpack's copies finds every bin
    value of at least the threshold (here 64 bytes), where msgpack put it, and nothing else."""
    message = msgpack.packb(value, use_bin_type=True)
    buf = np.frombuffer(message, np.uint8)
    where = np.empty((64, 3), np.int64)
    count = karabo._large_bins(buf, 64, where)
    large = [b for b in _bins(value, []) if len(b) >= 64]
    assert count == len(large)
    assert [message[s:s + n] for _, s, n in where[:count]] == large
    if len(message) > 1:
        assert karabo._large_bins(buf[:-1], 64, where) < 0  # cut short
