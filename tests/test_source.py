"""The source stage (stages/source.py) at unit level: the run contract it announces in START
for each origin and setting, its run id, refusals, and a run whose peers never come."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import zmq

from stream_node._version import __version__
from stream_node.kernels.chain import chain_geometry
from stream_node.links.control import Liveness
from stream_node.links.ring import Ring
from stream_node.links.transport import LinkLimits, bind
from stream_node.model.contract import Dispatch, FrameGeometry, RunContract
from stream_node.model.errors import ConfigError, ExitCode, PeerTimeout, RingError
from stream_node.model.frame import Encoding
from stream_node.stages.source import RunSummary, Source, SourceConfig
from stream_node.storage.writer import RunWriter

SHAPE = (16, 24)


@pytest.fixture
def source(ctx, tmp_path):
    """Make Sources (their origins hold files); every origin is closed at teardown."""
    made: list[Source] = []

    def make(**changes) -> Source:
        fields = {"control": f"ipc://{tmp_path}/control", "data": f"ipc://{tmp_path}/data",
                  "workers": 2, "frames": 20, "shape": SHAPE, "dtype": "uint16", "seed": 5,
                  "ready_timeout_s": 0.3, "limits": LinkLimits(linger_ms=0),
                  "liveness": Liveness(heartbeat_s=0.05, peer_timeout_s=1.0)}
        fields.update(changes)
        made.append(Source(SourceConfig(**fields), ctx))
        return made[-1]

    yield make
    for s in made:
        s.origin.close()


def test_a_synthetic_run_without_kernels_writes_what_the_detector_makes(source):
    c = source(rate=25.0).contract()
    geometry = FrameGeometry(SHAPE, np.dtype(np.uint16))
    assert c.output == c.input == geometry
    assert (c.frames, c.first_frame_id, c.kernels, c.compression) == (20, 0, (), "none")
    assert c.dispatch == Dispatch() and c.encoding == Encoding.RAW
    assert (c.workers, c.rate, c.software_version) == (2, 25.0, __version__)
    assert c.origin == {"source": "synthetic:", "seed": 5}
    assert c.detector == {"description": "stream-node synthetic detector"}


@pytest.mark.parametrize("chain", [
    [{"kernel": "bin2x2"}],
    [{"kernel": "bin4x4"}],
    [{"kernel": "bin2x2"}, {"kernel": "roi_sums", "rois": [[0, 4, 0, 4], [2, 8, 0, 12]]}],
], ids=["bin2x2", "bin4x4", "bin2x2+roi_sums"])
def test_with_kernels_the_output_is_the_chains_geometry(source, chain):
    s = source(kernels=chain)
    shape, dtype = chain_geometry(chain, SHAPE, np.uint16)
    c = s.contract()
    assert c.output == FrameGeometry(shape, dtype)
    assert c.input == FrameGeometry(SHAPE, np.dtype(np.uint16))
    assert [dict(k) for k in c.kernels] == chain
    assert c.largest_frame_bytes == max(c.input.nbytes, c.output.nbytes)


def test_binning_halves_the_frame_in_the_contract(source):
    c = source(kernels=[{"kernel": "bin2x2"}]).contract()
    assert c.output.shape == (SHAPE[0] // 2, SHAPE[1] // 2)


def test_a_kernel_chain_that_cannot_work_is_refused_before_any_socket(source):
    s = source(kernels=[{"kernel": "no_such_kernel"}])
    with pytest.raises(ConfigError, match="no_such_kernel"):
        s.contract()


def test_compression_and_reliable_dispatch_are_announced(source):
    c = source(compression="bslz4", reliable=True, credit=7).contract()
    assert c.compression == "bslz4" and c.encoding == Encoding.BSLZ4
    assert c.dispatch == Dispatch("credit", 7) and c.dispatch.reliable


def test_start_is_the_contracts_wire_form_and_reads_back_as_it(source):
    s = source(kernels=[{"kernel": "bin2x2"}], compression="bslz4")
    assert RunContract.from_wire(s.start_body()) == s.contract()


def test_a_replayed_run_announces_the_recorded_geometry_and_ids(source, tmp_path):
    path = tmp_path / "recorded.h5"
    writer = RunWriter(path, (4, 6), "float32", 3, first_frame_id=50,
                       metadata={"run_id": 0xABC})
    try:
        for i in range(3):
            writer.write(i, np.full((4, 6), i, np.float32), 0, 0)
        writer.finalize(3, {}, {})
    finally:
        writer.close()
    c = source(origin=f"file://{path}", frames=0).contract()
    assert c.input == c.output == FrameGeometry((4, 6), np.dtype(np.float32))
    assert (c.frames, c.first_frame_id) == (3, 50)
    assert c.origin["replay_of_run_id"] == 0xABC


@pytest.mark.parametrize(("origin", "message"), [
    ("nope://x", "unknown frame origin 'nope://x'"),
    ("synthetic:cam0", "takes no address"),
    ("file:///no/such/run.h5", "cannot replay"),
])
def test_a_bad_origin_is_a_config_error(source, origin, message):
    with pytest.raises(ConfigError, match=message):
        source(origin=origin)


def test_the_run_id_is_the_one_given_or_a_fresh_nonzero_one(source):
    assert source(run_id=0x1234).run_id == 0x1234
    ids = {source().run_id for _ in range(5)}
    assert len(ids) == 5 and all(i > 0 and i % 2 == 1 for i in ids)


def test_a_stop_before_sending_says_there_is_nothing_to_drain(source):
    s = source()
    assert not s.stopping
    assert s.stop() is False and s.stopping


def test_a_source_before_its_run_says_it_is_waiting(source):
    status = source().status()
    assert (status["role"], status["state"], status["frames"]) == ("source", "waiting", 0)
    assert status["frames_expected"] == 20 and status["workers_ready"] == 0


def test_a_run_whose_peers_never_come_times_out_naming_who_is_missing(source, ctx, tmp_path):
    s = source(workers=2)
    with pytest.raises(PeerTimeout, match=r"timed out after 0.3 s: workers ready 0/2 \(none\), "
                                          r"collector never connected"):
        s.run()
    # Every socket it made was closed: the endpoints bind again at once.
    for endpoint in (s.cfg.control, s.cfg.data):
        sock = ctx.socket(zmq.PUSH)
        try:
            bind(sock, endpoint, "test")
        finally:
            sock.close(linger=0)


def test_a_ring_made_for_a_run_that_never_started_is_gone_afterwards(source):
    name = f"ts{os.getpid()}-{uuid.uuid4().hex[:8]}"
    s = source(data=f"ring://{name}", ring_slots=4)
    try:
        with pytest.raises(PeerTimeout):
            s.run()
        with pytest.raises(RingError, match="no ring of that name"):
            Ring.attach(name)
    finally:
        Ring.unlink(name)


def test_a_summary_says_missing_frames_in_its_exit_code_and_text():
    summary = RunSummary(run_id=0x5, path="run.h5", frames_sent=10, frames_written=8,
                         missing=2, duplicates=1, bytes_written=8 * 2**20,
                         bytes_stored=4 * 2**20, seconds=2.0, dropped={"foreign": 3, "x": 0},
                         workers={"w0": {"frames": 8, "stalls": 1, "dropped": {}}})
    assert summary.exit_code == ExitCode.FRAMES_MISSING
    assert summary.frames_per_second == 4.0
    text = summary.text()
    assert "frames     8 written of 10 sent" in text and "missing    2" in text
    assert "(4.0 MiB stored, 2.00x compression)" in text
    assert "dropped    {'foreign': 3}" in text and "worker w0  8 frames, 1 stalls" in text
    complete = RunSummary(0x5, "run.h5", 3, 3, 0, 0, 0, 0, 0.0, {}, {})
    assert complete.exit_code == ExitCode.OK and complete.frames_per_second == 0.0
