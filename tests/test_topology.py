"""Topology files: `check` names the line of every problem, settings resolve as default < file <
environment < --set, and `run --node` starts a host's stages as the role commands, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_written
from stream_node import read_run
from stream_node.cli import main
from stream_node.deploy.launcher import worst
from stream_node.model.errors import ExitCode
from stream_node.origins.synthetic import SyntheticDetector

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD = """\
name = "t"

[defaults]
ready_timeout = 20

[nodes.det]
host = "10.0.0.1"

[nodes.det.source]
control = "tcp://*:5550"
data = "tcp://*:5551"
frames = 100

[nodes.cmp]
host = "10.0.0.2"

[nodes.cmp.workers]
count = 2

[nodes.sto]
host = "10.0.0.3"

[nodes.sto.collector]
input = "tcp://*:5552"
file = "/data/{run}.h5"
"""


def write(tmp_path: Path, text: str, name: str = "topo.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def check(path: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main(["check", str(path), *extra])
    return code, capsys.readouterr().err.splitlines()


def line_of(path: Path, needle: str) -> int:
    """The line of the file holding `needle`: the tests name lines by content, not number."""
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


@pytest.mark.parametrize("example", ["topology.toml", "three_hosts.toml"])
def test_the_examples_are_valid(example, capsys):
    assert main(["check", str(EXAMPLES / example)]) == ExitCode.OK
    assert ": ok: run" in capsys.readouterr().out


# (edit of GOOD: old, new), the line holding this text, what the message says
ERRORS = [
    (('name = "t"', 'name = "t"\ncolour = "blue"'), "colour", "unknown key 'colour'"),
    (("ready_timeout = 20", "ready_timout = 20"), "ready_timout",
     "did you mean 'ready_timeout'"),
    (('host = "10.0.0.2"', 'host = "10.0.0.2"\nrack = 3'), "rack", "[nodes.cmp]: unknown key"),
    (("frames = 100", "frames = 100\nframez = 5"), "framez", "did you mean 'frames'"),
    (("frames = 100", "frames = 0"), "frames = 0", "must be > 0"),
    (("frames = 100", 'frames = 100\ndtype = "complex64"'), "dtype", "choose from"),
    (('data = "tcp://*:5551"', 'data = "tcp://*:port"'), "data =", "port 1-65535"),
    (('input = "tcp://*:5552"', 'input = "udp://*:5552"'), "udp://",
     "expected tcp://HOST:PORT or ipc://PATH"),
    (("frames = 100", 'frames = 100\nfrom = "pigeon://x"'), "from =", "unknown origin"),
    (('data = "tcp://*:5551"', 'data = "tcp://*:5550"'), "data =",
     "port 5550 on host 10.0.0.1 is already bound by [nodes.det.source] control"),
    (("frames = 100", 'frames = 100\nstatus = "tcp://*:5551"'), "status =",
     "port 5551 on host 10.0.0.1 is already bound by [nodes.det.source] data"),
    (("count = 2", 'count = 2\ninput = "tcp://10.0.0.9:5551"'), "10.0.0.9",
     "does not reach the source's data"),
    (("count = 2", 'count = 2\noutput = "tcp://10.0.0.3:6000"'), "6000",
     "does not reach the collector's input"),
    (("count = 2", 'count = 2\noutput = "tcp://10.0.0.3:6000"'), 'input = "tcp://*:5552"',
     "nobody sends to the collector's input"),
    (("count = 2", 'count = 2\ninput = "tcp://10.0.0.1:6000"'), 'data = "tcp://*:5551"',
     "no worker reads the source's data"),
    (('data = "tcp://*:5551"', 'data = "ring://cam"'), "[nodes.cmp.workers]",
     "ring:// and ipc:// work within one host"),
    (("frames = 100", "frames = 100\nworkers = 3"), "workers = 3",
     "the topology has 2 workers"),
    (("count = 2", "count = 0"), "count = 0", "a positive number of workers"),
    (("count = 2", 'count = 2\nname = "w"'), 'name = "w"', "set per worker process"),
    (('file = "/data/{run}.h5"', 'file = "/data/{run_id}.h5"'), "run_id",
     "unknown placeholder {run_id}"),
    (('host = "10.0.0.3"\n', ""), "[nodes.sto]", "host = \"ADDRESS\" is missing"),
    (('input = "tcp://*:5552"\n', ""), "[nodes.sto.collector]", "input is missing"),
    (("[nodes.cmp.workers]\ncount = 2\n", ""), "[nodes.cmp]", "no stage"),
    (("frames = 100", "frames = 100\nkernels = [3]"), "kernels", '"kernel" name'),
    (("frames = 100", "frames = = 100"), "frames = = 100", "not valid TOML"),
    (('file = "/data/{run}.h5"', 'file = "/data/{run}.h5"\n[nodes.sto.view]\npng = "l.png"'),
     "[nodes.sto.view]", "the collector has no tap to read"),
    (('file = "/data/{run}.h5"', 'file = "/data/{run}.h5"\ntap = "tcp://*:5560"\n'
      '[nodes.det.view]\ninput = "ipc:///tap"'), 'input = "ipc:///tap"',
     "does not reach the collector's tap"),
    (('file = "/data/{run}.h5"', 'file = "/data/{run}.h5"\ntap = "tcp://*:5560"\n'
      '[nodes.det.view]\npgn = "l.png"'), "pgn", "did you mean 'png'"),
]


@pytest.mark.parametrize(("edit", "where", "message"), ERRORS,
                         ids=[e[2][:30] for e in ERRORS])
def test_each_kind_of_error_points_at_its_line(tmp_path, capsys, edit, where, message):
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(*edit, 1))
    code, lines = check(path, capsys)
    assert code == ExitCode.CONFIG
    expected = f"{path}:{line_of(path, where)}: "
    assert any(line.startswith(expected) and message in line for line in lines), lines
    assert "nothing started" in lines[-1]


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = GOOD
    independent = ("unknown key 'colour'", "did you mean 'ready_timeout'", "[nodes.cmp]: unk",
                   "did you mean 'frames'", "expected tcp://HOST:PORT or ipc://PATH",
                   "unknown origin", "does not reach the source's data",
                   "a positive number of workers", "unknown placeholder")
    chosen = [e for e in ERRORS if e[2].startswith(independent)]
    assert len(chosen) == len(independent)
    for (old, new), _, _ in chosen:
        text = text.replace(old, new, 1)
    path = write(tmp_path, text)
    code, lines = check(path, capsys)
    assert code == ExitCode.CONFIG
    for _, where, message in chosen:
        assert any(f":{line_of(path, where)}: " in line and message in line
                   for line in lines), (message, lines)
    assert all(line.startswith(f"{path}:") for line in lines[:-1])


def test_a_port_bound_twice_by_stages_of_one_host(tmp_path, capsys):
    text = GOOD.replace('host = "10.0.0.3"', 'host = "10.0.0.1"').replace(
        'input = "tcp://*:5552"', 'input = "tcp://10.0.0.1:5551"')
    path = write(tmp_path, text)
    code, lines = check(path, capsys)
    assert code == ExitCode.CONFIG
    assert any(f":{line_of(path, '10.0.0.1:5551')}: " in line and "already bound by "
               "[nodes.det.source] data" in line for line in lines), lines


def settings(path: Path, capsys, *extra: str) -> dict:
    assert main(["config", "show", str(path), "--json", *extra]) == ExitCode.OK
    return json.loads(capsys.readouterr().out)


def test_precedence_default_file_environment_flag(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, GOOD)
    shown = settings(path, capsys)
    col = shown["nodes.sto.collector"]["settings"]
    assert col["drain_timeout"] == {"value": 10.0, "from": "default"}
    assert col["ready_timeout"] == {"value": 20, "from": f"file line {line_of(path, 'ready_')}"}
    monkeypatch.setenv("STREAM_NODE_READY_TIMEOUT", "7")
    monkeypatch.setenv("STREAM_NODE_DRAIN_TIMEOUT", "3")
    shown = settings(path, capsys, "--set", "collector.drain_timeout=4")
    col = shown["nodes.sto.collector"]["settings"]
    assert col["ready_timeout"] == {"value": "7", "from": "env STREAM_NODE_READY_TIMEOUT"}
    assert col["drain_timeout"] == {"value": "4", "from": "--set collector.drain_timeout=4"}
    # Every stage that has the flag takes the environment's value, on every node:
    src = shown["nodes.det.source"]
    assert src["settings"]["ready_timeout"]["value"] == "7"
    assert "--ready-timeout 7" in src["commands"][0]
    assert "--drain-timeout 4" in shown["nodes.sto.collector"]["commands"][0]
    assert src["settings"]["workers"] == {"value": 2, "from": "topology (workers counted)"}


def test_memory_bounds_are_settings_of_every_stage(tmp_path, capsys, monkeypatch):
    text = GOOD.replace("ready_timeout = 20", 'ready_timeout = 20\nsndbuf = "8MiB"')
    path = write(tmp_path, text)
    monkeypatch.setenv("STREAM_NODE_RCVHWM", "2")
    shown = settings(path, capsys, "--set", "worker.sndhwm=3")
    for section in ("nodes.det.source", "nodes.cmp.workers", "nodes.sto.collector"):
        command = shown[section]["commands"][0]
        assert "--sndbuf 8MiB" in command and "--rcvhwm 2" in command
        assert ("--sndhwm 3" in command) == (section == "nodes.cmp.workers")


def test_environment_and_set_values_are_checked_like_flags(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("STREAM_NODE_FRAMES", "-5")
    monkeypatch.setenv("STREAM_NODE_READY_TIMOUT", "5")
    code, lines = check(path, capsys, "--set", "worker.ready_timeout=soon", "--set", "nosuch=1")
    assert code == ExitCode.CONFIG
    text = "\n".join(lines)
    assert "env STREAM_NODE_READY_TIMOUT: no such setting (did you mean 'ready_timeout'?)" in text
    assert "env STREAM_NODE_FRAMES" in text and "must be > 0" in text
    assert "--set worker.ready_timeout=soon" in text and "is not a number" in text
    assert "--set 'nosuch=1': no such setting" in text


def test_role_commands_take_settings_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("STREAM_NODE_PEER_TIMEOUT", "2.5")
    assert main(["config", "show", "--json"]) == ExitCode.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["worker"]["settings"]["peer_timeout"] == {
        "value": "2.5", "from": "env STREAM_NODE_PEER_TIMEOUT"}
    monkeypatch.setenv("STREAM_NODE_PEER_TIMEOUT", "never")
    code = main(["worker", "--control", "ipc:///x", "--input", "ipc:///y", "--output", "ipc:///z"])
    assert code == ExitCode.CONFIG
    assert "env STREAM_NODE_PEER_TIMEOUT" in capsys.readouterr().err


def test_config_show_prints_toml_with_origins(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["config", "show", str(path), "--node", "cmp"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "[nodes.cmp.workers]" in out and "[nodes.det.source]" not in out
    assert 'input = "tcp://10.0.0.1:5551"' in out and "# topology (the source's data)" in out
    assert "# command: stream-node" in out and "--name cmp-w1 --index 1" in out


def test_worst_exit_code_puts_causes_before_their_consequences():
    assert worst([0, 0, 0]) == ExitCode.OK
    assert worst([0, 3, 0]) == ExitCode.FRAMES_MISSING
    assert worst([7, 6, 4]) == ExitCode.IO  # the collector's disk, not the others' reaction
    assert worst([7, 5]) == ExitCode.CONFIG
    assert worst([3, 7]) == ExitCode.ABORTED
    assert worst([4, 99]) == 99  # unknown: as bad as an internal error


def local_topology(tmp_path: Path, frames: int = 60, rate: float = 0, extra: str = "") -> Path:
    """One host: ring fan-out, 2 workers with a kernel, collector; unique endpoints."""
    return write(tmp_path, f"""\
        name = "local"

        [defaults]
        ready_timeout = 30
        peer_timeout = 5
        sndhwm = 4
        rcvbuf = "2MiB"

        [nodes.here]
        host = "127.0.0.1"

        [nodes.here.source]
        control = "ipc://{tmp_path}/control"
        data = "ring://t{os.getpid()}-{tmp_path.name}"
        frames = {frames}
        shape = [64, 128]
        rate = {rate}
        {extra}

        [nodes.here.workers]
        count = 2
        kernels = [{{ kernel = "bin2x2" }}]

        [nodes.here.collector]
        input = "ipc://{tmp_path}/frames"
        file = "{tmp_path}/out/{{run}}-{{node}}.h5"
        drain_timeout = 5
        """)


def start_run(path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stream_node", *extra, "run", str(path), "--node", "here"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # its stages are in sessions of their own: they end by their timeouts
        out, err = proc.communicate()
        raise AssertionError(f"stream-node run hung for {timeout} s:\n{err[-4000:]}") from None
    return proc.returncode, out, err


def binned(frame_id: int) -> np.ndarray:
    frame = SyntheticDetector((64, 128), "uint16", 0).frame(frame_id).astype(np.uint32)
    return frame.reshape(32, 2, 64, 2).sum(axis=(1, 3))


@pytest.mark.timeout(120)
def test_run_node_starts_a_whole_local_topology_and_writes_every_frame(tmp_path):
    path = local_topology(tmp_path)
    proc = start_run(path, "--log-json")
    code, out, err = ended(proc)
    assert code == ExitCode.OK, err
    entries = [json.loads(line) for line in (out + err).splitlines()]  # every line is JSON
    stages = {e.get("stage") for e in entries}
    assert {"here/source", "here/here-w0", "here/here-w1", "here/collector"} <= stages
    assert any("60 written of 60 sent" in e["message"] for e in entries)
    run = read_run(tmp_path / "out" / "local-here.h5")
    assert run.missing == {} and run.received.all() and len(run.frames) == 60
    for i in (0, 31, 59):
        assert np.array_equal(run.frames[i], binned(i))


@pytest.mark.timeout(60)
def test_run_dry_run_prints_the_commands_a_user_would_type(tmp_path, capsys):
    path = local_topology(tmp_path)
    assert main(["run", str(path), "--node", "here", "--dry-run"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == ["collector", "worker", "worker", "source"]
    assert "--workers 2" in lines[3] and "--name here-w1 --index 1" in lines[2]
    assert main(["run", str(path), "--node", "nowhere", "--dry-run"]) == ExitCode.CONFIG


def test_each_worker_of_a_group_serves_on_its_own_port(capsys):
    assert main(["run", str(EXAMPLES / "three_hosts.toml"), "--node", "compute",
                 "--dry-run"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines):
        assert f"--status 'tcp://*:{5570 + i}'" in line
        assert f"--name compute-w{i} --index {i}" in line
        assert "--input tcp://10.0.0.1:5551 --output tcp://10.0.0.3:5552" in line


@pytest.mark.timeout(120)
def test_the_single_host_example_runs(tmp_path):
    overrides = ["--set", f"source.control=ipc://{tmp_path}/c", "--set",
                 f"source.data=ring://ex{os.getpid()}", "--set", f"collector.input=ipc://"
                 f"{tmp_path}/f", "--set", "frames=40", "--set", "shape=64x64"]
    proc = subprocess.run(
        [sys.executable, "-m", "stream_node", "run", str(EXAMPLES / "topology.toml"), "--node",
         "local", *overrides], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "40 written of 40 sent" in proc.stdout
    assert len(list(tmp_path.glob("example-*.h5"))) == 1


def wait_for(proc: subprocess.Popen, text: str) -> list[str]:
    """Read the run's log until `text` appears (a handshake, not a delay)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the run ended before {text!r}:\n{''.join(seen)[-4000:]}")


def assert_exact_ledger(path: Path, frames: int) -> tuple[np.ndarray, dict]:
    run = read_run(path)
    written = np.flatnonzero(run.received)
    assert set(written.tolist()).isdisjoint(run.missing)
    assert len(written) + len(run.missing) == len(run.frames)
    assert len(run.frames) <= frames
    return written, run.missing


@pytest.mark.timeout(120)
def test_first_sigint_ends_the_run_at_the_last_frame_sent_and_exits_0(tmp_path):
    path = local_topology(tmp_path, frames=100000, rate=200)
    status = f"ipc://{tmp_path}/collector.status"
    path.write_text(path.read_text() + f'status = "{status}"\n')  # into the collector's table
    proc = start_run(path)
    wait_for(proc, "the collector ready")
    wait_written(status, 5)  # frames flow: the run has something to end with
    proc.send_signal(signal.SIGINT)
    code, _, err = ended(proc)
    written, missing = assert_exact_ledger(tmp_path / "out" / "local-here.h5", 100000)
    assert code == ExitCode.OK, err
    assert missing == {} and 0 < len(written) < 100000


@pytest.mark.timeout(120)
def test_a_second_signal_aborts_every_stage_at_once(tmp_path):
    path = local_topology(tmp_path, frames=100000, rate=200)
    proc = start_run(path)
    wait_for(proc, "the collector ready")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)  # a second SIGINT could merge with the first, pending one
    code, _, err = ended(proc)
    assert "every stage aborts now" in err
    assert time.monotonic() - t0 < 15, err
    assert code == ExitCode.ABORTED, err
    assert "Traceback" not in err
    assert_exact_ledger(tmp_path / "out" / "local-here.h5", 100000)


@pytest.mark.timeout(120)
def test_a_signal_on_a_host_without_the_source_stops_its_stages_with_the_ledger(tmp_path):
    """The storage host is stopped alone: its collector records what did not come, and the
    source on the other node learns the run is off."""
    path = local_topology(tmp_path, frames=100000, rate=200)
    text = path.read_text().replace("[nodes.here.source]", "[nodes.det]\nhost = \"127.0.0.1\"\n"
                                    "\n[nodes.det.source]")
    path.write_text(text)
    here = start_run(path)
    det = subprocess.Popen(
        [sys.executable, "-m", "stream_node", "run", str(path), "--node", "det"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(det, "the collector ready")
        here.send_signal(signal.SIGTERM)
        code, _, err = ended(here)
        assert code == ExitCode.ABORTED, err
        assert "every stage aborts now" in err
        assert ended(det)[0] == ExitCode.ABORTED
    finally:
        det.kill()
        det.communicate()
    written, missing = assert_exact_ledger(tmp_path / "out" / "local-here.h5", 100000)
    assert len(written) + len(missing) == 100000
    assert "SIGTERM" in missing[99999]


@pytest.mark.timeout(120)
def test_a_source_that_fails_stops_the_stages_of_its_host_at_once(tmp_path):
    """A kernel that refuses the frames' dtype is a configuration error of the source; the
    workers and the collector must not wait out their 30 s ready timeout for it."""
    path = local_topology(tmp_path)
    path.write_text(path.read_text().replace('kernel = "bin2x2"', 'kernel = "photonise", '
                                             "photon_energy_kev = 12.4"))
    t0 = time.monotonic()
    code, _, err = ended(start_run(path))
    assert code == ExitCode.CONFIG, err
    assert "photonise" in err and "the source failed, stopping" in err
    assert time.monotonic() - t0 < 20


VIEWED = """\
name = "t"

[nodes.det]
host = "10.0.0.1"

[nodes.det.source]
control = "tcp://*:5550"
data = "tcp://*:5551"

[nodes.det.workers]

[nodes.sto]
host = "10.0.0.3"

[nodes.sto.collector]
input = "tcp://*:5552"
file = "/data/{run}.h5"
tap = "tcp://*:5560"

[nodes.beamline]
host = "10.0.0.4"

[nodes.beamline.view]
png = "/srv/www/latest.png"
every = 1
"""


def test_a_view_stage_reads_the_collectors_tap(tmp_path, capsys):
    path = write(tmp_path, VIEWED)
    assert main(["run", str(path), "--node", "beamline", "--dry-run"]) == ExitCode.OK
    assert capsys.readouterr().out.splitlines() == [
        "stream-node --log-level INFO view tcp://10.0.0.3:5560 --every 1 --png "
        "/srv/www/latest.png"]
    shown = settings(path, capsys, "--set", "view.timeout=30")["nodes.beamline.view"]
    assert shown["settings"]["input"] == {"value": "tcp://10.0.0.3:5560",
                                          "from": "topology (the collector's tap)"}
    assert "--timeout 30" in shown["commands"][0]


def viewed_topology(tmp_path: Path, view_node: str = "here", view: str = "") -> Path:
    """The local topology, 150 frames over 3 s, its collector's tap watched by a viewer."""
    path = local_topology(tmp_path, frames=150, rate=50)
    text = path.read_text().replace("drain_timeout = 5", f'drain_timeout = 5\ntap = "ipc://'
                                    f'{tmp_path}/tap"')
    if view_node != "here":
        text += f'\n[nodes.{view_node}]\nhost = "127.0.0.1"\n'
    # timeout: a viewer left behind by a failed test ends by itself
    path.write_text(text + f'\n[nodes.{view_node}.view]\nevery = 0.2\ntimeout = 30\n{view}\n')
    return path


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).ndim == 3  # it decodes: a whole picture


def assert_every_frame(tmp_path: Path, frames: int = 150) -> None:
    written, missing = assert_exact_ledger(tmp_path / "out" / "local-here.h5", frames)
    assert missing == {} and len(written) == frames


@pytest.mark.timeout(120)
def test_a_view_stage_draws_the_run_and_ends_with_it(tmp_path):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    png = tmp_path / "img" / "latest.png"  # its directory is made, like the collector's
    code, _, err = ended(start_run(viewed_topology(tmp_path, view=f'png = "{png}"')))
    assert code == ExitCode.OK, err
    assert "run: here/view: stream-node" in err and "here/view ended" in err
    assert_png(png)
    assert_every_frame(tmp_path)


@pytest.mark.timeout(120)
def test_a_host_with_only_a_viewer_ends_at_the_runs_end(tmp_path):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    png = tmp_path / "latest.png"
    path = viewed_topology(tmp_path, view_node="look", view=f'png = "{png}"')
    look = subprocess.Popen(
        [sys.executable, "-m", "stream_node", "run", str(path), "--node", "look"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(look, "run: look/view: stream-node")
        code, _, err = ended(start_run(path))
        assert code == ExitCode.OK, err
        code, _, err = ended(look)  # the tap's END ends it, not a signal
        assert code == ExitCode.OK and "look/view ended (code 0)" in err, err
    finally:
        look.kill()
        look.communicate()
    assert_png(png)
    assert_every_frame(tmp_path)


@pytest.mark.timeout(120)
def test_a_viewer_that_fails_at_start_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="stream-node view needs the [view] extra")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"):  # no window can open: no --png
        monkeypatch.delenv(name, raising=False)
    code, _, err = ended(start_run(viewed_topology(tmp_path)))
    assert code == ExitCode.CONFIG, err
    assert "use --png PATH" in err and "here/view exited with code 5" in err
    assert_every_frame(tmp_path)
