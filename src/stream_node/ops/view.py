"""`stream-node view ENDPOINT`: the newest frame of a run as an image, with its id and rate.

It subscribes to a collector's tap (`--tap`), so it can never slow the run. With a display it
draws in a matplotlib window; on a headless machine `--png PATH` rewrites one PNG every few
seconds (atomically: a reader never sees half a file). It follows one run: the collector's END
ends it (a window stays on the last frame until closed), so a topology's viewer ends with the
run. matplotlib is the optional extra `view`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from stream_node.model.errors import ConfigError
from stream_node.model.frame import FrameHeader
from stream_node.ops.tap import subscribe

# matplotlib backends that draw into files only: no window would ever show.
NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


class StreamRate:
    """The run's frame rate from the ids and detector timestamps of the frames seen: the tap
    sends only some frames, so counting arrivals would measure the tap, not the run."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.seen: deque[tuple[int, int]] = deque()

    def add(self, header: FrameHeader) -> float:
        self.seen.append((header.timestamp_ns, header.frame_id))
        while len(self.seen) > 2 and self.seen[-1][0] - self.seen[1][0] >= self.window_ns:
            self.seen.popleft()
        (t0, id0), (t1, id1) = self.seen[0], self.seen[-1]
        return (id1 - id0) / ((t1 - t0) / 1e9) if t1 > t0 else 0.0


def _pyplot(headless: bool) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("stream-node view draws with matplotlib, which is not installed: "
                          "pip install 'stream-node[view]' (or pip install matplotlib)") from None
    if headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not headless and matplotlib.get_backend().lower() in NON_INTERACTIVE:
        raise ConfigError(f"no window can open here (matplotlib backend "
                          f"{matplotlib.get_backend()!r}, no display?): use --png PATH")
    return plt


def as_image(frame: np.ndarray) -> np.ndarray:
    """A 2-D picture of any frame: module stacks are shown one above the other."""
    if frame.ndim == 1:
        return frame.reshape(1, -1)
    return frame.reshape(-1, frame.shape[-1])


def color_limits(image: np.ndarray) -> tuple[float, float]:
    """Colour limits that a few hot pixels cannot wash out."""
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.5])
    return float(low), float(max(high, low + 1e-9))


def view(endpoint: str, png: Path | None = None, every_s: float = 2.0, count: int | None = None,
         timeout_s: float | None = None, follow: bool = False) -> int:
    """Show frames until the run ends (with `follow`, run after run, as a served node's
    viewer does), the window closes or `count` images were drawn; returns how many."""
    plt = _pyplot(headless=png is not None)
    fig, ax = plt.subplots(figsize=(8, 5))
    picture = None
    rate = StreamRate()
    drawn = 0
    next_draw = 0.0
    if png is None:
        plt.ion()
        plt.show()
    try:
        for header, frame in subscribe(endpoint, timeout_s=timeout_s, until_end=not follow):
            frames_per_s = rate.add(header)
            now = time.monotonic()
            if png is not None and now < next_draw:
                continue
            image = as_image(frame)
            if picture is None or picture.get_array().shape != image.shape:
                ax.clear()
                picture = ax.imshow(image, cmap="viridis", interpolation="nearest")
                if drawn == 0:
                    fig.colorbar(picture, ax=ax)
            else:
                picture.set_data(image)
            picture.set_clim(*color_limits(image))
            ax.set_title(f"run {header.run_id:#x}   frame {header.frame_id}   "
                         f"{frames_per_s:,.0f} frames/s")
            drawn += 1
            if png is not None:
                partial = png.with_name(f".{png.name}.part")
                fig.savefig(partial, format="png", dpi=100)
                os.replace(partial, png)
                next_draw = now + every_s
            else:
                plt.pause(0.001)  # lets the window draw and handle its events
                if not plt.fignum_exists(fig.number):
                    break
            if count is not None and drawn >= count:
                break
        else:  # the run ended
            if png is None and drawn and plt.fignum_exists(fig.number):
                plt.ioff()
                plt.show()  # until the window is closed
    finally:
        plt.close(fig)
    return drawn
