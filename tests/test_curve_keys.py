"""CURVE keys keep nodes of other topologies out (seed Problem 4): a wrong key is refused, the
refusal is visible on both ends, and not one frame reaches the intruder."""

from __future__ import annotations

import shutil

import pytest

from conftest import finish
from stream_node import ExitCode, read_run
from stream_node.cli import main


@pytest.fixture
def keys(tmp_path):
    good, other = tmp_path / "keys", tmp_path / "other"
    assert main(["keys", "generate", str(good)]) == ExitCode.OK
    assert main(["keys", "generate", str(other)]) == ExitCode.OK
    # An intruder that knows the topology's public server key but holds a key of its own.
    knows_server = tmp_path / "knows-server"
    knows_server.mkdir()
    (knows_server / "authorized").mkdir()
    for name in ("server.key", "server.key_secret"):
        shutil.copy(good / name, knows_server / name)
    for name in ("node.key", "node.key_secret"):
        shutil.copy(other / name, knows_server / name)
    return good, other, knows_server


def test_generate_refuses_to_overwrite_keys(keys, capsys):
    good, _, _ = keys
    assert main(["keys", "generate", str(good)]) == ExitCode.CONFIG
    assert "already holds keys" in capsys.readouterr().err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("intruder", ["other", "knows-server"])
def test_a_node_with_the_wrong_keys_is_refused_and_gets_no_frame(node, ipc, tmp_path, keys,
                                                                 intruder):
    good, other, knows_server = keys
    bad = other if intruder == "other" else knows_server
    path = tmp_path / "run.h5"
    c, d, o = ipc("c"), ipc("d"), ipc("o")
    timing = ("--ready-timeout", "20")
    collector = node("collector", "--keys", str(good), "--control", c, "--input", o,
                     "--file", str(path), *timing)
    source = node("source", "--keys", str(good), "--control", c, "--data", d, "--workers", "1",
                  "--frames", "50", "--shape", "32x64", "--rate", "25", *timing)
    # The source waits for its one worker while the intruder knocks: w0 starts only once the
    # intruder was refused. Started side by side, a slow start-up (a loaded CI machine) could
    # let the run end before the intruder knocked, and it timed out instead of being refused.
    stranger = node("worker", "--keys", str(bad), "--control", c, "--input", d, "--output", o,
                    "--name", "intruder", "--index", "1", *timing)
    code, _, err = finish(stranger)
    assert code == ExitCode.CONFIG
    assert "refused the connection (CURVE handshake failed" in err
    node("worker", "--keys", str(good), "--control", c, "--input", d, "--output", o,
         "--name", "w0", *timing)
    code, _out, err = finish(source)
    assert code == ExitCode.OK, err
    run = read_run(path)
    assert run.missing == {} and run.received.all()
    assert set(run.counters["reports"]["workers"]) == {"w0"}  # the intruder never took part
    # Counted and logged whichever key is wrong: before, an intruder with another server key
    # failed before the authenticator heard of it, and nothing was counted (issue #18).
    assert run.counters["reports"]["source"]["refused_peers"] >= 1
    assert "does not hold this topology's keys" in err
    assert finish(collector)[0] == ExitCode.OK


@pytest.mark.timeout(30)
def test_a_node_without_keys_cannot_join_a_keyed_topology(node, ipc, tmp_path, keys):
    good, _, _ = keys
    c = ipc("c")
    node("collector", "--keys", str(good), "--control", c, "--input", ipc("o"),
         "--file", str(tmp_path / "run.h5"), "--ready-timeout", "10")
    worker = node("worker", "--control", c, "--input", ipc("d"), "--output", ipc("o"),
                  "--ready-timeout", "3")
    code, _, err = finish(worker)
    assert code in (ExitCode.CONFIG, ExitCode.PEER_TIMEOUT), err


def test_a_keys_directory_without_keys_is_a_config_error(tmp_path, capsys):
    code = main(["worker", "--keys", str(tmp_path / "nothing"), "--control", "ipc:///x",
                 "--input", "ipc:///y", "--output", "ipc:///z"])
    assert code == ExitCode.CONFIG
    assert "cannot load CURVE keys" in capsys.readouterr().err
