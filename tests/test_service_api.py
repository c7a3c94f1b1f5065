"""The served node's control API: its state machine, settings, token, and `stream-node ctl`,
against a real ApiServer on 127.0.0.1 (real sockets, real `ctl` processes)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from stream_node.deploy.api import ApiServer
from stream_node.deploy.api_token import load_token
from stream_node.deploy.run_states import NodeState, Refused, ServiceCore
from stream_node.model.errors import ConfigError, ExitCode

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-token"
# Written out here, not read from the module: the table docs/service_api.md promises.
ALLOWED = {
    "idle": {"start"},
    "armed": {"start", "stop", "abort"},
    "running": {"stop", "abort"},
    "draining": {"abort"},
    "error": set(),
}
# The smallest valid PNG: one grey pixel (what the provider hands the API as it is).
ONE_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63680000008200815b4b5f1c0000000049454e44ae426082")


class Node:
    """What a serving node registers: hooks that record each call."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core
        self.calls: list[tuple[str, Any]] = []
        core.set_hooks(on_start=lambda config: self.calls.append(("start", config)),
                       on_stop=lambda: self.calls.append(("stop", None)),
                       on_abort=lambda: self.calls.append(("abort", None)))


@pytest.fixture
def core() -> ServiceCore:
    return ServiceCore("det1", history=3)


@pytest.fixture
def node(core) -> Node:
    return Node(core)


@pytest.fixture
def server(core):
    api = ApiServer(core, token=TOKEN)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def open_server(core):
    api = ApiServer(core)
    try:
        yield api
    finally:
        api.close()


def call(server: ApiServer, method: str, path: str, body: Any = None, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, Any, Any]:
    """(status, headers, JSON body or raw bytes) of one real HTTP request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            status, headers, content = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        status, headers, content = exc.code, exc.headers, exc.read()
    if headers.get_content_type() == "application/json":
        return status, headers, json.loads(content)
    return status, headers, content


# --- the state machine ----------------------------------------------------------------------

@pytest.mark.parametrize("state", [s.value for s in NodeState])
@pytest.mark.parametrize("command", ["start", "stop", "abort"])
def test_every_command_in_every_state_is_accepted_or_refused_with_409_and_a_reason(
        server, core, node, state, command):
    core.set_state(state, "detector dcu1 unreachable" if state == "error" else "")
    status, _, body = call(server, "POST", f"/api/v1/command/{command}")
    if command in ALLOWED[state]:
        assert status == 200, body
        assert body["accepted"] is True and body["command"] == command
        assert [c for c, _ in node.calls] == [command]
    else:
        assert status == 409, body
        assert body["state"] == state
        assert f"the node is {state}" in body["error"] and "valid when" in body["error"]
        assert node.calls == []
    if state == "error" and status == 409:
        assert "detector dcu1 unreachable" in body["error"]


def test_start_hands_the_hook_a_copy_of_the_next_run_settings(core, node):
    core.configure({"frames": "10", "series": "lyso_01"})
    core.start()
    (_, config), = node.calls
    assert config["frames"] == 10 and config["series"] == "lyso_01"
    config["frames"] = 99  # the node's copy: the service's settings stay as they were
    assert core.config["frames"] == 10


def test_a_node_without_hooks_refuses_commands_as_not_serving_runs():
    core = ServiceCore("viewer")
    with pytest.raises(Refused, match="does not serve runs"):
        core.start()


def test_a_command_while_another_is_carried_out_is_refused_but_abort_gets_through(core):
    entered, release = threading.Event(), threading.Event()
    aborted = []

    def slow_start(config):
        entered.set()
        assert release.wait(10)

    core.set_hooks(on_start=slow_start, on_stop=lambda: None, on_abort=lambda: aborted.append(1))
    core.set_state(NodeState.ARMED)
    starter = threading.Thread(target=core.start)
    starter.start()
    try:
        assert entered.wait(10)
        with pytest.raises(Refused, match="still carrying out start"):
            core.stop()
        with pytest.raises(Refused, match="still carrying out start"):
            core.start()
        core.abort()
        assert aborted == [1]
        assert core.status()["busy"] == ["start"]
    finally:
        release.set()
        starter.join(10)
    assert core.status()["busy"] == []


def test_a_hook_that_raises_leaves_the_command_free_to_ask_again(core):
    calls = []

    def failing_start(config):
        calls.append(config)
        if len(calls) == 1:
            raise Refused("detector not connected")

    core.set_hooks(on_start=failing_start)
    with pytest.raises(Refused, match="detector not connected"):
        core.start()
    core.start()
    assert len(calls) == 2


def test_a_second_stop_of_the_same_run_is_refused_and_abort_after_stop_marks_it_aborted(
        core, node):
    core.begin_run("lyso", "a.h5", run_id=7, frames_expected=100)
    core.stop()
    with pytest.raises(Refused, match="already asked of run 1"):
        core.stop()
    core.abort()
    record = core.end_run(int(ExitCode.ABORTED), frames_written=40, missing=60, message="abort")
    assert record.state == "aborted"
    assert [c for c, _ in node.calls] == ["stop", "abort"]
    core.begin_run("lyso", "b.h5", run_id=8, frames_expected=100)
    core.stop()  # a new run: asking again is fine
    assert core.end_run(0, 100, 0).state == "done"


def test_a_run_goes_running_draining_done_and_the_history_keeps_the_last_n(core):
    assert core.status()["current"] is None and core.next_run() == 1
    record = core.begin_run("lyso_01", "det1_lyso_01_00001.h5", run_id=0xABC,
                            frames_expected=1000)
    assert record.run == 1 and record.run_id == "0x0000000000000abc"
    core.update_run(frames_written=500, missing=2)
    status = core.status()
    assert status["state"] == "running" and status["safe_to_arm"] is False
    assert status["current"]["frames_written"] == 500 and status["current"]["missing"] == 2
    assert status["counters"]["frames_written"] == 500
    core.draining()
    assert core.status()["state"] == "draining"
    assert core.status()["current"]["state"] == "draining"
    done = core.end_run(int(ExitCode.FRAMES_MISSING), 998, 2, "2 frames missing", then="armed")
    assert done.state == "done" and done.exit_code == 3 and done.ended
    status = core.status()
    assert status["state"] == "armed" and status["safe_to_arm"] is True
    assert status["current"] is None and status["runs"][0]["missing"] == 2

    for run, code in [(2, 1), (3, 0), (4, 6), (5, 0)]:
        core.begin_run("s", f"{run}.h5", run_id=run, frames_expected=None)
        core.update_run(10, 0)
        assert core.end_run(code, 10, 0).state == ("done" if code == 0 else "failed")
    status = core.status()
    assert [r["run"] for r in status["runs"]] == [5, 4, 3]  # newest first, the last 3 only
    assert status["counters"] == {"runs": 5, "failed_runs": 2, "frames_written": 1038,
                                  "missing": 2}


def test_the_status_answers_when_a_stage_snapshot_raises(server, core):
    core.set_stages(lambda: 1 / 0)
    status, _, body = call(server, "GET", "/api/v1/status", token=None)
    assert status == 200 and "ZeroDivisionError" in body["stages"][0]["error"]

    core.set_stages([lambda: {"role": "collector", "name": "c", "frames": np.int64(5)},
                     lambda: {}["gone"]])
    status, _, body = call(server, "GET", "/api/v1/status", token=None)
    stages = body["stages"]
    assert stages[0]["frames"] == 5 and "stage 1 snapshot failed" in stages[1]["error"]


# --- settings ---------------------------------------------------------------------------------

def test_settings_given_as_strings_are_coerced(core):
    answer = core.configure({"frames": "1000", "rate_hz": "2.5", "compression": "BSLZ4",
                             "kernels": '[{"kernel": "bin2x2"}]', "series": "lyso_01",
                             "directory": "/data/run"})
    assert answer["applies_to"] == "next run"
    config = answer["config"]
    assert config["frames"] == 1000 and config["rate_hz"] == 2.5
    assert config["compression"] == "bslz4" and config["kernels"] == [{"kernel": "bin2x2"}]
    assert core.configure({"frames": "none", "rate_hz": ""})["config"]["frames"] is None
    assert core.config["rate_hz"] is None


@pytest.mark.parametrize(("updates", "message"), [
    ({"framez": 10}, "unknown setting 'framez'; allowed: file_template, directory, frames"),
    ({"file_template": "{node}_{scan}.h5"}, "unknown placeholder {scan}"),
    ({"file_template": "{run.real}.h5"}, "unknown placeholder {run.real}"),
    ({"file_template": "/abs/{run}.h5"}, "a name inside `directory`"),
    ({"file_template": "../{run}.h5"}, "a name inside `directory`"),
    ({"file_template": "{series:05d}.h5"}, "file_template"),
    ({"file_template": "{run"}, "file_template"),
    ({"file_template": ""}, "non-empty"),
    ({"frames": "0"}, ">= 1"),
    ({"frames": "ten"}, ">= 1"),
    ({"rate_hz": "-1"}, "> 0"),
    ({"rate_hz": "nan"}, "> 0"),
    ({"compression": "gzip"}, "none, bslz4"),
    ({"kernels": '[{"name": "bin2x2"}]'}, '"kernel" name'),
    ({"kernels": "[not json"}, "not JSON"),
])
def test_a_setting_that_cannot_work_is_a_config_error_and_changes_nothing(core, updates,
                                                                          message):
    before = core.config
    with pytest.raises(ConfigError, match=re.escape(message)):
        core.configure({"series": "changed", **updates})
    assert core.config == before


def test_settings_over_http_are_checked_and_apply_to_the_next_run(server, core):
    core.begin_run("a", "a.h5", run_id=1, frames_expected=10)
    status, _, body = call(server, "PUT", "/api/v1/config", {"frames": "20"})
    assert status == 200 and body == {"config": core.config, "applies_to": "next run"}
    assert core.status()["current"]["frames_expected"] == 10  # the running run is untouched
    status, _, body = call(server, "PUT", "/api/v1/config", {"nope": 1})
    assert status == 400 and "allowed:" in body["error"] and body["state"] == "running"
    status, _, body = call(server, "PUT", "/api/v1/config", raw=b"{not json")
    assert status == 400 and "JSON object" in body["error"]
    status, _, body = call(server, "PUT", "/api/v1/config", [1, 2])
    assert status == 400
    status, _, body = call(server, "GET", "/api/v1/config", token=None)
    assert status == 200 and body["config"]["frames"] == 20


def test_the_file_name_expands_every_placeholder_and_keeps_a_series_in_its_folder(core):
    now = datetime(2026, 3, 4, 5, 6, 7)
    assert core.file_name("lyso_01", 7, 0xAB, now) == "det1_lyso_01_00007.h5"
    assert core.file_name("../etc/x", 7, 0xAB, now) == "det1_.._etc_x_00007.h5"
    assert core.file_name(None, 7, 0xAB, now) == "det1_series_00007.h5"
    core.configure({"file_template": "{date}/{node}-{time}-{run_id}-{run:03d}-{series}.h5"})
    assert core.file_name("s1", 12, 0xAB, now) == \
        "20260304/det1-050607-00000000000000ab-012-s1.h5"


# --- the token, the routes --------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/command/start", None),
    ("PUT", "/api/v1/config", {"frames": 5}),
])
@pytest.mark.parametrize("token", [None, "wrong", f"{TOKEN}x"])
def test_changes_without_the_right_token_are_401_and_change_nothing(server, core, node, method,
                                                                    path, body, token):
    status, headers, answer = call(server, method, path, body, token=token)
    assert status == 401, answer
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in answer["error"]
    assert node.calls == [] and core.config["frames"] is None


def test_changes_with_the_token_are_accepted(server, core, node):
    assert call(server, "PUT", "/api/v1/config", {"frames": 5})[0] == 200
    assert call(server, "POST", "/api/v1/command/start")[0] == 200
    assert node.calls == [("start", core.config)]


@pytest.mark.parametrize("path", ["/api/v1/status", "/api/v1/config", "/api/v1/",
                                  "/api/v1/openapi.json", "/", "/page.js", "/page.css",
                                  "/api/v1/frame.png"])
def test_reading_needs_no_token(server, path):
    status, headers, _ = call(server, "GET", path, token=None)
    assert status in (200, 204)
    assert headers["Cache-Control"] == "no-store"


def test_the_index_lists_every_endpoint(server):
    _, _, body = call(server, "GET", "/api/v1/", token=None)
    paths = {(e["method"], e["path"]) for e in body["endpoints"]}
    assert ("POST", "/api/v1/command/abort") in paths and ("PUT", "/api/v1/config") in paths
    assert body["auth"] == "bearer"


def test_an_unknown_command_is_404_with_the_known_ones(server, node):
    status, _, body = call(server, "POST", "/api/v1/command/reboot")
    assert status == 404 and "start, stop, abort" in body["error"]
    status, _, body = call(server, "GET", "/api/v1/nothing", token=None)
    assert status == 404 and "error" in body


def test_a_server_without_a_token_takes_commands_from_anyone(open_server, node):
    assert call(open_server, "POST", "/api/v1/command/start", token=None)[0] == 200


def test_the_frame_is_204_until_there_is_one_then_the_png(server, core):
    frames: list[bytes | None] = [None]
    core.set_frame(lambda: frames[-1])
    status, _, content = call(server, "GET", "/api/v1/frame.png", token=None)
    assert status == 204 and content == b""
    frames.append(ONE_PIXEL_PNG)
    status, headers, content = call(server, "GET", "/api/v1/frame.png", token=None)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert content == ONE_PIXEL_PNG
    core.set_frame(lambda: 1 / 0)  # a failing provider: no picture, not an error
    assert call(server, "GET", "/api/v1/frame.png", token=None)[0] == 204


def test_a_failing_hook_is_a_500_with_its_message_and_the_server_goes_on(server, core):
    def broken(config):
        raise OSError("cannot open /data")

    core.set_hooks(on_start=broken)
    status, _, body = call(server, "POST", "/api/v1/command/start")
    assert status == 500 and "cannot open /data" in body["error"]
    assert call(server, "GET", "/api/v1/status", token=None)[0] == 200


def test_closing_the_server_frees_its_port_at_once(core):
    api = ApiServer(core, port=0)
    assert api.port > 0 and api.url == f"http://127.0.0.1:{api.port}"
    assert call(api, "GET", "/api/v1/status")[0] == 200
    api.close()
    assert not api._thread.is_alive()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(
            ("127.0.0.1", api.port), timeout=5):
        pass


def test_a_busy_port_is_a_config_error(core):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            ApiServer(core, port=taken.getsockname()[1])


def test_the_token_file_must_be_private(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_token(str(path))
    path.chmod(0o600)
    assert load_token(str(path)) == TOKEN
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_token(str(path))
    with pytest.raises(ConfigError, match="token file"):
        load_token(str(tmp_path / "absent"))
    assert load_token(None, {"STREAM_NODE_TOKEN": " abc "}) == "abc"
    assert load_token(None, {}) is None


# --- stream-node ctl, a real process ----------------------------------------------------------

def ctl(target: ApiServer | str, *args: str, token_env: str | None = None
        ) -> subprocess.CompletedProcess:
    """`stream-node ctl HOST:PORT ARGS...` as its own process; only `token_env` as a token."""
    env = {k: v for k, v in os.environ.items() if k != "STREAM_NODE_TOKEN"}
    if token_env:
        env["STREAM_NODE_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-m", "stream_node", "ctl",
         target if isinstance(target, str) else f"127.0.0.1:{target.port}", *args],
        capture_output=True, text=True, timeout=30, env=env)


def test_ctl_status_prints_the_state_and_runs_and_json_on_request(server, core):
    core.begin_run("lyso_01", "det1_lyso_01_00001.h5", run_id=1, frames_expected=100)
    core.end_run(0, 100, 0, then="armed")
    core.begin_run("lyso_02", "det1_lyso_02_00002.h5", run_id=2, frames_expected=50)
    core.update_run(20, 1)
    proc = ctl(server, "status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "det1: running"
    assert "run 2  lyso_02  20/50 frames  1 missing  running" in lines[1]
    assert "run 1  lyso_01  100/100 frames  0 missing  exit 0  done" in proc.stdout
    proc = ctl(server, "status", "--json")
    assert json.loads(proc.stdout)["current"]["frames_written"] == 20


def test_ctl_config_sends_strings_and_json_lists_with_the_token_file(server, core, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    proc = ctl(server, "--token-file", str(token), "config", "frames=250", "series=s1",
               'kernels=[{"kernel": "bin2x2"}]', "rate_hz=none")
    assert proc.returncode == 0, proc.stderr
    assert "frames = 250" in proc.stdout and "applies to the next run" in proc.stdout
    assert core.config["frames"] == 250 and core.config["kernels"] == [{"kernel": "bin2x2"}]
    proc = ctl(server, "config", "frames=zero", token_env=TOKEN)
    assert proc.returncode == ExitCode.CONFIG and "frames 'zero'" in proc.stderr
    assert core.config["frames"] == 250


def test_ctl_without_the_token_is_told_how_to_give_it(server, node):
    proc = ctl(server, "start")
    assert proc.returncode == ExitCode.CONFIG
    assert "--token-file" in proc.stderr and node.calls == []


def test_ctl_start_refused_exits_2_with_the_reason(server, core, node):
    core.begin_run("s", "f.h5", run_id=1, frames_expected=None)
    proc = ctl(server, "start", token_env=TOKEN)
    assert proc.returncode == ExitCode.USAGE == 2
    assert proc.stderr.startswith("refused: start: the node is running")
    assert node.calls == []


def test_ctl_start_accepted_calls_the_node(server, core, node):
    proc = ctl(server, "start", token_env=TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "start: accepted; the node is idle"
    assert [c for c, _ in node.calls] == ["start"]


def test_ctl_to_a_node_that_is_not_there_is_one_clear_line_and_exit_4():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = ctl(f"127.0.0.1:{port}", "status")
    assert proc.returncode == ExitCode.PEER_TIMEOUT
    assert "cannot reach http://127.0.0.1" in proc.stderr and "refused" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = ctl("no-port-here", "status")
    assert proc.returncode == ExitCode.CONFIG and "HOST:PORT" in proc.stderr
