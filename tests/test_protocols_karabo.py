"""karabo-bridge in (REQ "next", PUSH and PUB bridges): a sender serialising trains as the
karabo_bridge package does, in its own process; the real pipeline; the file checked."""

from __future__ import annotations

import json

import h5py
import pytest

import protocol_senders
from protocol_senders import FIRST_TRAIN, KARABO_SOURCE, frame
from stream_node import ExitCode

SHAPE = (48, 64)
sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


def run_trains(node, ipc, tmp_path, sender, pattern, *sender_args, frames=6, **kw):
    return protocol_senders.run_series(node, ipc, tmp_path, sender, "karabo", "karabo",
                                       "--pattern", pattern, *sender_args, frames=frames,
                                       query=f"&pattern={pattern}", **kw)


def counters(run) -> dict:
    return run.counters["reports"]["source"]["origin"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", ["req", "sub"])
def test_trains_become_frames_with_train_ids(node, ipc, tmp_path, sender, pattern):
    code, err, run, path = run_trains(node, ipc, tmp_path, sender, pattern)
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert run.frame_ids.tolist() == list(range(FIRST_TRAIN, FIRST_TRAIN + 6))
    for i in range(6):
        assert run.frames[i].tobytes() == frame(i, SHAPE, "uint16").tobytes(), f"train {i}"
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
