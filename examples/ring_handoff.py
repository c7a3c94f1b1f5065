"""Hand frames from a producer process to two worker processes through a shared-memory ring.

Run: python examples/ring_handoff.py
Each worker reads its frames in place (no copy) and reports their ids; together they saw every
frame exactly once.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

import stream_node

NAME = f"example-{os.getpid()}"


def worker(name: str, results: mp.Queue) -> None:
    consumer = stream_node.Ring.attach(name).consumer("workers")
    seen = [(f.frame_id, float(f.data.mean())) for f in consumer]
    results.put(seen)


def main() -> None:
    ring = stream_node.Ring.create(NAME, slots=8, slot_bytes=512 * 1024 * 2)
    detector = stream_node.SyntheticDetector((512, 1024), "uint16")
    results: mp.Queue = mp.Queue()
    workers = [mp.Process(target=worker, args=(NAME, results)) for _ in range(2)]
    for p in workers:
        p.start()
    try:
        for frame_id in range(100):
            slot = ring.claim(timeout=5.0)
            frame = detector.frame(frame_id, out=ring.payload(slot, (512, 1024), np.uint16))
            ring.publish(slot, stream_node.frame_header(frame, run_id=1, frame_id=frame_id))
        ring.end()
        seen = [results.get(timeout=30) for _ in workers]
    finally:
        for p in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
        ring.close()
    ids = sorted(i for part in seen for i, _ in part)
    print(f"workers took {[len(part) for part in seen]} frames; "
          f"all 100 exactly once: {ids == list(range(100))}")
    print(ring.stats())


if __name__ == "__main__":
    main()
