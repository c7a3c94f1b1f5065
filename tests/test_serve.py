"""`stream-node serve`: real processes serving run after run, driven through the real HTTP API
and `stream-node ctl`; every file is read back and its ledger checked."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import test_multihost
import test_service_page
from protocol_senders import _sender_fixture
from stream_node import read_run

pytestmark = pytest.mark.timeout(180)

sender = pytest.fixture(_sender_fixture)
hosts = test_multihost.hosts  # network namespaces, one per host
browser = test_service_page.browser  # headless Chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topology(tmp_path: Path, origin: str, frames: int = 20, workers: int = 2) -> Path:
    name = f"sv{os.getpid()}{tmp_path.name[-8:]}".replace("_", "")
    path = tmp_path / "serve.toml"
    path.write_text(f"""
name = "{name}"
[defaults]
peer_timeout = 3
ready_timeout = 20
[nodes.local]
host = "127.0.0.1"
[nodes.local.source]
from = "{origin}"
control = "ipc://{tmp_path}/control"
data = "ring://{name}"
frames = {frames}
shape = [64, 128]
[nodes.local.workers]
count = {workers}
[nodes.local.collector]
input = "ipc://{tmp_path}/frames"
file = "{tmp_path}/data/run.h5"
""")
    return path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


class Served:
    """A `stream-node serve` process and its API; logs go to a file (a pipe would fill)."""

    def __init__(self, topo: Path, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_node", "serve", str(topo), "--node", "local",
             "--api", f"127.0.0.1:{self.port}", *extra],
            stdin=subprocess.DEVNULL, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/api/v1"

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as reply:
            return json.load(reply)

    def until(self, check: Callable[[dict], bool], what: str, timeout_s: float = 60) -> dict:
        """Ask the API until `check(status)` holds (each question waits for its answer)."""
        deadline = time.monotonic() + timeout_s
        last: dict = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited:\n{self.log.read_text()[-3000:]}"
            try:
                last = self.status()
            except OSError:
                last = {}
            if last and check(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"not {what} within {timeout_s} s: {json.dumps(last)[:2000]}\n"
                             f"{self.log.read_text()[-3000:]}")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stream_node", "ctl",
                               f"127.0.0.1:{self.port}", *args], capture_output=True,
                              text=True, timeout=30)

    def stop(self) -> int:
        kids = _children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            for pid in kids + _children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(topo: Path, *extra: str) -> Served:
        served = Served(topo, tmp_path, *extra)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.stop()


def done_runs(status: dict) -> list[dict]:
    return [r for r in status["runs"] if r["state"] in ("done", "failed", "aborted")]


def check_file(path: Path, frames: int) -> int:
    with read_run(path) as run:
        assert list(run.frame_ids) == list(range(frames)), path
        assert run.complete, path
        return int(run.metadata["run_id"])


def test_runs_started_through_the_api_each_get_their_own_complete_file(tmp_path, serve):
    served = serve(topology(tmp_path, "synthetic:", frames=20))
    served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    config = served.ctl("config", "frames=30", "file_template=scan_{run:03d}.h5")
    assert config.returncode == 0, config.stderr
    refused = served.ctl("stop")  # nothing runs: refused with a reason, never queued
    assert refused.returncode != 0 and "refused" in (refused.stdout + refused.stderr)
    ids = set()
    for n in range(1, 4):
        started = served.ctl("start")
        assert started.returncode == 0, started.stderr
        status = served.until(lambda s, n=n: len(done_runs(s)) == n, f"run {n} done")
        record = status["runs"][0]
        assert record["state"] == "done" and record["frames_written"] == 30, record
        ids.add(check_file(tmp_path / "data" / f"scan_{n:03d}.h5", 30))
    assert len(ids) == 3  # a run id of its own each: no frame of one can land in another
    assert served.stop() == 0


def test_each_detector_series_is_a_run_even_when_armed_10_ms_after_the_last(tmp_path, serve,
                                                                              sender):
    endpoint = sender("dectris", "--frames", "12", "--series-count", "5", "--gap-ms", "10",
                      "--stay-s", "30")
    served = serve(topology(tmp_path, f"dectris+{endpoint}"))
    status = served.until(lambda s: len(done_runs(s)) == 5, "5 series written")
    assert [r["series"] for r in reversed(status["runs"])] == ["7", "8", "9", "10", "11"]
    for record in status["runs"]:
        assert record["state"] == "done" and record["missing"] == 0, record
        check_file(tmp_path / "data" / Path(record["file"]).name, 12)
    # Still connected, nothing sent: armed, and the log says when it is safe to arm.
    served.until(lambda s: s["state"] == "armed" and s["safe_to_arm"], "armed")
    assert "safe to arm" in served.log.read_text()
    assert served.stop() == 0


def test_a_dead_worker_is_started_again_and_the_next_run_is_complete(tmp_path, serve):
    served = serve(topology(tmp_path, "synthetic:", frames=20))
    status = served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    worker = next(s for s in status["stages"] if s.get("role") == "worker")
    os.kill(worker["pid"], signal.SIGKILL)
    served.until(lambda s: any(st.get("restarts") for st in s["stages"])
                 and s["detail"].startswith("every stage ready"), "the worker back")
    assert served.ctl("start").returncode == 0
    status = served.until(lambda s: len(done_runs(s)) == 1, "the run done")
    check_file(tmp_path / "data" / Path(status["runs"][0]["file"]).name, 20)
    assert "starting local/local-w" in served.log.read_text()
    assert served.stop() == 0


def test_sigterm_ends_the_current_run_cleanly_and_exits(tmp_path, serve):
    served = serve(topology(tmp_path, "synthetic:", frames=100000))
    served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    assert served.ctl("config", "rate_hz=200").returncode == 0
    assert served.ctl("start").returncode == 0
    served.until(lambda s: s["current"] and s["current"]["frames_written"] >= 20, "writing")
    assert served.stop() == 0
    files = list((tmp_path / "data").glob("*.h5"))
    assert len(files) == 1
    with read_run(files[0]) as run:
        assert run.complete and 20 <= len(run.frame_ids) < 100000
        assert list(run.frame_ids) == list(range(len(run.frame_ids)))


def test_a_series_cut_off_by_the_next_header_ends_and_the_next_one_runs(tmp_path, serve,
                                                                        sender):
    """The detector begins series 8 before ending series 7: run 7 ends with what came (the rest
    recorded missing, saying why), and the header that ended it begins run 8, complete."""
    endpoint = sender("dectris", "--frames", "12", "--series-count", "2", "--gap-ms", "10",
                      "--fault", "interrupted", "--fault-frame", "5")
    served = serve(topology(tmp_path, f"dectris+{endpoint}"))
    status = served.until(lambda s: len(done_runs(s)) == 2, "both series accounted for")
    first, second = reversed(status["runs"])
    assert (first["series"], second["series"]) == ("7", "8")
    assert first["frames_written"] == 5 and first["missing"] == 7, first
    with read_run(tmp_path / "data" / Path(first["file"]).name) as run:
        assert set(run.missing) == set(range(5, 12))
        assert all("began series 8" in why for why in run.missing.values())
    check_file(tmp_path / "data" / Path(second["file"]).name, 12)
    assert served.stop() == 0


def test_a_series_that_waits_out_the_drain_is_refused_loudly_not_mixed(tmp_path, serve,
                                                                        sender):
    endpoint = sender("dectris", "--frames", "12", "--series-count", "3", "--gap-ms", "10")
    # A drain may never keep a series waiting here: each series that arrives during one is
    # refused (recorded, its frames dropped), the next one runs again.
    served = serve(topology(tmp_path, f"dectris+{endpoint}"), "--series-wait", "0.001")
    status = served.until(lambda s: len(done_runs(s)) == 3, "3 series accounted for")
    records = list(reversed(status["runs"]))
    assert [r["series"] for r in records] == ["7", "8", "9"]
    refused = [r for r in records if r["state"] == "aborted"]
    assert refused and all("refused" in r["message"] and r["missing"] == 12 for r in refused)
    for record in records:
        if record["state"] == "done":
            check_file(tmp_path / "data" / Path(record["file"]).name, 12)
    assert records[0]["state"] == "done"  # the first never waits for a drain
    assert "refused: it waited" in served.log.read_text()
    assert served.stop() == 0


def test_reliable_mode_keys_and_a_resumed_collector_inside_serve(tmp_path, serve):
    from stream_node.cli import main

    assert main(["keys", "generate", str(tmp_path / "keys")]) == 0
    topo = topology(tmp_path, "synthetic:", frames=300)
    text = topo.read_text().replace("[defaults]", f'[defaults]\nkeys = "{tmp_path}/keys"')
    text = text.replace("[nodes.local.source]", "[nodes.local.source]\n"
                        "reliable = true\ncollector_restart = 20")
    topo.write_text(text.replace("[nodes.local.collector]", "[nodes.local.collector]\n"
                                 "resume = true\nflush_interval = 0.2"))
    # Both data links over tcp: CURVE guards them, and reliable mode is for a ZeroMQ fan-out
    # (a ring hands a dead worker's frames on by itself).
    text = topo.read_text().replace(f'input = "ipc://{tmp_path}/frames"',
                                    f'input = "tcp://127.0.0.1:{free_port()}"')
    topo.write_text(re.sub(r'data = "ring://\w+"', f'data = "tcp://127.0.0.1:{free_port()}"',
                           text))
    served = serve(topo)
    served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    assert served.ctl("config", "rate_hz=100").returncode == 0
    assert served.ctl("start").returncode == 0
    status = served.until(lambda s: s["current"] and s["current"]["frames_written"] >= 60,
                          "writing")
    collector = next(s for s in status["stages"] if s.get("role") == "collector")
    os.kill(collector["pid"], signal.SIGKILL)  # mid-run: serve starts it again, it resumes
    status = served.until(lambda s: len(done_runs(s)) == 1, "the run done", timeout_s=120)
    record = status["runs"][0]
    assert record["state"] == "done", record
    # As in a one-shot run: what the killed collector had received since its last flush died
    # with it and is recorded missing, saying so; everything else is in the file, once.
    with read_run(tmp_path / "data" / Path(record["file"]).name) as run:
        ids = run.frame_ids[run.received].tolist()
        assert len(ids) == len(set(ids)) == 300 - record["missing"]
        assert sorted(ids + list(run.missing)) == list(range(300))
        assert all("restarted mid-run" in why for why in run.missing.values())
    log = served.log.read_text()
    # every stage has the keys (the in-process source too, or no stage could reach it)
    assert "resumed the run" in log and f"--keys {tmp_path}/keys" in log
    assert served.stop() == 0


def test_the_page_shows_a_served_run_and_its_newest_frame_in_a_real_browser(tmp_path, serve,
                                                                            browser):
    from selenium.webdriver.support.ui import WebDriverWait

    served = serve(topology(tmp_path, "synthetic:", frames=40))
    served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    assert served.ctl("config", "rate_hz=20", "series=lyso_01").returncode == 0
    assert served.ctl("start").returncode == 0
    served.until(lambda s: len(done_runs(s)) == 1, "the run done")
    browser.get(f"http://127.0.0.1:{served.port}/")

    def shown(driver) -> bool:
        text = driver.find_element("tag name", "body").text
        image = driver.execute_script(
            "const i = document.querySelector('img'); return i && !i.hidden && i.complete "
            "? i.naturalWidth : 0")
        return "local_lyso_01_00001.h5" in text and "40" in text and image > 0

    WebDriverWait(browser, 30, poll_frequency=0.2).until(shown)
    browser.save_screenshot(str(tmp_path / "served.png"))
    if os.access("/tmp", os.W_OK):
        browser.save_screenshot("/tmp/served_page.png")
    assert served.stop() == 0


def test_each_host_serves_its_part_across_network_namespaces(tmp_path, hosts):
    det, sto = hosts["detector"], hosts["storage"]
    topo = tmp_path / "hosts.toml"
    topo.write_text(f"""
name = "servedhosts"
[defaults]
ready_timeout = 60
peer_timeout = 5
[nodes.detector]
host = "{det[1]}"
[nodes.detector.source]
control = "tcp://*:5550"
data = "tcp://*:5551"
frames = 50
shape = [128, 128]
[nodes.storage]
host = "{sto[1]}"
[nodes.storage.workers]
count = 2
[nodes.storage.collector]
input = "tcp://*:5552"
file = "{tmp_path}/data/run.h5"
""")
    procs = []
    try:
        for node, (ns, _) in (("storage", sto), ("detector", det)):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "stream_node", "serve",
                 str(topo), "--node", node, "--api", "127.0.0.1:8470"],
                stdin=subprocess.DEVNULL, stdout=(tmp_path / f"{node}.log").open("w"),
                stderr=subprocess.STDOUT))

        def ctl(ns: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                                   "stream_node", "ctl", "127.0.0.1:8470", *args],
                                  capture_output=True, text=True, timeout=30)

        def status(ns: str) -> dict:
            reply = ctl(ns, "status", "--json")
            return json.loads(reply.stdout) if reply.returncode == 0 else {}

        deadline = time.monotonic() + 60
        while not status(det[0]).get("detail", "").startswith("every stage ready"):
            assert time.monotonic() < deadline, (tmp_path / "detector.log").read_text()[-3000:]
            time.sleep(0.1)
        # The storage host's API serves its stages; runs are the detector host's to start.
        refused = ctl(sto[0], "start")
        assert refused.returncode == 2, refused.stderr
        for n in (1, 2):
            assert ctl(det[0], "start").returncode == 0
            while len(done_runs(status(det[0]))) < n:
                assert time.monotonic() < deadline + 60, \
                    (tmp_path / "detector.log").read_text()[-3000:]
                time.sleep(0.1)
        for record in status(det[0])["runs"]:
            assert record["state"] == "done" and record["missing"] == 0, record
            check_file(tmp_path / "data" / Path(record["file"]).name, 50)
        stages = status(sto[0])["stages"]
        assert {s.get("role") for s in stages} == {"worker", "collector"}
        assert all(s.get("serving", {}).get("runs") == 2 for s in stages), stages
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                assert proc.wait(timeout=30) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def test_a_viewer_follows_run_after_run_without_being_restarted(tmp_path, serve):
    topo = topology(tmp_path, "synthetic:", frames=20)
    png = tmp_path / "latest.png"
    text = topo.read_text().replace("[nodes.local.collector]", "[nodes.local.collector]\n"
                                    f'tap = "ipc://{tmp_path}/tap"')
    topo.write_text(text + f'[nodes.local.view]\npng = "{png}"\nevery = 0.2\n')
    served = serve(topo)
    served.until(lambda s: s["detail"].startswith("every stage ready"), "ready")
    assert served.ctl("config", "rate_hz=50").returncode == 0
    for n in (1, 2):
        assert served.ctl("start").returncode == 0
        served.until(lambda s, n=n: len(done_runs(s)) == n, f"run {n} done")
    served.until(lambda s: png.exists(), "the viewer's picture")
    log = served.log.read_text()
    assert "view --follow" in log or "--follow" in log
    assert "starting local/view again" not in log
    assert served.stop() == 0
