"""The HDF5 file of one run: frames as direct chunks at their index, per-frame records, the ledger.

Layout (NeXus-style, readable by any HDF5 tool; no stream-node needed to read it):

    /entry                      NXentry; run metadata as attributes
    /entry/data/data            frames x ny x nx, one frame per chunk, 0 where a frame is missing
    /entry/frames/{frame_id, timestamp_ns, arrival_ns, worker, received}
    /entry/missing/{frame_id, reason}   every expected id that never arrived, and why
    /entry/stream_node          counters (attributes) and the nodes' final reports
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stream_node import __version__
from stream_node.errors import OutputExistsError, StorageError


class RunWriter:
    """Writes frames that arrive in any order exactly once each, at index frame_id - first_id."""

    def __init__(
        self,
        path: str | Path,
        frame_shape: tuple[int, ...],
        dtype: np.dtype,
        expected_frames: int,
        first_frame_id: int = 0,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.first_frame_id = first_frame_id
        self.frames_written = 0
        self.bytes_written = 0
        self.duplicates = 0
        self.last_index = -1
        if self.path.exists() and not overwrite:
            raise OutputExistsError(
                f"output file {self.path} exists: pass --overwrite to replace it, or choose "
                "another file"
            )
        try:
            # 'x' fails if another process creates the file between the check and here.
            self._file = h5py.File(self.path, "w" if overwrite else "x", libver="v110")
        except FileExistsError as exc:
            raise OutputExistsError(f"output file {self.path} exists: {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot create output file {self.path}: {exc}") from None
        size = max(expected_frames, 0)
        self._received = np.zeros(size, bool)
        self._timestamp = np.zeros(size, np.uint64)
        self._arrival = np.zeros(size, np.uint64)
        self._worker = np.full(size, -1, np.int32)
        entry = self._file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["software"] = "stream-node"
        entry.attrs["software_version"] = __version__
        entry.attrs["file_created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, value in (metadata or {}).items():
            entry.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        self._dset = data.create_dataset(
            "data",
            shape=(size, *self.frame_shape),
            maxshape=(None, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
            fillvalue=0,
        )
        self._zeros = (0,) * len(self.frame_shape)

    @property
    def capacity(self) -> int:
        return len(self._received)

    def _grow(self, index: int) -> None:
        """Runs whose length is unknown grow the file geometrically (rare, never per frame)."""
        size = max(index + 1, 2 * self.capacity, 16)
        self._dset.resize(size, axis=0)
        for name in ("_received", "_timestamp", "_arrival", "_worker"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype) if name != "_worker" else np.full(size, -1, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def has(self, index: int) -> bool:
        return index < self.capacity and bool(self._received[index])

    def write(self, index: int, payload: Any, timestamp_ns: int, worker: int) -> bool:
        """Write one frame's bytes as its chunk; False (and counted) if that index is written."""
        if index >= self.capacity:
            self._grow(index)
        if self._received[index]:
            self.duplicates += 1
            return False
        try:
            self._dset.id.write_direct_chunk((index, *self._zeros), payload)
        except OSError as exc:
            raise StorageError(
                f"writing frame {index + self.first_frame_id} to {self.path} failed: {exc}; "
                f"{self.frames_written} frames written before it stay readable"
            ) from None
        self._received[index] = True
        self._timestamp[index] = timestamp_ns
        self._arrival[index] = time.time_ns()
        self._worker[index] = worker
        self.frames_written += 1
        self.bytes_written += memoryview(payload).nbytes
        self.last_index = max(self.last_index, index)
        return True

    def missing_indexes(self, count: int) -> np.ndarray:
        """Indexes below `count` that were never written."""
        if count > self.capacity:
            self._grow(count - 1)
        return np.flatnonzero(~self._received[:count])

    def finalize(self, count: int, missing_reasons: dict[int, str], counters: dict[str, Any],
                 reports: dict[str, Any] | None = None) -> None:
        """Trim to `count` frames, write the per-frame records, the ledger and the counters."""
        try:
            if count != self.capacity:
                self._dset.resize(count, axis=0)
            entry = self._file["entry"]
            frames = entry.create_group("frames")
            frames.attrs["NX_class"] = "NXcollection"
            frames["frame_id"] = np.arange(count, dtype=np.uint64) + np.uint64(self.first_frame_id)
            frames["timestamp_ns"] = self._timestamp[:count]
            frames["arrival_ns"] = self._arrival[:count]
            frames["worker"] = self._worker[:count]
            frames["received"] = self._received[:count].astype(np.uint8)
            missing = entry.create_group("missing")
            missing.attrs["NX_class"] = "NXcollection"
            ids = np.array(sorted(missing_reasons), dtype=np.uint64)
            missing["frame_id"] = ids + np.uint64(self.first_frame_id)
            missing.create_dataset(
                "reason", data=[missing_reasons[int(i)] for i in ids], dtype=h5py.string_dtype()
            )
            node = entry.create_group("stream_node")
            node.attrs["NX_class"] = "NXcollection"
            for key, value in counters.items():
                node.attrs[key] = value
            node.attrs["reports"] = json.dumps(reports or {})
            entry.attrs["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self._file.flush()
        except OSError as exc:
            raise StorageError(f"finalising {self.path} failed: {exc}") from None

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
