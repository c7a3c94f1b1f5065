"""`--checksum`: a payload damaged between two stages is never written as data.

The worker -> collector hop runs through a forwarder in the test that flips one bit of frame 5's
payload, the first time it passes (a NIC, a switch or a DIMM doing it; the headers stay intact,
so their own crc cannot see it). Without --checksum the damage reaches the file; with it the
collector drops the copy and records why, and in reliable mode the source sends frame 5 again.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from conftest import finish, free_tcp_endpoint
from stream_node import ExitCode, SyntheticDetector, read_run

SHAPE = (64, 128)
FRAMES = 40
DAMAGED = 5


class BitFlipper:
    """PULL at `inlet`, PUSH to `outlet`; flips a bit in frame DAMAGED's payload once."""

    def __init__(self, ctx: zmq.Context, outlet: str) -> None:
        self.inlet = free_tcp_endpoint()
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(self.inlet)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(outlet)
        self.stop = threading.Event()
        self.flipped = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from stream_node.model.frame import FrameHeader

        while not self.stop.is_set():  # bounded: the test sets stop, each poll is 50 ms
            if not self.pull.poll(50):
                continue
            header, payload = self.pull.recv_multipart()
            if FrameHeader.parse(header).frame_id == DAMAGED and not self.flipped:
                damaged = bytearray(payload)
                damaged[100] ^= 0x10
                payload = bytes(damaged)
                self.flipped += 1
            self.push.send_multipart([header, payload])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.pull.close(linger=0)
        self.push.close(linger=0)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("checksum", "reliable"), [(False, False), (True, False), (True, True)],
                         ids=["unchecked", "checksum", "checksum-reliable"])
def test_a_payload_damaged_between_worker_and_collector(node, ctx, tmp_path, checksum,
                                                        reliable):
    control, data, fanin = (free_tcp_endpoint() for _ in range(3))
    path = tmp_path / "run.h5"
    timing = ("--peer-timeout", "2", "--ready-timeout", "20")
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     "--drain-timeout", "2", *timing)
    flipper = BitFlipper(ctx, fanin)
    try:
        node("worker", "--control", control, "--input", data, "--output", flipper.inlet,
             *timing)
        source = node("source", "--control", control, "--data", data, "--workers", "1",
                      "--frames", str(FRAMES), "--shape", "x".join(map(str, SHAPE)),
                      "--rate", "100", *(["--checksum"] if checksum else []),
                      *(["--reliable", "--resend-after", "1"] if reliable else []), *timing)
        code, _out, err = finish(source)
        assert finish(collector)[0] == code, err[-2000:]
    finally:
        flipper.close()
    assert flipper.flipped == 1
    run = read_run(path)
    det = SyntheticDetector(SHAPE, "uint16")
    written = np.flatnonzero(run.received).tolist()
    damaged_on_disk = [i for i in written if run.frames[i].tobytes() != det.frame(i).tobytes()]
    if not checksum:  # the hazard: a damaged frame is written as if it were data
        assert code == ExitCode.OK and damaged_on_disk == [DAMAGED]
        return
    assert damaged_on_disk == []
    assert run.counters["dropped_corrupt"] == 1
    if reliable:
        assert code == ExitCode.OK, err[-2000:]
        assert run.missing == {} and len(written) == FRAMES
    else:
        assert code == ExitCode.FRAMES_MISSING, err[-2000:]
        assert list(run.missing) == [DAMAGED]
        assert "payload checksum mismatch" in run.missing[DAMAGED]
        assert set(written) == set(range(FRAMES)) - {DAMAGED}
