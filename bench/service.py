"""Dead time between series, one-shot `stream-node run` per series against `stream-node serve`,
and each serving stage's memory over many runs.

Dead time: a DECTRIS-protocol sender (tests/protocol_senders.py) sends series after series, each
10 ms after the last one's end message left it (a detector armed again at once). The source logs
when a series' last frame has been handed on (END sent) and when every stage is READY for the
next series; dead time is the second minus the first, by the same log lines in both modes: the
last run's drain, the detector's 10 ms, and the next run's start. One-shot starts a
`stream-node run` per series (processes, sockets and kernels made again each time): a series the
detector sends before the next run is up goes to the run that is ending and is lost, which the
"files complete" column shows. `serve` keeps them all. Every file is read back.

Memory: `serve` with a synthetic source, N runs started through the API one after another; the
resident memory (VmRSS) of the serving process and of each stage after the first run and after
the last.

    python bench/service.py            # quick: 20 series, 50 runs
    python bench/service.py --full     # 20 series, 500 runs
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import bench_parser
from _format import md_table

ROOT = Path(__file__).resolve().parent.parent
SENDER = ROOT / "tests" / "protocol_senders.py"
STAMP = r"^(?:\[\S+\] )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
READY = re.compile(STAMP + r".*workers and the collector ready")
END = re.compile(STAMP + r".*source: END sent")
FRAMES = 20


def topology(tmp: Path, origin: str, tag: str) -> Path:
    path = tmp / f"{tag}.toml"
    path.write_text(f"""
name = "bench{tag}{os.getpid()}"
[defaults]
peer_timeout = 5
ready_timeout = 60
[nodes.local]
host = "127.0.0.1"
[nodes.local.source]
from = "{origin}"
control = "ipc://{tmp}/{tag}-control"
data = "ring://bench{tag}{os.getpid()}"
frames = {FRAMES}
shape = [256, 256]
[nodes.local.workers]
count = 2
[nodes.local.collector]
input = "ipc://{tmp}/{tag}-frames"
file = "{tmp}/{tag}/run.h5"
""")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(
        tzinfo=dt.timezone.utc if time.localtime().tm_gmtoff == 0 else None).timestamp()


def start_sender(series: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SENDER), "dectris", "--frames", str(FRAMES),
                             "--shape", "256x256", "--series-count", str(series),
                             "--gap-ms", "10"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, line.split()[1]


def times(text: str, pattern: re.Pattern) -> list[float]:
    return [log_time(m.group(1)) for line in text.splitlines() if (m := pattern.match(line))]


def dead_times(text: str) -> list[float]:
    """ms from series k's end reaching the source (its END) to every stage READY for k+1."""
    ends, readies = times(text, END), times(text, READY)
    return [(readies[k + 1] - ends[k]) * 1000 for k in range(min(len(ends), len(readies)) - 1)]


def one_shot(tmp: Path, series: int) -> tuple[list[float], int]:
    sender, endpoint = start_sender(series)
    topo = topology(tmp, f"dectris+{endpoint}?timeout=3", "oneshot")
    logs = []
    for k in range(series):
        run = subprocess.run([sys.executable, "-m", "stream_node", "run", str(topo), "--node",
                              "local", "--set", "collector.file=" + str(tmp / "oneshot" /
                                                                       f"s{k}.h5")],
                             capture_output=True, text=True, timeout=120)
        logs.append(run.stderr)
        if sender.poll() is not None and READY.search(run.stderr) is None:
            break  # the sender is done and this run got no series: the rest went nowhere
    sender.kill()
    sender.communicate()
    return dead_times("\n".join(logs)), count_ok(tmp / "oneshot")


def served(tmp: Path, series: int) -> tuple[list[float], int]:
    sender, endpoint = start_sender(series)
    topo = topology(tmp, f"dectris+{endpoint}", "serve")
    log = tmp / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "stream_node", "serve", str(topo), "--node",
                             "local", "--api", "off"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    sender.communicate(timeout=300)
    deadline = time.monotonic() + 120
    while count_ok(tmp / "serve") < series and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return dead_times(log.read_text()), count_ok(tmp / "serve")


def count_ok(directory: Path) -> int:
    """Files in `directory` that hold every frame of their series, nothing missing."""
    from stream_node import read_run

    ok = 0
    for path in directory.glob("*.h5"):
        try:
            with read_run(path) as run:
                ok += run.complete and len(run.frame_ids) == FRAMES
        except Exception:
            pass
    return ok


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(tmp: Path, runs: int) -> tuple[list[int], list[tuple[str, list[int]]]]:
    """RSS (KiB) of every process of a serving node after runs 1, runs/4, runs/2, 3runs/4 and
    the last."""
    port = free_port()
    topo = topology(tmp, "synthetic:", "memory")
    proc = subprocess.Popen([sys.executable, "-m", "stream_node", "serve", str(topo), "--node",
                             "local", "--api", f"127.0.0.1:{port}"],
                            stdout=(tmp / "memory.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/v1"

    def status() -> dict:
        with urllib.request.urlopen(f"{url}/status", timeout=10) as reply:
            return json.load(reply)

    def start() -> int:
        req = urllib.request.Request(f"{url}/command/start", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:  # the API is not up yet
            return 0

    points = sorted({1, max(runs // 4, 1), max(runs // 2, 1), max(3 * runs // 4, 1), runs})
    samples: dict[str, list[int]] = {}
    try:
        for n in range(1, runs + 1):
            while start() != 200:  # refused (409) until the last run has ended
                time.sleep(0.01)
            while True:
                s = status()
                if s["counters"]["runs"] >= n and s["current"] is None:
                    break
                time.sleep(0.01)
            if n in points:
                pids = {"serve (source + API)": proc.pid}
                pids.update({st["label"]: st["pid"] for st in s["stages"] if st.get("pid")
                             and st.get("role") != "source"})
                for label, pid in pids.items():
                    samples.setdefault(label, []).append(rss_kib(pid))
        print(f"memory: {runs} runs, {s['counters']['failed_runs']} failed, "
              f"{s['counters']['frames_written']} frames written", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return points, list(samples.items())


def main() -> int:
    ap = bench_parser(__doc__, "20 series, 50 runs (default)", "20 series, 500 runs")
    ap.add_argument("--series", type=int, default=0, help="series per mode (default 20)")
    ap.add_argument("--runs", type=int, default=0, help="runs for the memory table")
    args = ap.parse_args()
    series, runs = (20, 500) if args.full else (args.series or 20, args.runs or 50)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as name:
        tmp = Path(name)
        rows = []
        medians = []
        for label, fn in (("one-shot `run` per series", one_shot), ("`serve`", served)):
            dead, ok = fn(tmp, series)
            medians.append(statistics.median(dead) if dead else float("nan"))
            rows.append((label, series, ok, len(dead), f"{medians[-1]:.0f}",
                         f"{min(dead):.0f} to {max(dead):.0f}" if dead else "—"))
        print(md_table(("mode", "series sent", "files complete", "gaps measured",
                        "dead time ms (median)", "range ms"), "lrrrrr", rows))
        print(f"\nserve: {medians[0] / medians[1]:.0f}x less dead time than one-shot (both "
              "include the detector's 10 ms before it arms again)\n")
        points, mem = memory(tmp, runs)
        print(md_table(("process", *(f"RSS after run {n} (MiB)" for n in points),
                        "first to last"), "l" + "r" * (len(points) + 1),
                       [(label, *(f"{v / 1024:.1f}" for v in values),
                         f"{(values[-1] - values[0]) / 1024:+.1f} MiB")
                        for label, values in mem]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
