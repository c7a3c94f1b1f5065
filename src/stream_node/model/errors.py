"""One hierarchy of errors, each mapped to the process exit code a DAQ script can act on."""

from __future__ import annotations

import os
from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of every `stream-node` command."""

    OK = 0  # run complete, every frame written
    ERROR = 1  # unexpected failure (a bug: please report it)
    USAGE = 2  # bad command line (argparse's own code)
    FRAMES_MISSING = 3  # run finished, but some frames are recorded missing in the file
    PEER_TIMEOUT = 4  # a peer never came or went silent
    CONFIG = 5  # bad configuration (also: output file exists without --overwrite)
    IO = 6  # the output file could not be written (full disk, I/O error)
    ABORTED = 7  # the run was aborted (signal, or an ABORT from a peer)


class StreamNodeError(Exception):
    """Base of every error stream-node raises on purpose."""

    exit_code = ExitCode.ERROR


class ProtocolError(StreamNodeError, ValueError):
    """A message that is not a valid stream-node message (truncated, foreign, inconsistent)."""


class ConfigError(StreamNodeError, ValueError):
    """A setting that cannot work; the message says which and what to do."""

    exit_code = ExitCode.CONFIG


class OutputExistsError(ConfigError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


class PeerTimeout(StreamNodeError, TimeoutError):
    """A peer did not answer in time; the message names it and the timeout."""

    exit_code = ExitCode.PEER_TIMEOUT


class RunAborted(StreamNodeError):
    """The run was abandoned; the message says who aborted it and why."""

    exit_code = ExitCode.ABORTED


class StorageError(StreamNodeError, OSError):
    """Writing the output failed; frames written before the failure stay readable."""

    exit_code = ExitCode.IO


class RingError(StreamNodeError):
    """A shared-memory ring operation failed; `code` is the native SN_RING_E* value."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class RingTimeout(RingError, TimeoutError):
    """Nothing arrived (or no slot freed) within the timeout."""

    exit_code = ExitCode.PEER_TIMEOUT


class EndOfStream(RingError):
    """The producer closed the ring or died, and every frame it published has been consumed."""


class KernelError(StreamNodeError):
    """A kernel failed on one frame; `kernel` names the stage, `frame_id` the frame if known.

    The worker catches it, records the frame and carries on with the next one.
    """

    def __init__(self, kernel: str, message: str, frame_id: int | None = None) -> None:
        where = "" if frame_id is None else f" on frame {frame_id}"
        super().__init__(f"kernel {kernel!r} failed{where}: {message}")
        self.kernel = kernel
        self.frame_id = frame_id
        self.reason = message


def brief(exc: Exception) -> str:
    """HDF5's message without its multi-line dump of buffers and offsets."""
    text = str(exc).split(" (", 1)[0]
    errno = getattr(exc, "errno", None)
    return f"{text} ({os.strerror(errno)})" if errno else text
