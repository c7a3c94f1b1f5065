"""Reading a written run back into numpy, with its metadata and its ledger of missing frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filter for compressed runs)
import numpy as np


@dataclass
class Run:
    """One run as written: frames[i] is frame id frame_ids[i]; missing maps id -> reason."""

    frames: np.ndarray
    frame_ids: np.ndarray
    received: np.ndarray
    metadata: dict[str, Any]
    missing: dict[int, str]
    counters: dict[str, Any]

    @property
    def complete(self) -> bool:
        return not self.missing


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.rstrip(b"\0").decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def open_run(path: str | Path) -> h5py.File:
    """Open a run file for reading, also one whose writer is still running or was stopped
    without closing it (a crash, a full disk): SWMR mode reads what its last flush recorded."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise
        return h5py.File(path, "r", swmr=True)


def read_run(path: str | Path, frames: slice | None = None) -> Run:
    """Load a run written by stream-node; `frames` selects a slice of frames for large runs.

    >>> run = read_run("run.h5")                         # doctest: +SKIP
    >>> run.frames.shape, run.missing                    # doctest: +SKIP
    ((1000, 512, 1024), {})
    """
    select = frames if frames is not None else slice(None)
    with open_run(path) as f:
        entry = f["entry"]
        data = entry["data/data"][select]
        records = entry.get("frames")
        if records is not None:
            ids = records["frame_id"][select]
            received = records["received"][select].astype(bool)
        else:  # a run whose collector stopped before finalising: chunks are all there is
            ids = np.arange(entry["data/data"].shape[0], dtype=np.uint64)[select]
            received = np.ones(len(ids), bool)
        missing: dict[int, str] = {}
        if "missing" in entry:
            reasons = [_plain(r) for r in entry["missing/reason"][()]]
            missing = {int(i): r for i, r in zip(entry["missing/frame_id"][()], reasons,
                                                  strict=True)}
        metadata = {k: _plain(v) for k, v in entry.attrs.items()}
        for name in ("start_time", "end_time"):
            if name in entry:
                metadata[name] = _plain(entry[name][()])
        counters: dict[str, Any] = {}
        if "stream_node/counters" in entry:
            values = entry["stream_node/counters"]
            counters = {str(_plain(n)): int(v) for n, v in zip(values.attrs["names"], values[()],
                                                               strict=True)}
            counters["reports"] = json.loads(entry["stream_node/reports"][()].tobytes() or b"{}")
    return Run(data, ids, received, metadata, missing, counters)
