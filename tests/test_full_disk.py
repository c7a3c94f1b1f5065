"""A full disk, or a restart that could not resume, leaves no frame unaccounted (issue #18 B).

A real small tmpfs fills mid-run under a real collector. Afterwards every frame id of the run is
either readable from the file, byte-equal, or in a ledger with a reason (the file's, or the
sidecar `<file>.missing.json` when the file could not take it), never in neither; `read_run`
says the run is not complete and `stream-node inspect` exits 3. Before, the frames after the
last flush and all that never came were in no ledger, `complete` was True, inspect said
"missing 0" and exited 0, and the error claimed more frames readable than the file had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import finish, free_tcp_endpoint, wait_run_started, wait_written
from stream_node import ExitCode, SyntheticDetector, read_run

SHAPE = (128, 256)  # 64 KiB frames: a 16 MiB disk takes about 230 of them
FRAMES = 600
TIMING = ("--peer-timeout", "2", "--ready-timeout", "20")


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs of its own, unmounted at teardown (request it before `node`, so the
    processes that hold files on it are ended first)."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): a container "
                    "without CAP_SYS_ADMIN")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def ranges(ids) -> str:
    """Ids as the collector's message writes them: "0-200, 203, 205-210"."""
    out, ids = [], sorted(ids)
    start = prev = None
    for i in [*ids, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(out)


def assert_accounted(path, frames):
    """Every id 0..frames-1 is readable byte-equal or in a ledger with a reason, none in
    neither and none in both; returns the run and the readable ids."""
    run = read_run(path)
    det = SyntheticDetector(SHAPE, "uint16")
    readable = set(np.flatnonzero(run.received).tolist())
    missing = set(run.missing)
    assert not readable & missing
    assert readable | missing == set(range(frames)), (
        f"{len(set(range(frames)) - readable - missing)} frames in no ledger")
    assert all(run.missing[i] for i in missing)
    for i in sorted(readable):
        assert run.frames[i].tobytes() == det.frame(i).tobytes(), f"frame {i} differs"
    assert not run.complete
    return run, readable


def inspect(path):
    return subprocess.run([sys.executable, "-m", "stream_node", "inspect", str(path)],
                          capture_output=True, text=True, timeout=60)


def roles(node, path, collector_flags=(), source_flags=(), rate=400):
    control, fanout, fanin = (free_tcp_endpoint() for _ in range(3))

    def collector(*extra):
        return node("collector", "--control", control, "--input", fanin, "--file", str(path),
                    "--flush-interval", "0.1", "--drain-timeout", "3", *TIMING,
                    *collector_flags, *extra)

    first = collector()
    node("worker", "--control", control, "--input", fanout, "--output", fanin, *TIMING)
    source = node("source", "--control", control, "--data", fanout, "--frames", str(FRAMES),
                  "--shape", "x".join(map(str, SHAPE)), "--rate", str(rate), *TIMING,
                  *source_flags)
    return source, first, collector


@pytest.mark.timeout(120)
def test_a_disk_that_fills_mid_run_leaves_every_frame_readable_or_in_a_ledger(small_disk, node):
    path = small_disk / "run.h5"
    source, collector, _ = roles(node, path)
    code, _, err = finish(source)
    assert code == ExitCode.IO, err
    ccode, _, cerr = finish(collector)
    assert ccode == ExitCode.IO, cerr

    run, readable = assert_accounted(path, FRAMES)
    assert 5 < len(readable) < FRAMES
    # The message says exactly which frames stay readable: those of the last flush.
    message = cerr.strip().splitlines()[-1]
    assert f"the {len(readable)} frames of its last flush stay readable (ids " \
           f"{ranges(readable)})" in message, message
    assert str(path) in err and f"{len(readable)} frames" in err, err
    assert "No space left on device" in message
    ledger = small_disk / "run.h5.missing.json"
    assert str(ledger) in message
    assert json.loads(ledger.read_text())["frames"] == FRAMES
    assert not run.metadata.get("end_time")

    out = inspect(path)
    assert out.returncode == ExitCode.FRAMES_MISSING, out.stdout + out.stderr
    assert f"missing          {FRAMES - len(readable)}" in out.stdout, out.stdout
    assert str(ledger) in out.stdout, out.stdout


FILL = textwrap.dedent("""
    import os, sys
    path, leave = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:  # the disk is full
        pass
    os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    os.close(fd)
""")


@pytest.mark.timeout(120)
def test_a_restart_that_cannot_resume_on_a_full_disk_leaves_every_frame_accounted(small_disk,
                                                                                  node):
    """The collector dies mid-run (SIGKILL: no ledger), the disk fills meanwhile, and the
    restarted collector cannot write a frame: the frames the file lacks end in a ledger."""
    path = small_disk / "run.h5"
    status = free_tcp_endpoint()
    source, first, collector = roles(node, path, ("--status", status),
                                     ("--collector-restart", "30"), rate=150)
    wait_run_started(source)
    wait_written(status, 40)
    first.kill()
    first.communicate()
    subprocess.run([sys.executable, "-c", FILL, str(small_disk / "filler"), str(32 << 10)],
                   check=True, timeout=60)

    second = collector("--resume")
    code, _, err = finish(source)
    assert code == ExitCode.IO, err
    ccode, _, cerr = finish(second)
    assert ccode == ExitCode.IO, cerr
    _, readable = assert_accounted(path, FRAMES)
    assert readable, "the frames flushed before the kill stay readable"
    assert f"the {len(readable)} frames of its last flush stay readable (ids " \
           f"{ranges(readable)})" in cerr, cerr

    out = inspect(path)
    assert out.returncode == ExitCode.FRAMES_MISSING, out.stdout + out.stderr
    assert f"missing          {FRAMES - len(readable)}" in out.stdout, out.stdout


@pytest.mark.timeout(60)
def test_a_file_its_collector_never_finalised_is_not_complete(tmp_path):
    """No end_time: whatever the ledgers say, the run did not finish, and inspect says so."""
    path = tmp_path / "run.h5"
    script = textwrap.dedent(f"""
        import os
        from stream_node.storage.writer import RunWriter
        w = RunWriter({str(path)!r}, (4, 4), "uint16", 3, metadata={{"run_id": 5}})
        w.write(0, bytes(32), 0, 0)
        w.flush()
        os._exit(0)  # killed: the file is as its last flush left it
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    run = read_run(path)
    assert run.missing == {} and not run.complete
    out = inspect(path)
    assert out.returncode == ExitCode.FRAMES_MISSING, out.stdout + out.stderr
    assert "never finalised" in out.stdout, out.stdout


WRITES_THEN_FAILS = textwrap.dedent("""
    import os, sys
    from stream_node.storage.writer import RunWriter
    path, resumed = sys.argv[1], sys.argv[2] == "abandon"
    w = RunWriter(path, (4, 4), "uint16", 6, first_frame_id=100, metadata={"run_id": 9})
    for i in (0, 1, 3):
        w.write(i, bytes([i]) * 32, 0, 0)
    w.flush()
    w.write(2, bytes([2]) * 32, 0, 0)  # not flushed: lost with the file
    if resumed:
        print(w.abandon(6, {5: "detector: never sent"}), flush=True)
    os._exit(0)  # as the collector does: no exit-time close of the abandoned file
""")


@pytest.mark.timeout(60)
def test_an_abandoned_file_is_read_with_its_sidecar_ledger(tmp_path):
    """No root needed: the writer's own accounting, merged by read_run."""
    path = tmp_path / "run.h5"
    done = subprocess.run([sys.executable, "-c", WRITES_THEN_FAILS, str(path), "abandon"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == (
        f"the 3 frames of its last flush stay readable (ids 100-101, 103); the other 3 of the "
        f"run's 6 are recorded missing in {path}.missing.json")
    with read_run(path) as run:
        assert run.received.tolist() == [True, True, False, True, False, False]
        assert sorted(run.missing) == [102, 104, 105]
        assert run.missing[102].startswith("written after the last flush of run.h5")
        assert run.missing[104].startswith("not written: the collector stopped")
        assert run.missing[105] == "detector: never sent"
        assert run.ledger == tmp_path / "run.h5.missing.json" and not run.complete


@pytest.mark.timeout(60)
def test_a_ledger_that_cannot_be_written_is_printed_to_stderr(tmp_path):
    path = tmp_path / "run.h5"
    (tmp_path / "run.h5.missing.json.tmp").mkdir()  # in the way: the ledger cannot be written
    done = subprocess.run([sys.executable, "-c", WRITES_THEN_FAILS, str(path), "abandon"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "it was printed to stderr" in done.stdout
    line = next(x for x in done.stderr.splitlines() if "cannot write the ledger" in x)
    doc = json.loads(line.split("here it is instead: ", 1)[1])
    assert [r[:2] for r in doc["missing"]] == [[102, 102], [104, 104], [105, 105]]
    assert doc["readable"] == [[100, 101], [103, 103]]


@pytest.mark.timeout(60)
def test_a_restart_that_cannot_resume_records_what_the_file_lacks(tmp_path, monkeypatch):
    """A collector died (no ledger in the file) and its successor cannot reopen the file:
    the frames the file lacks go to the sidecar, and the error says so."""
    from stream_node.model.errors import ConfigError
    from stream_node.storage import writer

    path = tmp_path / "run.h5"
    subprocess.run([sys.executable, "-c", WRITES_THEN_FAILS, str(path), "die"], check=True,
                   timeout=60)
    monkeypatch.setattr(writer.shutil, "which", lambda name: None)  # no h5clear here
    with pytest.raises(ConfigError, match=r"resuming needs h5clear.*the 3 frames of its last "
                                          r"flush stay readable \(ids 100-101, 103\); the other 3"):
        writer.RunWriter(path, (4, 4), "uint16", 6, first_frame_id=100,
                         metadata={"run_id": 9}, resume=True)
    with read_run(path) as run:
        assert sorted(run.missing) == [102, 104, 105] and not run.complete
        assert all("could not resume the file" in r for r in run.missing.values())
    # Another run's collector gets the same refusal, and writes no ledger for a run not its own.
    (tmp_path / "run.h5.missing.json").unlink()
    with pytest.raises(ConfigError, match="resuming needs h5clear"):
        writer.RunWriter(path, (4, 4), "uint16", 6, metadata={"run_id": 10}, resume=True)
    assert not (tmp_path / "run.h5.missing.json").exists()


@pytest.mark.timeout(60)
def test_a_new_run_in_the_file_drops_the_old_runs_sidecar_ledger(tmp_path):
    from stream_node.storage.writer import RunWriter

    path = tmp_path / "run.h5"
    subprocess.run([sys.executable, "-c", WRITES_THEN_FAILS, str(path), "abandon"], check=True,
                   capture_output=True, timeout=60)
    w = RunWriter(path, (4, 4), "uint16", 1, metadata={"run_id": 11}, overwrite=True)
    w.write(0, bytes(32), 0, 0)
    w.finalize(1, {}, {})
    w.close()
    assert not (tmp_path / "run.h5.missing.json").exists()
    with read_run(path) as run:
        assert run.complete
