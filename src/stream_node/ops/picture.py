"""The newest frame of a collector's tap as a PNG, for a served node's status page.

A thread keeps only the newest frame the tap published (the tap never slows the run, and this
never slows the tap: it skips to the newest); the picture is drawn when somebody asks, at most
once per frame, shrunk to `MAX_SIDE` pixels so the page stays light. Drawing needs matplotlib
(`pip install 'stream-node[view]'`); without it there is no picture and the page says so.
"""

from __future__ import annotations

import io
import logging
import threading

import numpy as np

from stream_node.model.errors import PeerTimeout
from stream_node.ops.tap import subscribe
from stream_node.ops.view import as_image, color_limits

log = logging.getLogger(__name__)

MAX_SIDE = 512  # pixels of the picture's longer side at most


def png_bytes(frame: np.ndarray) -> bytes | None:
    """The frame drawn as a PNG (viridis, limits a few hot pixels cannot wash out), or None
    without matplotlib."""
    try:
        from matplotlib.image import imsave
    except ImportError:
        return None
    image = as_image(frame)
    step = max(1, -(-max(image.shape) // MAX_SIDE))
    image = image[::step, ::step].astype(np.float32)
    low, high = color_limits(image)
    out = io.BytesIO()
    imsave(out, image, vmin=low, vmax=high, cmap="viridis", format="png")
    return out.getvalue()


class NewestFrame:
    """Subscribes to `endpoint` until `close()`; `png()` is the newest frame's picture."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._frame: np.ndarray | None = None
        self._drawn: tuple[int, bytes | None] = (-1, None)
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="newest-frame", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for _header, frame in subscribe(self.endpoint, timeout_s=0.5):
                    with self._lock:
                        self._frame = np.array(frame)  # the message's buffer is reused
                        self._count += 1
                    if self._stop.is_set():
                        return
            except PeerTimeout:
                continue
            except Exception as exc:  # a picture is never worth a dead node
                log.warning("newest frame: %s", exc)
                self._stop.wait(1.0)

    def png(self) -> bytes | None:
        with self._lock:
            frame, count = self._frame, self._count
        if frame is None:
            return None
        if self._drawn[0] != count:
            self._drawn = (count, png_bytes(frame))
        return self._drawn[1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
