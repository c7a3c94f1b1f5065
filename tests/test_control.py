"""The control channel (links/control.py) over real ipc sockets: HELLO/START, READY, END and
FINISH, DONE, refusals, liveness, and a hub that never answers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import zmq

from conftest import free_tcp_endpoint
from stream_node.links.control import ControlHub, ControlLink, Inbound, Liveness
from stream_node.model.errors import ConfigError, PeerTimeout, RunAborted
from stream_node.model.frame import MsgType, control_message

RUN = 0x0DDBA11
START = {"shape": [4, 4], "dtype": "uint16", "frames": 3}
FAST = Liveness(heartbeat_s=0.05, peer_timeout_s=2.0)  # no test waits this out
SHORT = Liveness(heartbeat_s=0.05, peer_timeout_s=0.3)  # the tests that wait for a silence


@pytest.fixture
def closing():
    """Every hub, link and socket a test makes is closed at teardown, in reverse order."""
    made: list = []

    def keep(thing):
        made.append(thing)
        return thing

    yield keep
    for thing in reversed(made):
        if getattr(thing, "sock", thing).closed:  # the test closed it itself
            continue
        if isinstance(thing, zmq.Socket):
            thing.close(linger=0)
        else:
            thing.close()


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path}/control"


def until(step: Callable[[], object], done: Callable[[], bool], what: str,
          timeout_s: float = 5.0) -> None:
    """Run `step` (itself a bounded poll) until `done()`; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        step()


def close_now(link: ControlLink) -> None:
    """Close a link whose hub is gone without ControlLink.close's 1 s linger for its unsent
    messages (which would hold up the context's teardown); the fixture then skips it."""
    link.close(linger_ms=0)


def hub_messages(hub: ControlHub, n: int, timeout_s: float = 5.0) -> list[Inbound]:
    got: list[Inbound] = []
    until(lambda: got.extend(hub.poll(50)), lambda: len(got) >= n, f"{n} messages at the hub",
          timeout_s)
    return got


def started(ctx, closing, endpoint, role: str = "worker", name: str = "w0",
            liveness: Liveness = FAST) -> tuple[ControlHub, ControlLink]:
    """A hub and one link past the HELLO/START handshake."""
    hub = closing(ControlHub(ctx, endpoint, RUN, START, liveness))
    link = closing(ControlLink(ctx, endpoint, role, name, liveness))
    until(lambda: hub.poll(50), lambda: len(hub.peers) == 1, "the link's HELLO")
    assert link.wait_start(5.0) == START
    return hub, link


def test_hello_is_answered_with_start_and_the_peer_is_known(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint, role="collector", name="c0")
    [peer] = hub.peers.values()
    assert (peer.role, peer.name, peer.pid) == ("collector", "c0", os.getpid())
    # role:name:pid:n, one per link: a stage's next link never takes its last one's id
    assert peer.identity == link.identity
    assert peer.identity.startswith(f"collector:c0:{os.getpid()}:".encode())
    assert not peer.ready and not peer.finished and not peer.unreachable
    assert hub.peers_of("collector") == [peer] and hub.peers_of("worker") == []
    assert link.run_id == RUN  # START names the run: the link now speaks for it


def test_ready_is_handed_to_the_caller_and_counted(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint)
    link.send(MsgType.READY)
    [msg] = hub_messages(hub, 1)
    assert msg.msg_type == MsgType.READY and msg.peer is not None and msg.peer.ready
    assert sum(p.ready for p in hub.peers_of("worker")) == 1


def test_end_reaches_every_peer_and_finish_only_the_role_it_names(ctx, closing, endpoint):
    hub = closing(ControlHub(ctx, endpoint, RUN, START, FAST))
    worker = closing(ControlLink(ctx, endpoint, "worker", "w0", FAST))
    collector = closing(ControlLink(ctx, endpoint, "collector", "c0", FAST))
    until(lambda: hub.poll(50), lambda: len(hub.peers) == 2, "two HELLOs")
    for link in (worker, collector):
        link.wait_start(5.0)
    hub.broadcast(MsgType.END, {"last_frame_id": 2, "frame_count": 3}, frame_id=2)
    for link in (worker, collector):
        msg = link.recv(5000)
        assert msg is not None and msg.msg_type == MsgType.END
        assert msg.body == {"last_frame_id": 2, "frame_count": 3} and msg.header.frame_id == 2
    hub.broadcast(MsgType.FINISH, role="worker")
    msg = worker.recv(5000)
    assert msg is not None and msg.msg_type == MsgType.FINISH
    # The collector gets only heartbeats (absorbed by recv); a marker shows FINISH passed it by.
    [collector_peer] = hub.peers_of("collector")
    hub.send(collector_peer, MsgType.ABORT, {"reason": "marker"})
    msg = collector.recv(5000)
    assert msg is not None and msg.msg_type == MsgType.ABORT


def test_done_records_the_final_report_and_the_peer_gets_no_more(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint)
    link.send(MsgType.DONE, {"frames": 3})
    [msg] = hub_messages(hub, 1)
    assert msg.msg_type == MsgType.DONE
    [peer] = hub.peers.values()
    assert peer.final == {"frames": 3} and peer.finished
    assert hub.send(peer, MsgType.END) is False
    assert hub.lost() == []  # it left on purpose: not lost


def test_drained_records_the_report_without_finishing(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint, role="collector", name="c0")
    link.send(MsgType.DRAINED, {"missing": 0})
    [msg] = hub_messages(hub, 1)
    [peer] = hub.peers.values()
    assert msg.msg_type == MsgType.DRAINED and peer.final == {"missing": 0}
    assert not peer.finished


# -- refusals ----------------------------------------------------------------------------------

@pytest.fixture
def rogue(ctx, closing, endpoint):
    """A bare DEALER on the hub's endpoint: it sends whatever a test wants."""
    sock = closing(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.ROUTING_ID, b"rogue")
    sock.connect(endpoint)
    return sock


def test_a_malformed_message_is_refused_and_counted(ctx, closing, endpoint, rogue):
    hub = closing(ControlHub(ctx, endpoint, RUN, START, FAST))
    rogue.send(b"one part only")
    rogue.send_multipart([b"not a header", b"body"])
    header, _ = control_message(MsgType.READY, RUN)
    rogue.send_multipart([header, b"\xc1"])  # a body msgpack cannot decode
    until(lambda: hub.poll(50), lambda: hub.rejected == 3, "three refusals")
    assert hub.peers == {} and hub.foreign == 0


def test_a_message_from_a_peer_that_never_said_hello_is_refused(ctx, closing, endpoint, rogue):
    hub = closing(ControlHub(ctx, endpoint, RUN, START, FAST))
    rogue.send_multipart(control_message(MsgType.READY, RUN))
    until(lambda: hub.poll(50), lambda: hub.rejected == 1, "the refusal")
    assert hub.peers == {}


def test_a_message_of_another_run_is_dropped_as_foreign(ctx, closing, endpoint, rogue):
    hub = closing(ControlHub(ctx, endpoint, RUN, START, FAST))
    rogue.send_multipart(control_message(MsgType.HELLO, 0, {"role": "worker", "name": "r",
                                                            "topology": hub.topology}))
    rogue.send_multipart(control_message(MsgType.READY, RUN + 1))
    until(lambda: hub.poll(50), lambda: hub.foreign == 1, "the foreign READY")
    assert not hub.peers[b"rogue"].ready
    rogue.send_multipart(control_message(MsgType.READY, RUN))
    [msg] = hub_messages(hub, 1)
    assert msg.msg_type == MsgType.READY and hub.peers[b"rogue"].ready


def test_a_hello_of_another_topology_is_refused_with_the_reason(ctx, closing, endpoint):
    hub = closing(ControlHub(ctx, endpoint, RUN, START, FAST, topology="ours"))
    link = closing(ControlLink(ctx, endpoint, "worker", "w9", FAST, topology="theirs"))
    until(lambda: hub.poll(50), lambda: hub.refused == 1, "the refusal")
    assert not hub.peers  # never counted as one of this run's nodes
    with pytest.raises(RunAborted, match="belongs to topology 'ours', the worker is of 'theirs'"):
        link.wait_start(5.0)


def test_a_link_refuses_malformed_and_foreign_messages_from_the_hub(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint)
    [peer] = hub.peers.values()
    hub.sock.send_multipart([peer.identity, b"garbage"])
    hub.sock.send_multipart([peer.identity, *control_message(MsgType.ABORT, RUN + 1)])
    hub.send(peer, MsgType.END, {"last_frame_id": 0})  # the marker behind them
    msg = link.recv(5000)
    assert msg is not None and msg.msg_type == MsgType.END
    assert (link.rejected, link.foreign) == (1, 1)


# -- time outs and liveness --------------------------------------------------------------------

def test_wait_start_without_a_hub_times_out_naming_it(ctx, closing, endpoint):
    link = closing(ControlLink(ctx, endpoint, "worker", "w3", FAST))
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout, match=f"worker w3: no START from the source at "
                                          f"{endpoint} within 0.3 s: is the source running"):
        link.wait_start(0.3)
    assert time.monotonic() - t0 < 2.0
    close_now(link)


def test_a_link_notices_a_silent_hub(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint, liveness=SHORT)
    hub.close()  # the source is gone: no more heartbeats
    with pytest.raises(PeerTimeout, match=f"source at {endpoint} silent for"):
        until(lambda: link.recv(50), lambda: False, "the link's peer timeout")
    close_now(link)


def test_the_hub_notices_a_silent_peer(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint, liveness=SHORT)
    link.send(MsgType.READY)
    hub_messages(hub, 1)
    assert hub.lost() == []
    link.close()  # the worker is gone: no more heartbeats
    until(lambda: hub.poll(50), lambda: bool(hub.lost("worker")), "the hub's peer timeout")
    assert [p.name for p in hub.lost()] == ["w0"] and hub.lost("collector") == []


def test_heartbeats_keep_both_ends_alive(ctx, closing, endpoint):
    brisk = Liveness(heartbeat_s=0.02, peer_timeout_s=0.3)
    hub, link = started(ctx, closing, endpoint, liveness=brisk)
    deadline = time.monotonic() + 2 * brisk.peer_timeout_s
    while time.monotonic() < deadline:  # both ends serve their sockets, nothing else happens
        assert hub.poll(10) == []
        assert link.recv(10) is None
    assert hub.lost() == []


def test_a_hub_on_an_endpoint_in_use_is_a_config_error(ctx, closing):
    endpoint = free_tcp_endpoint()
    closing(ControlHub(ctx, endpoint, RUN, START, FAST))
    with pytest.raises(ConfigError, match=f"cannot bind the control endpoint '{endpoint}'"):
        ControlHub(ctx, endpoint, RUN + 1, START, FAST)


def test_a_link_to_a_malformed_endpoint_is_a_config_error(ctx):
    with pytest.raises(ConfigError, match="source's control endpoint 'nowhere'"):
        ControlLink(ctx, "nowhere", "worker", "w0", FAST)


def test_a_link_that_was_paused_reads_the_queued_heartbeats_before_blaming_the_hub(
        ctx, closing, endpoint):
    """This node was frozen (here: it simply did not read) longer than the peer timeout while
    the hub kept sending heartbeats. Before, its first tick after the thaw raised "source
    silent" without reading them: a frozen node blamed a live one (issue #18)."""
    hub, link = started(ctx, closing, endpoint, liveness=SHORT)
    paused_until = time.monotonic() + 3 * SHORT.peer_timeout_s
    while time.monotonic() < paused_until:  # the hub lives on: its heartbeats queue up here
        hub.poll(20)
    link.tick()  # no PeerTimeout: heartbeats are waiting
    assert link.recv(0) is None  # reading them absorbs them ...
    link.tick()  # ... and the hub counts as heard


def busy(seconds: float) -> None:
    """The stage's own thread stuck in one long call that holds no lock (a 1 GB copy, a slow
    write): it serves no socket meanwhile. The call's length is the fault, not a sync."""
    import threading

    threading.Event().wait(seconds)


def test_a_link_whose_stage_is_busy_for_long_stays_alive_to_the_hub(ctx, closing, endpoint):
    """Before, heartbeats left only from the stage's loop: a collector busy longer than the
    peer timeout was declared dead by a source that was fine (issue #18)."""
    hub, link = started(ctx, closing, endpoint, liveness=SHORT)
    import threading

    stuck = threading.Thread(target=busy, args=(4 * SHORT.peer_timeout_s,))
    stuck.start()
    while stuck.is_alive():  # the hub's stage serves its socket; the link's does not
        hub.poll(20)
        assert hub.lost() == []
    link.tick()  # and the link, back from its call, has heard the hub all along


def test_a_hub_whose_stage_is_busy_for_long_stays_alive_to_its_peers(ctx, closing, endpoint):
    hub, link = started(ctx, closing, endpoint, liveness=SHORT)
    deadline = time.monotonic() + 4 * SHORT.peer_timeout_s
    while time.monotonic() < deadline:  # only the link's stage runs; the hub's is "busy"
        assert link.recv(20) is None
    assert hub.poll(0) == [] and hub.lost() == []


def test_a_kept_hub_holds_each_hello_until_the_next_run_begins(ctx, closing, endpoint):
    """A serving node's hub: stages come back between runs and wait; `begin` starts them all,
    a stage back while a run ends waits for the next one, `idle` forgets the run's peers."""
    hub = closing(ControlHub(ctx, endpoint, 0, None, FAST))
    first = closing(ControlLink(ctx, endpoint, "worker", "w0", FAST))
    until(lambda: hub.poll(50), lambda: hub.waiting("worker") == 1, "the held HELLO")
    assert first.recv(100) is None  # no START while no run is going
    hub.begin(RUN, START)
    assert first.wait_start(5.0) == START and first.run_id == RUN
    assert hub.waiting("worker") == 0 and hub.peers_of("worker")[0].name == "w0"
    hub.hold_new()  # the run ends: a stage saying HELLO now is back for the next run
    second = closing(ControlLink(ctx, endpoint, "worker", "w0", FAST))
    until(lambda: hub.poll(50), lambda: hub.waiting("worker") == 1, "the next run's HELLO")
    assert second.identity != first.identity  # one per link: the hub takes both
    assert second.recv(100) is None
    hub.idle()
    assert [p.identity for p in hub.all_peers()] == [second.identity]
    hub.begin(RUN + 1, {**START, "frames": 2})
    assert second.wait_start(5.0)["frames"] == 2 and second.run_id == RUN + 1
    assert first.recv(100) is None  # the ended run's link hears nothing of the next run


def test_a_waiting_link_says_hello_again_when_the_hub_was_replaced(ctx, closing, endpoint):
    """A serving stage waits for START without a deadline; if its source was restarted (a
    new hub that never heard its HELLO), it says HELLO again and is started."""
    hub = ControlHub(ctx, endpoint, 0, None, SHORT)
    link = closing(ControlLink(ctx, endpoint, "worker", "w0", SHORT))
    until(lambda: hub.poll(50), lambda: hub.waiting("worker") == 1, "the first HELLO")
    hub.close()
    new = closing(ControlHub(ctx, endpoint, RUN, START, SHORT))
    assert link.wait_start(10.0) == START
    assert [p.name for p in new.peers_of("worker")] == ["w0"]
