"""One writer per run file: an exclusive lock beside it, held while a collector writes it."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from stream_node.model.errors import OutputExistsError, StorageError, brief

log = logging.getLogger(__name__)

# Space the lock file holds for the sidecar ledger: freed after a failed write, so that the
# ledger of a full disk has room (a few bytes per run of missing ids; 64 KiB is thousands).
LEDGER_RESERVE = 64 << 10
_PID_BYTES = 32  # the lock file's head: the holder's pid and a newline, NUL-padded


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class FileLock:
    """An exclusive flock on `<file>.lock`, held as long as a writer has the run's files open.

    HDF5's own file lock is no guard: a writer drops it when it switches to SWMR, and then a
    second writer could open a live run's file (and with --overwrite truncate it). A flock is
    dropped by the kernel however its holder ends, so what a crashed collector leaves stops
    nobody and --resume works. The lock file holds the holder's pid (for the refusal), then
    LEDGER_RESERVE bytes of allocated space that `free_reserve` gives back on a full disk.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = lock_path(target)
        self.room_error: OSError | None = None  # the disk could not give LEDGER_RESERVE
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StorageError(f"cannot create output file {target}: its lock file "
                                   f"{self.path}: {brief(exc)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise OutputExistsError(
                    f"{target} is being written by another collector (pid {holder}, lock "
                    f"{self.path}): choose another --file, or wait until that collector has "
                    "exited (--resume then takes up a run it left unfinished)") from None
            except OSError as exc:
                os.close(fd)
                raise StorageError(f"cannot lock {self.path} ({brief(exc)}): write the run "
                                   "to a file system with flock") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder closed and removed it meanwhile: lock the one there now
        self.fd: int | None = fd
        head = f"{os.getpid()}\n".encode().ljust(_PID_BYTES, b"\0")
        try:
            os.pwrite(fd, head, 0)
            os.posix_fallocate(fd, 0, LEDGER_RESERVE)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("%s: no space reserved for a ledger: %s", self.path, brief(exc))
            self.room_error = exc

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, _PID_BYTES, 0).split(b"\n", 1)[0].strip(b"\0 ").decode()
        except (OSError, UnicodeDecodeError):
            text = ""
        return text if text.isdigit() else "unknown"

    def free_reserve(self) -> None:
        """Give the reserved space back to the disk (to make room for a ledger)."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, _PID_BYTES)
            except OSError as exc:
                log.warning("%s: %s", self.path, brief(exc))

    def release(self) -> None:
        """Remove the lock file and unlock, in that order: a writer that opened the file
        meanwhile finds it no longer at its path and takes the next one."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, brief(exc))
        os.close(self.fd)
        self.fd = None
