"""Run the local pipeline, then read the file back as a scientist would.

Run: python examples/read_a_run.py [OUTPUT.h5]
"""

from __future__ import annotations

import sys

import stream_node


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "example-run.h5"
    summary = stream_node.run_local_pipeline(path, frames=200, shape=(256, 512), overwrite=True)
    print(summary.text())
    with stream_node.read_run(path) as run:  # lazy: each frame is read when sliced
        print(f"{run.frames.shape} frames, missing {run.missing or 'none'}")
        print(f"mean photons per pixel in frame 10: {run.frames[10].mean():.3f}")
        print(f"run id {run.metadata['run_id_hex']}, "
              f"counters {run.counters['frames_written']} written")


if __name__ == "__main__":
    main()
