"""Issue #18 item 7.7: the source's summary keeps a worker's name apart from its frame count.

Names were padded to 4 characters with nothing after them, so a topology's worker names
(`local-w01284`) ran into the count: `worker local-w01284 frames`, which reads as a name with no
count (or a count of 1284). The names are now padded to the longest one plus a space.
"""

from __future__ import annotations

from stream_node.stages.source import RunSummary


def summary(workers: dict) -> RunSummary:
    return RunSummary(run_id=0x5, path="run.h5", frames_sent=10, frames_written=10, missing=0,
                      duplicates=0, bytes_written=0, bytes_stored=0, seconds=1.0, dropped={},
                      workers=workers)


def test_a_long_worker_name_is_followed_by_a_space_and_its_count():
    text = summary({"local-w0": {"frames": 1284, "stalls": 0, "dropped": {}},
                    "local-w12": {"frames": 7, "stalls": 2, "dropped": {}}}).text()
    lines = [line for line in text.splitlines() if line.startswith("worker ")]
    assert lines == ["worker local-w0  1284 frames, 0 stalls, dropped 0",
                     "worker local-w12 7 frames, 2 stalls, dropped 0"], lines


def test_short_names_keep_their_columns():
    text = summary({"w0": {"frames": 8, "stalls": 1, "dropped": {}},
                    "w1": {"frames": 2, "stalls": 0, "dropped": {}}}).text()
    assert "worker w0  8 frames, 1 stalls" in text and "worker w1  2 frames" in text
