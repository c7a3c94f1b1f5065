"""A written run as a frame source (`file://PATH`): pipelines tested offline against real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (decodes bitshuffle/LZ4 runs)
import numpy as np

from stream_node.errors import ConfigError

FILE = "file://"


class FileReplay:
    """The frames a run file holds, decoded, in id order; ids the file records missing are
    skipped, so the new run records them missing too."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self._data = self._file["entry/data/data"]
        except (OSError, KeyError) as exc:
            raise ConfigError(f"cannot replay {self.path}: not a readable run ({exc})") from None
        self.shape = tuple(self._data.shape[1:])
        self.dtype = self._data.dtype
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        frames = self._file.get("entry/frames")
        count = self._data.shape[0]
        self.first_id = int(frames["frame_id"][0]) if frames is not None and count else 0
        received = frames["received"][()] if frames is not None else np.ones(count, np.uint8)
        self._present = np.flatnonzero(received[:count])
        stamps = (frames["timestamp_ns"][()] if frames is not None else np.zeros(count)).astype(
            np.int64)
        start = int(stamps[self._present[0]]) if len(self._present) else 0
        self._offsets = (stamps - start) / 1e9
        self.run_id = int(self._file["entry"].attrs.get("run_id", 0))

    @property
    def count(self) -> int:
        """Frames in the run, present or not (the new run's length)."""
        return int(self._data.shape[0])

    def ids(self, limit: int | None = None) -> Iterator[int]:
        for index in self._present[:limit]:
            yield int(index) + self.first_id

    def recorded_offset_s(self, frame_id: int) -> float:
        """When the frame was taken, in seconds after the first one (for replay at its pace)."""
        return float(self._offsets[frame_id - self.first_id])

    def frame(self, frame_id: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.shape, self.dtype)
        self._data.read_direct(out, np.s_[frame_id - self.first_id])
        return out

    def close(self) -> None:
        self._file.close()
