"""The HDF5 file of one run: frames as direct chunks at their index, per-frame records, the ledger.

Layout (NeXus NXmx, readable by any HDF5 1.10 or later with the bitshuffle plugin; no
stream-node needed; docs/file-format.md says every object, its type and units):

    /entry                          NXentry, definition "NXmx", @default -> data; run metadata
                                    as attributes; start_time, end_time
    /entry/instrument/beam          NXbeam: incident wavelength and energy, flux (when known)
    /entry/instrument/detector      NXdetector: the detector's own header fields, its place
                                    (transformations, NXdetector_module per module), sensor...
    /entry/sample                   NXsample: goniometer axes with a value per frame
    /entry/data/data                frames x ny x nx, one frame per chunk, 0 where one is missing
                                    (a virtual dataset over numbered data files when rotating)
    /entry/frames/{frame_id, timestamp_ns, arrival_ns, worker, received, flags, parts}
                                    flags: FLAG_PARTIAL (1) marks a frame with data missing
                                    (filled), parts: the data parts (packets) that arrived
    /entry/frames/<origin column>   per-frame values the origin reported (e.g. DECTRIS times)
    /entry/partial/{frame_id, missing_parts}   partial frames and a bitmap of the parts lost
    /entry/missing/{frame_id, reason}   every expected id that never arrived, and why
    /entry/stream_node              @format_version; counters (int64 values, names in its
                                    "names" attribute); reports (the nodes' final reports, JSON)

Every object exists before the file switches to SWMR, and afterwards only dataset contents and
sizes change: analysis code can open it with `swmr=True` and read frames while the run goes on.
`flush()` (every `flush_interval_s` from the collector) makes what was written durable and
visible, so a crash loses at most that interval and the file stays valid.

One writer per file: `<file>.lock` is flock'ed for the writer's lifetime, before the file is
created, truncated or reopened (`FileLock`). After a failed write the file is left as its last
flush made it, and every frame it does not durably hold goes to the sidecar ledger
`<file>.missing.json` (`RunWriter.abandon`), which `read_run` and `stream-node inspect` merge.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stream_node.kernels.compression import hdf5_filter
from stream_node.model.contract import frame_nbytes
from stream_node.model.errors import ConfigError, OutputExistsError, StorageError, brief
from stream_node.model.instrument import Instrument
from stream_node.storage.ledger import (
    LEDGER_KIND,
    id_ranges,
    ledger_path,
    read_ledger,
    spell,
    write_ledger,
)
from stream_node.storage.lock import LEDGER_RESERVE, FileLock
from stream_node.storage.nexus import describe_entry, finish_axes, now, write_entry
from stream_node.storage.reader import open_run

log = logging.getLogger(__name__)

COUNTERS = ("frames_expected", "frames_written", "bytes_written", "bytes_stored", "missing",
            "duplicates", "partial", "dropped_malformed", "dropped_foreign", "dropped_invalid",
            "dropped_unexpected", "dropped_corrupt")
REASON_BYTES = 240
# The oldest HDF5 object formats that still give SWMR and virtual datasets: those of HDF5 1.10.
# Unbounded ("latest"), HDF5 2.0 writes a layout message HDF5 1.14 and the 1.10 tools that
# distributions ship cannot read ("bad version number for layout message"); with this bound the
# file opens in HDF5 1.10, 1.12, 1.14 and 2.0 alike (tests/test_file_compat.py).
LIBVER = ("v110", "v110")
FORMAT_VERSION = "1.1"  # stream-node's own layout, /entry/stream_node@format_version; see docs
# Per-frame records kept in memory while frames arrive and written at each flush: the name in
# /entry/frames, dtype, and the value of a frame that never came.
RECORDS = (("timestamp_ns", np.uint64, 0), ("arrival_ns", np.uint64, 0), ("worker", np.int32, -1),
           ("received", np.uint8, 0), ("flags", np.uint32, 0), ("parts", np.uint32, 0))
_GROW = 4096


def _reason_bytes(reason: str) -> bytes:
    """The reason as UTF-8, cut to what the ledger holds at a character's boundary: a cut
    inside a character would make the whole ledger unreadable as text."""
    return reason.encode()[:REASON_BYTES].decode(errors="ignore").encode()


class RunWriter:
    """Writes frames that arrive in any order exactly once each, at index frame_id - first_id.

    `compression="bslz4"`: payloads are filter-32008 chunks made by the workers and written as
    they are; `frames_per_file=N`: frames go to numbered files of N frames and `path` becomes the
    master file presenting them as one virtual /entry/data/data (needs a known frame count).
    """

    def __init__(
        self,
        path: str | Path,
        frame_shape: tuple[int, ...],
        dtype: np.dtype | str,
        expected_frames: int,
        first_frame_id: int = 0,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
        compression: str | None = None,
        frames_per_file: int = 0,
        detector: dict[str, Any] | None = None,
        columns: tuple[str, ...] = (),
        resume: bool = False,
        instrument: Instrument | None = None,
        libver: str | tuple[str, str] = LIBVER,
        describe_now: bool = True,
    ) -> None:
        if compression not in (None, "none", "bslz4"):
            raise ConfigError(f"compression {compression!r}: use 'bslz4' or none")
        if frames_per_file and expected_frames <= 0:
            raise ConfigError("rotating files (frames per file) needs the run's frame count")
        self.path = Path(path)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self.first_frame_id = first_frame_id
        self.compression = compression if compression == "bslz4" else None
        self.frames_per_file = frames_per_file if 0 < frames_per_file < expected_frames else 0
        self.overwrite = overwrite
        self.instrument = instrument
        self.libver = libver  # LIBVER; another bound only to measure what it costs (bench/)
        self.columns = tuple(columns)  # the origin's per-frame values, declared at START
        self.frames_written = 0
        self.bytes_written = 0  # frame bytes as the detector made them
        self.bytes_stored = 0  # bytes on disk (after compression)
        self.duplicates = 0
        self.last_index = -1
        self.last_written: int | None = None  # frame id of the most recent write
        self._zeros = (0,) * len(self.frame_shape)
        self._frame_nbytes = frame_nbytes(self.frame_shape, self.dtype)
        size = max(expected_frames, 0)
        self._rec = {name: np.full(size, fill, dtype) for name, dtype, fill in RECORDS}
        self._received = self._rec["received"]
        self._flushed = np.zeros(size, np.uint8)  # received as of the last complete flush
        self._dirty_lo, self._dirty_hi = size, 0  # per-frame records not yet in the file
        self._data_files: dict[int, h5py.File] = {}
        self._made: set[int] = set()  # data files created by this run (reopened, not refused)
        self._closed = False
        self.abandoned = False
        self.failure: str | None = None  # what the file refused, once it did
        self._flags_unsure = False  # a flush failed while writing the received flags
        self.run_id = (metadata or {}).get("run_id")
        self._description: tuple[dict[str, Any], dict[str, Any], int] | None = None
        # Before anything opens, truncates or reopens the file: one writer per file.
        self._lock = FileLock(self.path)
        try:
            self.resumed = resume and self.path.exists()
            if self.resumed:
                self._resume(size)
            else:
                self._room()
                self._file = self._create(self.path)
                try:
                    self._forget_ledger()
                    self._layout(size, metadata or {})
                    self._description = (metadata or {}, detector or {}, size)
                    if describe_now:
                        self.describe()
                except BaseException:
                    self._file.close()
                    raise
        except BaseException:
            self._lock.release()
            raise

    # -- creation ----------------------------------------------------------------------------

    def _room(self) -> None:
        """A disk without room for the ledger's reserve has none for a run either: refuse now,
        while every frame can still be accounted for."""
        exc = self._lock.room_error
        if exc is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no room for {self.path}: its disk cannot give even "
                               f"{LEDGER_RESERVE >> 10} KiB ({os.strerror(exc.errno)}): free "
                               "space, or choose another --file")

    def _forget_ledger(self) -> None:
        """A sidecar ledger left by the run this file held before would be merged into this
        run's: it goes with the old file."""
        try:
            ledger_path(self.path).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot remove the old ledger {ledger_path(self.path)} of the "
                               f"file being replaced: {brief(exc)}") from None

    def _resume(self, size: int) -> None:
        """Reopen the file of a collector of this run that died. If that fails, the frames the
        file lacks would be in no ledger (the file gets its own only at the end): they go to
        the sidecar ledger, and the error says so."""
        try:
            self._room()
            self._file = self._reopen(self.path)
            try:
                self._load(self.run_id)
                self._file.swmr_mode = True
            except BaseException:
                self._file.close()
                raise
        except (StorageError, ConfigError, OSError) as exc:
            if not isinstance(exc, StorageError | ConfigError):
                exc = StorageError(f"cannot resume {self.path}: {brief(exc)}")
            note = self._unresumable(str(exc), size)
            raise type(exc)(f"{exc}; {note}" if note else str(exc)) from None

    def _unresumable(self, error: str, size: int) -> str:
        """Account for the frames the file of this run lacks, read from it as it is; nothing
        for another run's file (refused, and not ours to speak for)."""
        try:
            with open_run(self.path) as f:
                entry = f["entry"]
                if entry.attrs.get("run_id") != self.run_id:
                    return ""  # another run's file: not ours to account for
                received = entry["frames/received"][()].astype(np.uint8)
        except (OSError, KeyError) as exc:
            return (f"its records cannot be read either ({brief(exc)}), so no ledger of the "
                    "frames it lacks was written")
        count = size or len(received)
        durable = np.zeros(count, np.uint8)
        durable[: min(count, len(received))] = received[:count]
        self.failure = error
        reason = (f"not in the file: a collector of the run stopped before flushing it, and the "
                  f"restarted one could not resume the file ({error})")
        return self._account(durable, durable, count, {}, reason, reason)

    def _create(self, path: Path) -> h5py.File:
        if path.exists() and not self.overwrite:
            raise OutputExistsError(
                f"output file {path} exists: pass --overwrite to replace it, or choose another")
        try:
            # 'x' fails if another process creates the file between the check and here.
            return h5py.File(path, "w" if self.overwrite else "x", libver=self.libver)
        except FileExistsError as exc:
            raise OutputExistsError(f"output file {path} exists: {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot create output file {path}: {exc}") from None

    def _reopen(self, path: Path) -> h5py.File:
        """The file of a collector that died mid-run. Its writer never closed it, so HDF5's
        "open for writing" mark is still set; h5clear (hdf5-tools) clears it, nothing else."""
        try:
            return h5py.File(path, "r+", libver=self.libver)
        except OSError as exc:
            if "h5clear" not in str(exc):
                raise StorageError(f"cannot reopen {path} to resume: {brief(exc)}") from None
        h5clear = shutil.which("h5clear")
        if h5clear is None:
            raise ConfigError(f"{path} was left open by a collector that died; resuming needs "
                              "h5clear from hdf5-tools (apt install hdf5-tools)")
        done = subprocess.run([h5clear, "-s", str(path)], capture_output=True, text=True)
        if done.returncode:
            raise StorageError(f"h5clear -s {path} failed: {done.stderr.strip()}")
        try:
            return h5py.File(path, "r+", libver=self.libver)
        except OSError as exc:
            raise StorageError(f"cannot reopen {path} to resume: {brief(exc)}") from None

    def _load(self, run_id: Any) -> None:
        """Take up a run's file where its last flush left it: what it flagged received is
        in it, everything else is still to come."""
        entry = self._file["entry"]
        if entry.attrs.get("run_id") != run_id:
            raise ConfigError(f"{self.path} holds run {entry.attrs.get('run_id_hex')}, not this "
                              f"run ({run_id:#018x}): resume only the file of the same run")
        data = entry["data/data"]
        if data.shape[1:] != self.frame_shape or data.dtype != self.dtype:
            raise ConfigError(f"{self.path}: frames {data.shape[1:]} {data.dtype} differ from "
                              f"the run's {self.frame_shape} {self.dtype}")
        frames = entry["frames"]
        self._rec = {name: frames[name][:].astype(dtype) for name, dtype, _ in RECORDS}
        self._received = self._rec["received"]
        self._flushed = self._received.copy()
        self._dirty_lo, self._dirty_hi = self.capacity, 0
        if self.frames_per_file:
            n = self.frames_per_file
            self._made = {k for k in range((self.capacity + n - 1) // n)
                          if self._data_file_path(k).exists()}
        else:
            self._dset, self._dset_id = data, data.id
        written = np.flatnonzero(self._received)
        self.frames_written = len(written)
        self.last_index = int(written[-1]) if len(written) else -1
        self.bytes_written = self.frames_written * self._frame_nbytes
        names = list(entry["stream_node/counters"].attrs["names"])
        saved = dict(zip(names, entry["stream_node/counters"][:].tolist(), strict=True))
        self.bytes_stored = int(saved.get("bytes_stored", self.bytes_written))
        self.duplicates = int(saved.get("duplicates", 0))
        self._handles(entry)
        log.warning("resuming %s: %d frames written before the collector stopped",
                    self.path, self.frames_written)

    def _handles(self, entry: h5py.Group) -> None:
        """Handles looked up once: flushes and finalize then cost no path lookups."""
        frames = entry["frames"]
        self._ds = {name: frames[name] for name in ("frame_id", *self._rec)}
        self._ds.update({name: entry[path] for name, path in (
            ("missing_id", "missing/frame_id"),
            ("missing_reason", "missing/reason"), ("counters", "stream_node/counters"),
            ("reports", "stream_node/reports"), ("end_time", "end_time"))})

    def _frame_dataset(self, group: h5py.Group, n: int, resizable: bool) -> h5py.Dataset:
        return group.create_dataset(
            "data", shape=(n, *self.frame_shape),
            maxshape=(None if resizable else n, *self.frame_shape),
            chunks=(1, *self.frame_shape), dtype=self.dtype, fillvalue=0,
            **(hdf5_filter() if self.compression else {}))

    def describe(self) -> None:
        """Write the NXmx description of the run (beam, detector, goniometer), then let SWMR
        readers in. A serving collector says READY before this (the frame datasets exist, the
        first frames wait in their queue meanwhile), so the description, a few hundred HDF5
        objects for a DECTRIS header, is not in the dead time between two series."""
        if self._description is None:
            return
        metadata, detector, size = self._description
        self._description = None
        describe_entry(self._file["entry"], metadata, self.frame_shape, self.dtype, detector,
                       self.instrument, size)
        self._file.swmr_mode = True

    def _layout(self, size: int, metadata: dict[str, Any]) -> None:
        entry = write_entry(self._file, metadata)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        if self.frames_per_file:
            self._virtual_data(data, size)
        else:
            self._dset = self._frame_dataset(data, size, resizable=True)
            self._dset_id = self._dset.id
        frames = entry.create_group("frames")
        frames.attrs["NX_class"] = "NXcollection"
        for name, dtype, fill in (("frame_id", np.uint64, 0), *RECORDS):
            frames.create_dataset(name, shape=(size,), maxshape=(None,), dtype=dtype,
                                  chunks=(_GROW,), fillvalue=fill)
        if size:
            ids = np.arange(size, dtype=np.uint64)
            frames["frame_id"][:] = ids + np.uint64(self.first_frame_id)
        for name in self.columns:
            if name in frames:
                raise ConfigError(f"origin column {name!r} would overwrite /entry/frames/{name}")
            frames.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64,
                                  chunks=(_GROW,), fillvalue=-1)
        partial = entry.create_group("partial")
        partial.attrs["NX_class"] = "NXcollection"
        partial.create_dataset("frame_id", shape=(0,), maxshape=(None,), dtype=np.uint64,
                               chunks=(_GROW,))
        bitmap = partial.create_dataset("missing_parts", shape=(0, 0), maxshape=(None, None),
                                        dtype=np.uint8, chunks=(256, 64))
        bitmap.attrs["description"] = ("bit k (byte k // 8, bit k % 8) set: part (packet) k of "
                                       "the frame never arrived")
        missing = entry.create_group("missing")
        missing.attrs["NX_class"] = "NXcollection"
        missing.create_dataset("frame_id", shape=(0,), maxshape=(None,), dtype=np.uint64,
                               chunks=(_GROW,))
        missing.create_dataset("reason", shape=(0,), maxshape=(None,), chunks=(256,),
                               dtype=h5py.string_dtype(length=REASON_BYTES))
        node = entry.create_group("stream_node")
        node.attrs["NX_class"] = "NXcollection"
        node.attrs["format_version"] = FORMAT_VERSION
        counters = node.create_dataset("counters", data=np.zeros(len(COUNTERS), np.int64))
        counters.attrs["names"] = list(COUNTERS)
        node.create_dataset("reports", shape=(0,), maxshape=(None,), dtype=np.uint8,
                            chunks=(65536,))
        self._handles(entry)

    def _data_file_path(self, k: int) -> Path:
        return self.path.with_name(f"{self.path.stem}_{k + 1:06d}{self.path.suffix}")

    def _virtual_data(self, data: h5py.Group, size: int) -> None:
        n = self.frames_per_file
        layout = h5py.VirtualLayout(shape=(size, *self.frame_shape), dtype=self.dtype)
        for k in range((size + n - 1) // n):
            count = min(n, size - k * n)
            source = h5py.VirtualSource(self._data_file_path(k).name, "entry/data/data",
                                        shape=(count, *self.frame_shape))
            layout[k * n: k * n + count] = source
        data.create_virtual_dataset("data", layout, fillvalue=0)

    def _data_file(self, k: int) -> h5py.Dataset:
        """The dataset of data file k, created (or reopened) on first use; few stay open."""
        f = self._data_files.get(k)
        if f is None:
            path = self._data_file_path(k)
            n = min(self.frames_per_file, self.capacity - k * self.frames_per_file)
            if path.exists() and k in self._made:
                f = self._reopen(path)
            else:
                f = self._create(path)
                self._frame_dataset(f.create_group("entry").create_group("data"), n, False)
                self._made.add(k)
            f.swmr_mode = True
            if len(self._data_files) >= 4:  # frames arrive nearly in order: few files are live
                oldest = min(self._data_files)
                self._data_files.pop(oldest).close()
            self._data_files[k] = f
        return f["entry/data/data"]

    # -- writing -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return len(self._received)

    def _grow(self, index: int) -> None:
        """Runs of unknown length grow geometrically (rare: never per frame)."""
        size = max(index + 1, 2 * self.capacity, 16)
        self._dset.resize(size, axis=0)
        for name, dtype, fill in RECORDS:
            new = np.full(size, fill, dtype)
            new[: self.capacity] = self._rec[name]
            self._rec[name] = new
        flushed = np.zeros(size, np.uint8)
        flushed[: len(self._flushed)] = self._flushed
        self._flushed = flushed
        self._received = self._rec["received"]

    def has(self, index: int) -> bool:
        return index < self.capacity and bool(self._received[index])

    def write(self, index: int, payload: Any, timestamp_ns: int, worker: int, flags: int = 0,
              parts: int = 0) -> bool:
        """Write one frame's bytes as its chunk; False (and counted) if that index is written."""
        if self._description is not None:
            self.describe()
        received = self._received
        if index >= len(received):
            if self.frames_per_file:
                raise StorageError(f"frame {index + self.first_frame_id} is beyond the run's "
                                   f"{self.capacity} frames")
            self._grow(index)
            received = self._received
        if received[index]:
            self.duplicates += 1
            return False
        # A memoryview, never the ndarray itself: h5py takes a slow path for an ndarray (an
        # 8 MiB frame written 3-8x slower here, measured), none for a buffer.
        chunk = memoryview(payload)
        try:
            if self.frames_per_file:
                k, at = divmod(index, self.frames_per_file)
                self._data_file(k).id.write_direct_chunk((at, *self._zeros), chunk)
            else:
                self._dset_id.write_direct_chunk((index, *self._zeros), chunk)
        except OSError as exc:
            last = "none" if self.last_written is None else str(self.last_written)
            self.failure = brief(exc)
            raise StorageError(
                f"writing frame {index + self.first_frame_id} to {self.path} failed: "
                f"{self.failure}; the last frame written was {last}") from None
        # The per-frame bookkeeping: a few scalar stores, no allocation (this runs per frame).
        rec = self._rec
        received[index] = 1
        rec["timestamp_ns"][index] = timestamp_ns
        rec["arrival_ns"][index] = time.time_ns()
        rec["worker"][index] = worker
        rec["flags"][index] = flags
        rec["parts"][index] = parts
        if index < self._dirty_lo:
            self._dirty_lo = index
        if index >= self._dirty_hi:
            self._dirty_hi = index + 1
        if index > self.last_index:
            self.last_index = index
        self.frames_written += 1
        self.bytes_written += self._frame_nbytes
        self.bytes_stored += chunk.nbytes
        self.last_written = index + self.first_frame_id
        return True

    def missing_indexes(self, count: int) -> np.ndarray:
        """Indexes below `count` that were never written."""
        if count > self.capacity:
            self._grow(count - 1)
        return np.flatnonzero(self._received[:count] == 0)

    def _records(self) -> None:
        lo, hi = self._dirty_lo, self._dirty_hi
        if lo >= hi:
            return
        ds = self._ds
        if ds["received"].shape[0] != self.capacity:
            self._resize_records(self.capacity)
        for name, values in self._rec.items():
            ds[name][lo:hi] = values[lo:hi]
        self._dirty_lo, self._dirty_hi = self.capacity, 0

    def _resize_records(self, size: int) -> None:
        for name in ("frame_id", *self._rec):
            self._ds[name].resize((size,))
        self._ds["frame_id"][:] = np.arange(size, dtype=np.uint64) + np.uint64(self.first_frame_id)

    def _counters(self, values: dict[str, Any]) -> None:
        own = {"frames_written": self.frames_written, "bytes_written": self.bytes_written,
               "bytes_stored": self.bytes_stored, "duplicates": self.duplicates}
        merged = {**values, **own}
        self._ds["counters"][:] = [int(merged.get(n, 0)) for n in COUNTERS]

    def flush(self, counters: dict[str, Any] | None = None) -> None:
        """Make every frame written so far durable and visible to SWMR readers.

        Two steps, so that a frame's `received` flag never reaches the disk before its chunk's
        index entry does: first the chunks' metadata, then the flags and counters. Only a flush
        that completes makes its frames durable (what `abandon` counts readable).
        """
        if self._description is not None:
            self.describe()
        lo, hi = self._dirty_lo, min(self._dirty_hi, len(self._flushed))
        chunks_durable = False
        try:
            for f in self._data_files.values():
                f.flush()
            self._file.flush()
            chunks_durable = True
            self._records()
            self._counters(counters or {})
            self._file.flush()
        except OSError as exc:
            self.failure = brief(exc)
            # Some flags of this flush may have reached the disk: their frames read too.
            self._flags_unsure = chunks_durable and lo < hi
            raise StorageError(f"flushing {self.path} failed: {self.failure}") from None
        if lo < hi:
            self._flushed[lo:hi] = self._received[lo:hi]

    def finalize(self, count: int, missing_reasons: dict[int, str], counters: dict[str, Any],
                 reports: dict[str, Any] | None = None,
                 per_frame: dict[str, dict[int, int]] | None = None,
                 partial: dict[int, bytes] | None = None) -> None:
        """Trim to `count` frames, write the per-frame records, the ledger and the counters;
        `per_frame` holds the origin's own per-frame values by column name (frame index keys),
        `partial` the bitmap of lost parts of each partial frame. A sidecar ledger an earlier
        collector of this run left is folded in (its reasons, the first cause, win) and removed:
        the file's own ledger is now complete."""
        if self._description is not None:
            self.describe()
        earlier = self._earlier_ledger()
        if earlier:
            missing_reasons = {i: earlier.get(i + self.first_frame_id, reason)
                               for i, reason in missing_reasons.items()}
        try:
            if count != self.capacity and not self.frames_per_file:
                self._dset.resize(count, axis=0)
                for name in self._rec:
                    self._rec[name] = self._rec[name][:count]
                self._received = self._rec["received"]
                self._dirty_lo, self._dirty_hi = 0, count
                self._resize_records(count)
            ds = self._ds
            self._origin_records(count, per_frame or {}, partial or {})
            ids = np.array(sorted(missing_reasons), dtype=np.uint64)
            if len(ids):
                ds["missing_id"].resize((len(ids),))
                ds["missing_id"][:] = ids + np.uint64(self.first_frame_id)
                ds["missing_reason"].resize((len(ids),))
                ds["missing_reason"][:] = [
                    _reason_bytes(missing_reasons[int(i)]) for i in ids]
            blob = np.frombuffer(json.dumps(reports or {}).encode(), np.uint8)
            ds["reports"].resize((len(blob),))
            ds["reports"][:] = blob
            finish_axes(self._file["entry"], self.instrument, count)
            ds["end_time"][()] = now()
            self.flush({**counters, "missing": len(ids)})
        except OSError as exc:
            self.failure = self.failure or brief(exc)
            raise StorageError(f"finalising {self.path} failed: {brief(exc)}") from None
        if earlier is not None:
            try:
                ledger_path(self.path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s, now in the file: %s", ledger_path(self.path),
                            brief(exc))

    def _earlier_ledger(self) -> dict[int, str] | None:
        """The sidecar ledger of this run, if an earlier collector of it left one."""
        try:
            side = read_ledger(self.path)
        except ValueError as exc:
            log.warning("%s", exc)
            return None
        if side is None or side.get("run_id") != self.run_id:
            return None
        return side["missing"]

    def _origin_records(self, count: int, per_frame: dict[str, dict[int, int]],
                        partial: dict[int, bytes]) -> None:
        frames = self._file["entry/frames"]
        for name in self.columns:
            column = np.full(count, -1, np.int64)
            for index, value in per_frame.get(name, {}).items():
                if 0 <= int(index) < count:
                    column[int(index)] = value
            frames[name].resize((count,))
            frames[name][:] = column
        unknown = set(per_frame) - set(self.columns)
        if unknown:
            log.warning("per-frame values %s were not declared at START: not written", unknown)
        if partial:
            ids = sorted(int(i) for i in partial)
            width = max(len(b) for b in partial.values())
            bitmaps = np.zeros((len(ids), width), np.uint8)
            for row, index in enumerate(ids):
                bits = partial[index]
                bitmaps[row, : len(bits)] = np.frombuffer(bits, np.uint8)
            group = self._file["entry/partial"]
            group["frame_id"].resize((len(ids),))
            group["frame_id"][:] = np.array(ids, np.uint64) + np.uint64(self.first_frame_id)
            group["missing_parts"].resize((len(ids), width))
            group["missing_parts"][:] = bitmaps

    def abandon(self, count: int | None = None,
                reasons: dict[int, str] | None = None) -> str:
        """After a failed write: touch the files no more, and account for every frame of the
        run's `count` (default: up to the last one written) that the file does not durably
        hold, in the sidecar ledger; returns what became of them, for the error message.

        Closing would make HDF5 write a superblock for space the disk refused, and the file
        would no longer open; left alone, the file is what the last complete flush
        (SWMR-consistent) made it, so the ledger cannot go into it. The process must then end
        without HDF5's exit-time close (see cli's collector command); the lock stays held
        until it does. `reasons` (frame index -> why) covers frames known lost otherwise.
        """
        self._closed = True
        self.abandoned = True
        count = self.last_index + 1 if count is None else count
        durable = np.zeros(count, np.uint8)
        received = np.zeros(count, np.uint8)
        n = min(count, self.capacity)
        durable[:n] = self._flushed[:n]
        received[:n] = self._received[:n]
        failure = self.failure or "an I/O error"
        absent = f"not written: the collector stopped when {self.path.name} failed: {failure}"
        if self.resumed:
            absent += ("; or received before the collector was restarted, after its last flush, "
                       "and lost with it")
        note = self._account(
            durable, received, count, reasons or {},
            f"written after the last flush of {self.path.name}, lost when the file failed: "
            f"{failure}", absent)
        if self._flags_unsure:
            note += ("; frames of the flush that failed read too where the file flags them "
                     "received (the file's flag wins over the ledger)")
        return note

    def _account(self, durable: np.ndarray, received: np.ndarray, count: int,
                 reasons: dict[int, str], unflushed: str, absent: str) -> str:
        """Record every index below `count` not `durable` in the sidecar ledger, with its
        reason from `reasons`, else `unflushed` (it had been written) or `absent`; returns
        which frames stay readable and where the others are recorded."""
        first = self.first_frame_id
        readable = np.flatnonzero(durable) + first
        gone = np.flatnonzero(durable == 0)
        missing = {int(i) + first: reasons.get(int(i)) or (unflushed if received[i] else absent)
                   for i in gone}
        if len(readable):
            note = (f"the {len(readable)} frames of its last flush stay readable (ids "
                    f"{spell(id_ranges(readable))})")
        else:
            note = "none of its frames is readable"
        if not missing:
            return note
        where = self._write_ledger(missing, count, readable)
        return f"{note}; the other {len(missing)} of the run's {count} are {where}"

    def _write_ledger(self, missing: dict[int, str], count: int, readable: np.ndarray) -> str:
        """The sidecar ledger, written atomically (a temporary file renamed over it) next to
        the file, in the room the lock file held for it. Reasons an earlier ledger of this run
        gives win (the first cause of a loss). If even that fails, the ledger goes to stderr:
        it must not be lost with the disk."""
        earlier = self._earlier_ledger() or {}
        missing = {i: earlier.get(i, reason) for i, reason in missing.items()}
        side = ledger_path(self.path)
        if earlier and set(missing) == set(earlier):  # the same ids, with the same reasons
            return f"recorded missing in {side} (as an earlier collector left it)"
        reasons: dict[str, int] = {}
        runs: list[list[Any]] = []
        for i, reason in sorted(missing.items()):
            k = reasons.setdefault(reason, len(reasons))
            if runs and runs[-1][1] == i - 1 and runs[-1][2] == k:
                runs[-1][1] = i
            else:
                runs.append([i, i, k])
        doc = {"ledger": LEDGER_KIND, "version": 1, "file": self.path.name,
               "run_id": self.run_id, "first_frame_id": self.first_frame_id, "frames": count,
               "error": self.failure, "time": now(),
               "readable": [list(r) for r in id_ranges(readable)],
               "reasons": list(reasons), "missing": runs}
        self._lock.free_reserve()  # the room the lock file held for this
        return write_ledger(side, doc)

    @property
    def is_open(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Close every file, once; after a failed write HDF5 may refuse to close cleanly (and
        the handle must not be touched again), while what was flushed stays valid: that refusal
        is logged, not raised."""
        if self._closed:
            return
        self._closed = True
        files = [*self._data_files.values(), self._file]
        self._data_files.clear()
        for name in ("_dset", "_dset_id", "_ds"):
            self.__dict__.pop(name, None)
        for f in files:
            try:
                if f.id.valid:
                    name = f.filename  # not to be asked of a file whose close failed
                    f.close()
            except (OSError, RuntimeError) as exc:
                log.warning("closing %s after an error: %s", name, brief(exc))
        self._lock.release()
