"""Reading a written run back: frames as a lazy h5py dataset (`read_run`) or loaded into numpy
(`load_run`), with the metadata and the ledger of missing frames.

A run of thousands of 8 MiB frames does not fit in memory, so the documented reader is lazy,
like h5py itself: `run.frames[i]` reads frame i when asked. The file stays open until the
`Run` is closed (`with read_run(...) as run:`) or dropped; while it is, HDF5's file lock keeps
a writer from opening the same file (a collector resuming it), as with any HDF5 reader.

A collector whose file failed (a full disk, an I/O error, a restart that could not resume)
cannot put the ledger of missing frames into it, so it writes `<file>.missing.json` next to it:
the readers here merge that sidecar ledger, so no frame of such a run goes unaccounted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filter for compressed runs)
import numpy as np

from stream_node.storage.ledger import read_ledger


@dataclass
class Run:
    """One run as written: frames[i] is frame id frame_ids[i]; missing maps id -> reason.

    From `read_run`, `frames` is the file's h5py dataset (slice it to read; `close()` or a
    `with` block releases the file); from `load_run`, a numpy array.
    """

    frames: h5py.Dataset | np.ndarray
    frame_ids: np.ndarray
    received: np.ndarray
    metadata: dict[str, Any]
    missing: dict[int, str]
    counters: dict[str, Any]
    file: h5py.File | None = field(default=None, repr=False)
    finished: bool = True  # the collector finalised the file (it has an end_time)
    ledger: Path | None = None  # the sidecar ledger merged into `missing`, if there was one

    @property
    def complete(self) -> bool:
        """Every frame is in the file: finalised, and no ledger lists one missing. A file that
        was never finalised (a crash, a full disk) is not complete even with empty ledgers:
        what never reached it is recorded nowhere else."""
        return self.finished and not self.missing

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.rstrip(b"\0").decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def merged_missing(f: h5py.File) -> tuple[dict[int, str], dict[str, Any] | None]:
    """The run's missing frames: the file's ledger plus its sidecar ledger (one of another run
    is ignored). The sidecar lists what the collector could not count durable; a frame the file
    flags received is in it all the same (its chunk reached the disk before its flag did), so
    there the file wins: every index is received or missing, never both."""
    entry = f["entry"]
    missing: dict[int, str] = {}
    if "missing" in entry:
        reasons = [_plain(r) for r in entry["missing/reason"][()]]
        missing = {int(i): r for i, r in zip(entry["missing/frame_id"][()], reasons,
                                              strict=True)}
    side = read_ledger(f.filename)
    if side is not None and side.get("run_id") not in (None, _plain(entry.attrs.get("run_id"))):
        side = None
    if side is not None:
        flagged: set[int] = set()
        if "frames" in entry:
            ids = entry["frames/frame_id"][()]
            listed = np.fromiter(side["missing"], np.uint64, len(side["missing"]))
            flagged = set(np.intersect1d(
                ids[entry["frames/received"][()].astype(bool)], listed).tolist())
        for i, reason in side["missing"].items():
            if i not in flagged:
                missing.setdefault(i, reason)
    return dict(sorted(missing.items())), side


def finished(f: h5py.File) -> bool:
    """The collector finalised the file: its end_time is set."""
    entry = f["entry"]
    return "end_time" in entry and bool(_plain(entry["end_time"][()]))


def open_run(path: str | Path) -> h5py.File:
    """Open a run file for reading, also one whose writer is still running or was stopped
    without closing it (a crash, a full disk): SWMR mode reads what its last flush recorded."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise
        return h5py.File(path, "r", swmr=True)


def read_run(path: str | Path) -> Run:
    """A run written by stream-node, its frames read only when sliced (lazy, like h5py).

    >>> with read_run("run.h5") as run:                  # doctest: +SKIP
    ...     run.frames.shape, run.missing, run.frames[17].mean()
    ((1000, 512, 1024), {}, 3.0)
    """
    f = open_run(path)
    try:
        return _run(f, f["entry/data/data"])
    except BaseException:
        f.close()
        raise


def load_run(path: str | Path, frames: slice | None = None) -> Run:
    """The same as `read_run`, with the frames (all, or the slice `frames`) loaded into a
    numpy array and the file closed again: for runs that fit in memory."""
    select = frames if frames is not None else slice(None)
    with open_run(path) as f:
        run = _run(f, f["entry/data/data"][select], select)
    run.file = None
    return run


def _run(f: h5py.File, data: h5py.Dataset | np.ndarray, select: slice = slice(None)) -> Run:
    entry = f["entry"]
    records = entry.get("frames")
    if records is not None:
        ids = records["frame_id"][select]
        received = records["received"][select].astype(bool)
    else:  # a run whose collector stopped before finalising: chunks are all there is
        ids = np.arange(entry["data/data"].shape[0], dtype=np.uint64)[select]
        received = np.ones(len(ids), bool)
    missing, side = merged_missing(f)
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
    return Run(data, ids, received, metadata, missing, counters, f, finished(f),
               side["path"] if side else None)
