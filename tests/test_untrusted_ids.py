"""Numbers from outside are bounded before anything is allocated for them (issue #18).

A detector stream that does not say how many frames it sends (DECTRIS with header_detail none)
used to trust every frame number: one image numbered 10**12 made the collector allocate for
every id up to it (MemoryError, no ledger) and the source loop over them; 2**70 raised an
uncaught OverflowError. Now such an id is a protocol fault, counted and never allocated for,
and the frame it displaced is recorded missing. A frame too large for a link is refused at
START, naming the setting, instead of being dropped by ZeroMQ while the run stalls.
"""

from __future__ import annotations

import numpy as np
import pytest

import protocol_senders
from conftest import finish
from stream_node import ExitCode, read_run
from stream_node.model.contract import MAX_ID_JUMP, FrameGeometry, RunContract
from stream_node.model.frame import frame_header
from test_pipeline import start_roles

sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", ["huge_id", "overflow_id"])
def test_an_absurd_frame_number_of_an_unknown_length_series_is_a_fault_not_an_allocation(
        node, ipc, tmp_path, sender, fault):
    code, err, run, _ = protocol_senders.run_series(
        node, ipc, tmp_path, sender, "dectris", "dectris", "--detail", "none",
        "--fault", fault, "--fault-frame", "3")
    assert code == ExitCode.FRAMES_MISSING, err
    assert len(run.frame_ids) == 8  # ids 0..7: nothing allocated up to the absurd one
    assert set(run.missing) == {3}, run.missing
    assert run.received.sum() == 7
    counted = run.counters["reports"]["source"]["origin"]
    # 10**12 is a number out of the series' range; 2**70 is no 64-bit number at all (the JSON
    # decoder refuses it): either way a counted fault
    assert counted == {"dectris_out_of_range" if fault == "huge_id" else "dectris_invalid": 1}


def test_the_collector_refuses_an_id_far_beyond_the_highest_of_an_unknown_length_run():
    frame = np.zeros((4, 4), np.uint16)
    run = RunContract(FrameGeometry((4, 4), np.dtype(np.uint16)),
                      FrameGeometry((4, 4), np.dtype(np.uint16)))
    near = frame_header(frame, 1, MAX_ID_JUMP + 10)
    assert run.frame_problem(near, frame.nbytes, highest=20) is None
    far = frame_header(frame, 1, MAX_ID_JUMP + 21)
    assert "jumps more than" in run.frame_problem(far, frame.nbytes, highest=20)


@pytest.mark.timeout(60)
def test_a_frame_larger_than_the_links_allow_is_refused_at_start_naming_the_setting(
        node, ipc, tmp_path):
    """6000 x 6000 uint16 is 68.7 MiB, over the default --max-message of 64 MiB: before, the
    link dropped every frame and the run never ended."""
    path = tmp_path / "run.h5"
    source, collector, workers = start_roles(
        node, ipc, path, 1, frames=3, extra_source=("--shape", "6000x6000"))
    code, _, err = finish(source, timeout=40)
    assert code == ExitCode.CONFIG, err
    assert "--max-message" in err and "69MiB or more" in err, err
    for proc in (collector, *workers):
        assert finish(proc)[0] != ExitCode.OK
    assert not path.exists()  # refused before the file was made


@pytest.mark.timeout(240)
def test_a_frame_of_2_gib_the_largest_a_frame_may_be_runs_end_to_end(node, ipc, tmp_path):
    """An LPD-size train at the limit: 16384 x 32768 uint32 = 2 GiB in one frame, through a
    worker to the file, byte-equal (each node given --max-message for it, HWMs of 1)."""
    shape = (16384, 32768)
    path = tmp_path / "huge.h5"
    room = ("--max-message", "2049MiB", "--sndhwm", "1", "--rcvhwm", "1")
    source, collector, workers = start_roles(
        node, ipc, path, 1, frames=1, dtype="uint32", extra_source=("--shape", "16384x32768",
                                                                    *room),
        extra_collector=(*room, "--drain-timeout", "60"), extra_worker=room,
        ready_timeout=120)  # 2 GiB may take seconds from END to the collector on busy cores
    code, _, err = finish(source, timeout=200)
    assert code == ExitCode.OK, err
    for proc in (collector, *workers):
        assert finish(proc, timeout=60)[0] == ExitCode.OK
    from stream_node import SyntheticDetector

    with read_run(path) as run:
        assert run.missing == {} and run.frames.shape == (1, *shape)
        assert np.array_equal(run.frames[0], SyntheticDetector(shape, "uint32").frame(0))


@pytest.mark.timeout(60)
def test_a_run_whose_worker_reads_another_endpoint_ends_naming_it(node, ipc, tmp_path):
    """A worker wired to an endpoint that is not its source's (another run's fan-out, here a
    silent PUSH): it is alive and READY, but no frame of this run can go anywhere. Before,
    the source waited forever (its stall check only gave up once every worker was lost)."""
    import zmq

    ctx = zmq.Context.instance()
    elsewhere = ctx.socket(zmq.PUSH)
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    try:
        elsewhere.bind(ipc("another-runs-fanout"))
        control, fanout, fanin = ipc("control"), ipc("fanout"), ipc("fanin")
        path = tmp_path / "run.h5"
        collector = node("collector", "--control", control, "--input", fanin, "--file",
                         str(path), "--drain-timeout", "2", *timing)
        worker = node("worker", "--control", control, "--input", ipc("another-runs-fanout"),
                      "--output", fanin, *timing)
        source = node("source", "--control", control, "--data", fanout, "--workers", "1",
                      "--frames", "20", "--shape", "64x64", "--stall-timeout", "3", *timing)
        code, _, err = finish(source, timeout=40)
    finally:
        elsewhere.close(linger=0)
    assert code == ExitCode.PEER_TIMEOUT, err
    assert "--stall-timeout" in err and f"--data {fanout}" in err, err
    assert finish(collector, timeout=30)[0] != ExitCode.OK  # it ends too, recording why
    assert finish(worker, timeout=30)[0] != ExitCode.OK
    with read_run(path) as run:
        assert len(run.missing) == 20 and run.received.sum() == 0


@pytest.mark.timeout(60)
def test_a_node_of_another_topology_is_refused_by_name_never_counted_as_ours(node, ipc, tmp_path):
    """Two users (or two topology files) on the same control endpoint: before, the source took
    the other's worker as one of its own. Now it refuses it by name; the worker exits naming
    why, and the run goes on with its own nodes."""
    path = tmp_path / "run.h5"
    control, fanout, fanin = ipc("control"), ipc("fanout"), ipc("fanin")
    ours = ("--topology", "beamline-a", "--peer-timeout", "3", "--ready-timeout", "30")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     *ours)
    source = node("source", "--control", control, "--data", fanout, "--workers", "1",
                  "--frames", "30", "--shape", "64x64", *ours)
    # The source waits for its one worker while the intruder knocks: its own worker starts
    # only once the intruder was refused. Started side by side, a slow start-up (a loaded CI
    # machine) let the run end before the intruder knocked, and it timed out on a closed hub
    # instead of being refused (seen in CI).
    intruder = node("worker", "--control", control, "--input", fanout, "--output", fanin,
                    "--name", "intruder", "--topology", "someone-else", "--ready-timeout", "20")
    code, _, err = finish(intruder, timeout=30)
    assert code == ExitCode.CONFIG, err
    assert "belongs to topology 'beamline-a'" in err and "'someone-else'" in err, err
    workers = [node("worker", "--control", control, "--input", fanout, "--output", fanin,
                    "--name", "w0", *ours)]
    code, _, err = finish(source, timeout=40)
    assert code == ExitCode.OK, err
    assert "refused worker intruder" in err
    for proc in (collector, *workers):
        assert finish(proc)[0] == ExitCode.OK
    with read_run(path) as run:
        assert run.missing == {} and run.counters["reports"]["source"]["refused_peers"] == 1
