"""Where frames come from (origins/__init__.py, base.py, synthetic.py, replay.py): the endpoint
schemes, the synthetic detector as an origin, replaying a written run, and emitting into a
real ring."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from stream_node.links.ring import Ring
from stream_node.links.ring_links import RingOutput
from stream_node.model.errors import ConfigError, PeerTimeout
from stream_node.model.frame import Encoding
from stream_node.origins import ORIGINS, known_origins, open_origin, origin_scheme
from stream_node.origins.base import Emitted, OriginOptions, Stall
from stream_node.origins.replay import ReplayOrigin
from stream_node.origins.synthetic import SyntheticDetector, SyntheticOrigin, stamped_id
from stream_node.storage.writer import RunWriter

SHAPE = (8, 12)
RUN = 0x77


def options(**changes) -> OriginOptions:
    return OriginOptions(**{"frames": 6, "shape": SHAPE, "dtype": "uint16", "seed": 3,
                            **changes})


@pytest.fixture
def origins():
    """Every origin a test opens is closed at teardown (a replay holds its file open)."""
    opened: list = []

    def keep(origin):
        opened.append(origin)
        return origin

    yield keep
    for origin in opened:
        origin.close()


# -- schemes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "scheme"), [
    ("synthetic:", "synthetic"), ("file:///data/run.h5", "file"), ("file://run.h5", "file"),
    ("udp://0.0.0.0:50001?modules=2", "udp"), ("dectris+tcp://dcu:9999", "dectris"),
    ("dectris2+ipc:///tmp/s", "dectris2"), ("karabo+tcp://bridge:4545?pattern=req", "karabo"),
])
def test_the_scheme_of_an_origin_endpoint(endpoint, scheme):
    assert origin_scheme(endpoint) == scheme


@pytest.mark.parametrize("endpoint", ["tcp://host:1", "ipc:///x", "synthetic", "nope://x",
                                      "", "run.h5", "ring://cam0", "mystery+tcp://h:1"])
def test_an_endpoint_that_names_no_origin_has_no_scheme(endpoint):
    assert origin_scheme(endpoint) is None


def test_known_origins_lists_every_form_a_user_may_write():
    text = known_origins()
    forms = [form.strip() for form in text.split(",")]
    assert forms == sorted(forms, key=lambda f: f.split("+")[0].split(":")[0])
    assert set(forms) == {"synthetic:", "file://", "udp://", "dectris+tcp://",
                          "dectris2+tcp://", "karabo+tcp://"}
    assert len(forms) == len(ORIGINS)


@pytest.mark.parametrize("endpoint", ["nope://x", "tcp://127.0.0.1:5551", "synthetic"])
def test_an_unknown_origin_is_a_config_error_listing_the_known_ones(endpoint):
    with pytest.raises(ConfigError, match="unknown frame origin") as info:
        open_origin(endpoint, options())
    assert repr(endpoint) in str(info.value) and known_origins() in str(info.value)


def test_open_origin_makes_the_class_its_scheme_names(origins, tmp_path):
    assert type(origins(open_origin("synthetic:", options()))) is SyntheticOrigin
    path = small_run(tmp_path)
    replay = origins(open_origin(f"file://{path}", options()))
    assert type(replay) is ReplayOrigin and replay.replay.path == path


def test_the_synthetic_origin_takes_no_address():
    with pytest.raises(ConfigError, match="synthetic:cam0: the synthetic origin takes no "
                                          "address"):
        open_origin("synthetic:cam0", options())


# -- the synthetic origin ------------------------------------------------------------------------

def test_a_synthetic_origin_knows_its_run_before_it_starts(origins):
    origin = origins(open_origin("synthetic:", options(frames=6, dtype="uint32")))
    assert (origin.shape, origin.dtype, origin.first_id, origin.count) == (
        SHAPE, np.dtype("uint32"), 0, 6)
    assert origin.encoding == Encoding.RAW and origin.columns == () and not origin.needs_ring
    assert origin.frame_bytes == SHAPE[0] * SHAPE[1] * 4
    assert origin.series_id is None
    assert list(origin.ids()) == list(range(6))
    meta = origin.metadata()
    assert meta["source"] == "synthetic:" and meta["seed"] == 3 and "detector" in meta


def test_synthetic_frames_are_deterministic_and_stamped_with_their_id(origins):
    a = origins(open_origin("synthetic:", options()))
    b = origins(open_origin("synthetic:", options()))
    detector = SyntheticDetector(SHAPE, "uint16", seed=3)
    for frame_id in a.ids():
        x, y = np.empty(SHAPE, np.uint16), np.empty(SHAPE, np.uint16)
        a.fill(frame_id, x)
        b.fill(frame_id, y)
        assert x.tobytes() == y.tobytes() == detector.frame(frame_id).tobytes()
        assert stamped_id(x) == frame_id
    other = origins(open_origin("synthetic:", options(seed=4)))
    z = np.empty(SHAPE, np.uint16)
    other.fill(0, z)
    assert z.tobytes() != detector.frame(0).tobytes()


def test_a_synthetic_origin_refuses_frames_that_cannot_carry_their_id():
    with pytest.raises(ConfigError, match="at least 8 bytes"):
        open_origin("synthetic:", options(shape=(1, 2)))


def test_pacing_follows_the_rate_and_is_off_without_one(origins):
    paced = origins(open_origin("synthetic:", options(rate=50.0)))
    assert [paced.due_s(n, n) for n in range(3)] == [0.0, 0.02, 0.04]
    free = origins(open_origin("synthetic:", options()))
    assert free.due_s(5, 5) is None


# -- emitting into a real ring -------------------------------------------------------------------

class Control:
    """The source's side of RunControl as an origin sees it: counts what it is asked."""

    def __init__(self, stop_after: int | None = None, out: RingOutput | None = None) -> None:
        self.polls = self.stalls = 0
        self.paced: list[float] = []
        self.stop_after = stop_after
        self.out = out

    def poll(self) -> None:
        self.polls += 1

    def pace(self, due: float) -> None:
        self.paced.append(due)

    def stalled(self, stall: Stall) -> None:
        self.stalls += 1
        if time.monotonic() - stall.since > 0.3:
            raise PeerTimeout("no consumer took a frame")

    @property
    def stopping(self) -> bool:
        published = self.out.ring.stats()["published"] if self.out is not None else 0
        return self.stop_after is not None and published >= self.stop_after


@pytest.fixture
def ring_out():
    made: list[RingOutput] = []

    def make(slots: int, frame_bytes: int) -> RingOutput:
        out = RingOutput(f"to{os.getpid()}-{uuid.uuid4().hex[:8]}", slots, frame_bytes)
        made.append(out)
        return out

    yield make
    for out in made:
        out.close()
        Ring.unlink(out.ring.name)


@pytest.fixture
def worker():
    """A member of a ring's work group, attached before the origin emits (emit ends the
    stream, and the ring's name goes with it: attached consumers still read what is left)."""
    consumers: list = []

    def attach(out: RingOutput):
        consumers.append(Ring.attach(out.ring.name).consumer("workers"))
        return consumers[-1]

    yield attach
    for consumer in consumers:
        consumer.close()


def drain(consumer) -> list[tuple[int, int, bytes]]:
    """(run id, frame id, payload) of every frame in the ring, up to its end."""
    return [(f.header.run_id, f.frame_id, f.data.tobytes()) for f in consumer]


def test_a_generated_origin_emits_every_frame_then_ends_the_stream(origins, ring_out, worker):
    origin = origins(open_origin("synthetic:", options(frames=6)))
    out = ring_out(slots=8, frame_bytes=origin.frame_bytes)
    consumer = worker(out)
    ctl = Control()
    done = origin.emit(out, RUN, ctl)
    assert isinstance(done, Emitted)
    assert (done.sent, done.last_id, done.missing) == (6, 5, {})
    assert ctl.polls >= 1 and ctl.stalls == 0 and ctl.paced == []
    detector = SyntheticDetector(SHAPE, "uint16", seed=3)
    assert drain(consumer) == [(RUN, i, detector.frame(i).tobytes()) for i in range(6)]


def test_a_paced_origin_asks_the_source_to_wait_for_each_frame(origins, ring_out):
    origin = origins(open_origin("synthetic:", options(frames=3, rate=10.0)))
    out = ring_out(slots=4, frame_bytes=origin.frame_bytes)
    ctl = Control()
    t0 = time.monotonic()
    origin.emit(out, RUN, ctl)
    assert len(ctl.paced) == 3
    assert [round(due - ctl.paced[0], 3) for due in ctl.paced] == [0.0, 0.1, 0.2]
    assert ctl.paced[0] >= t0


def test_an_origin_asked_to_stop_ends_at_the_last_frame_sent(origins, ring_out, worker):
    origin = origins(open_origin("synthetic:", options(frames=10)))
    out = ring_out(slots=16, frame_bytes=origin.frame_bytes)
    consumer = worker(out)
    ctl = Control(stop_after=4, out=out)
    done = origin.emit(out, RUN, ctl)
    assert (done.sent, done.last_id) == (4, 3)
    assert [frame_id for _, frame_id, _ in drain(consumer)] == [0, 1, 2, 3]


def test_an_origin_whose_output_stays_full_reports_the_stall(origins, ring_out):
    origin = origins(open_origin("synthetic:", options(frames=10)))
    out = ring_out(slots=2, frame_bytes=origin.frame_bytes)
    ctl = Control()
    with pytest.raises(PeerTimeout, match="no consumer took a frame"):
        origin.emit(out, RUN, ctl)  # nobody consumes: the ring fills
    assert ctl.stalls > 0


# -- replaying a written run ---------------------------------------------------------------------

def small_run(tmp_path, present=(0, 1, 3, 4), frames=5, first=10, dtype="uint16"):
    """A run file of `frames` frames from id `first`, holding those at the `present` indexes."""
    path = tmp_path / "recorded.h5"
    writer = RunWriter(path, SHAPE, dtype, frames, first_frame_id=first,
                       metadata={"run_id": 0xBEEF})
    try:
        for index in present:
            frame = np.full(SHAPE, index + 1, dtype)
            writer.write(index, frame, timestamp_ns=1_000_000_000 + index * 250_000_000,
                         worker=0)
        missing = {i: "never came" for i in range(frames) if i not in present}
        writer.finalize(frames, missing, {})
    finally:
        writer.close()
    return path


def test_a_replay_knows_the_recorded_runs_geometry(origins, tmp_path):
    path = small_run(tmp_path, dtype="float32")
    origin = origins(open_origin(f"file://{path}", options(frames=0)))
    assert (origin.shape, origin.dtype, origin.first_id, origin.count) == (
        SHAPE, np.dtype("float32"), 10, 5)
    meta = origin.metadata()
    assert meta["source"] == f"file://{path}" and meta["replay_of_run_id"] == 0xBEEF


def test_a_replay_emits_the_recorded_frames_and_skips_the_missing(origins, tmp_path):
    origin = origins(open_origin(f"file://{small_run(tmp_path)}", options(frames=0)))
    assert list(origin.ids()) == [10, 11, 13, 14]
    for frame_id in origin.ids():
        out = np.empty(SHAPE, np.uint16)
        origin.fill(frame_id, out)
        assert np.all(out == frame_id - 10 + 1)


def test_a_replay_limited_to_fewer_frames_stops_there(origins, tmp_path):
    origin = origins(open_origin(f"file://{small_run(tmp_path, present=range(5))}",
                                 options(frames=3)))
    assert origin.count == 3 and list(origin.ids()) == [10, 11, 12]


def test_a_replay_limited_to_fewer_frames_never_emits_an_id_beyond_them(origins, tmp_path):
    origin = origins(open_origin(f"file://{small_run(tmp_path)}", options(frames=3)))
    assert list(origin.ids()) == [10, 11]  # id 12 was missing in the recording


def test_a_replay_at_the_recorded_rate_keeps_the_recorded_gaps(origins, tmp_path):
    path = small_run(tmp_path)
    recorded = origins(open_origin(f"file://{path}", options(frames=0, recorded_rate=True)))
    assert [recorded.due_s(n, i) for n, i in enumerate(recorded.ids())] == [
        0.0, 0.25, 0.75, 1.0]
    free = origins(open_origin(f"file://{path}", options(frames=0)))
    assert free.due_s(1, 11) is None


def test_a_replay_emits_into_a_ring_what_the_file_holds(origins, tmp_path, ring_out, worker):
    origin = origins(open_origin(f"file://{small_run(tmp_path)}", options(frames=0)))
    out = ring_out(slots=8, frame_bytes=origin.frame_bytes)
    consumer = worker(out)
    done = origin.emit(out, RUN, Control())
    assert (done.sent, done.last_id) == (4, 14)
    got = drain(consumer)
    assert [(run, frame_id) for run, frame_id, _ in got] == [(RUN, i) for i in (10, 11, 13, 14)]
    assert all(data == np.full(SHAPE, i - 9, np.uint16).tobytes() for _, i, data in got)


@pytest.mark.parametrize("content", [None, b"not hdf5"])
def test_replaying_something_that_is_not_a_run_is_a_config_error(tmp_path, content):
    path = tmp_path / "other.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"cannot replay {path}: not a readable run"):
        open_origin(f"file://{path}", options())
