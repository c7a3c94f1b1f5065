"""Issue #18 item 7.4: a detector endpoint's query options.

`?timeout=abc` ended in a ValueError traceback instead of naming the option; karabo refused
`?pattern=PULL` although the pattern is a word, not a case-sensitive token; and with
`?verify_hash=1` a DECTRIS image whose `hash` was empty counted as an MD5 mismatch (and lost its
frame) while one without a `hash` passed unnoticed. A detector that sends no hash has sent
nothing to check: such frames are written and counted as unchecked, never as mismatches.
"""

from __future__ import annotations

import pytest

import protocol_senders
from stream_node import ExitCode
from stream_node.model.errors import ConfigError
from stream_node.origins import open_origin
from stream_node.origins.base import OriginOptions

sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")
OPTIONS = OriginOptions(timeout_s=0.1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("scheme", ["dectris", "dectris2", "karabo"])
@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", ""])
def test_a_timeout_that_is_not_a_positive_number_is_a_config_error(scheme, value):
    with pytest.raises(ConfigError, match=rf"{scheme.rstrip('2')}\w*: timeout={value!r}: "
                                          "use a number of seconds > 0"):
        open_origin(f"{scheme}+tcp://127.0.0.1:9?timeout={value}", OPTIONS)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_karabo_trains_that_is_not_a_positive_count_is_a_config_error(value):
    with pytest.raises(ConfigError, match=rf"karabo: trains={value!r}: use a whole number > 0"):
        open_origin(f"karabo+tcp://127.0.0.1:9?trains={value}", OPTIONS)


@pytest.mark.timeout(10)
def test_an_unknown_karabo_pattern_is_still_refused_by_name():
    with pytest.raises(ConfigError, match=r"karabo: pattern='push': use req, pull or sub"):
        open_origin("karabo+tcp://127.0.0.1:9?pattern=push", OPTIONS)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("written", ["PULL", "Pull", "pull"])
def test_karabo_pattern_is_taken_whatever_its_case(sender, written):
    """Against a real bridge (a PUSH sender process): the origin reads its first train."""
    endpoint = sender("karabo", "--pattern", "pull", "--frames", "2")
    origin = open_origin(f"karabo+{endpoint}?pattern={written}&timeout=10", OPTIONS)
    try:
        assert origin.pattern == "pull"
        assert origin.shape == (48, 64)
    finally:
        origin.close()


def counters(run) -> dict:
    return run.counters["reports"]["source"]["origin"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["empty_hash", "no_hash"])
def test_an_image_without_a_hash_is_written_and_counted_unchecked(node, ipc, tmp_path, sender,
                                                                   fault):
    code, err, run, _ = protocol_senders.run_series(
        node, ipc, tmp_path, sender, "dectris", "dectris", "--fault", fault,
        query="&verify_hash=1")
    assert code == ExitCode.OK, err
    assert run.missing == {} and run.received.all()
    assert counters(run) == {"dectris_hash_unchecked": 1}
    assert "hash_mismatch" not in err
