"""A written run as a frame source (`file://PATH`): pipelines tested offline against real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (decodes bitshuffle/LZ4 runs)
import numpy as np

from stream_node.model.contract import frame_nbytes
from stream_node.model.errors import ConfigError
from stream_node.origins.base import GeneratedOrigin, OriginOptions

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
        self.nbytes = frame_nbytes(self.shape, self.dtype)
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
        """The ids the file holds, of the first `limit` ids of the run (all when None): a
        shortened replay is a run of ids first..first+limit-1, gaps included."""
        present = self._present if limit is None else self._present[self._present < limit]
        for index in present:
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


class ReplayOrigin(GeneratedOrigin):
    """`file://PATH` — a written run, frames in id order; ids it lacks stay missing."""

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(options)
        self.replay = FileReplay(address)
        self.shape, self.dtype = self.replay.shape, self.replay.dtype
        self.first_id = self.replay.first_id
        total = self.replay.count
        self.count = min(options.frames, total) if options.frames else total

    def metadata(self) -> dict[str, Any]:
        return {"source": f"{FILE}{self.replay.path}", "replay_of_run_id": self.replay.run_id,
                "detector": {"description": f"replay of {self.replay.path}"}}

    def ids(self) -> Iterator[int]:
        return self.replay.ids(self.count)

    def due_s(self, n: int, frame_id: int) -> float | None:
        if self.options.recorded_rate:
            return self.replay.recorded_offset_s(frame_id)
        return super().due_s(n, frame_id)

    def fill(self, frame_id: int, out: np.ndarray) -> None:
        self.replay.frame(frame_id, out=out)

    def close(self) -> None:
        self.replay.close()
