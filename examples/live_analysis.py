"""Analyse a run while it is written: subscribe to the collector's `latest` tap.

Starts a local pipeline (source -> 2 workers -> collector -> HDF5) whose collector publishes its
newest frames on a tap, and prints statistics of each frame it receives. The tap never slows the
run: a slow analysis just sees fewer frames (the newest ones), while the file gets every frame.

Run: python examples/live_analysis.py [OUTPUT.h5]
Against a running collector (`stream-node collector ... --tap tcp://0.0.0.0:5560`), only the
loop below is needed: `for header, frame in stream_node.subscribe("tcp://daq:5560"): ...`
"""

from __future__ import annotations

import sys
import tempfile
import threading

import numpy as np

import stream_node


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "live-analysis.h5"
    outcome: dict[str, object] = {}

    with tempfile.TemporaryDirectory(prefix="sn-live-") as tmp:
        tap = f"ipc://{tmp}/tap"

        def pipeline() -> None:
            try:
                outcome["summary"] = stream_node.run_local_pipeline(
                    path, frames=300, shape=(256, 512), rate=100, overwrite=True, tap=tap)
            except BaseException as exc:  # shown after the analysis loop has ended
                outcome["error"] = exc

        run = threading.Thread(target=pipeline)
        run.start()
        analysed = 0
        try:
            # until_end: the loop ends when the collector closes the run.
            for header, frame in stream_node.subscribe(tap, timeout_s=30, until_end=True):
                hot = int(np.count_nonzero(frame > 10))
                print(f"frame {header.frame_id:4d}  mean {frame.mean():6.3f}  "
                      f"photons {int(frame.sum(dtype=np.int64)):7d}  pixels > 10: {hot}")
                analysed += 1
        finally:
            run.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    summary = outcome["summary"]
    print(summary.text())  # type: ignore[attr-defined]
    print(f"analysed {analysed} frames live; the file has all "
          f"{summary.frames_written}, missing {summary.missing}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
