"""The sidecar ledger of missing frames: `<file>.missing.json`, for a run file that could not take
its own ledger (a full disk, an I/O error). The readers merge it; see docs/file-format.md."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stream_node.model.errors import brief

_LISTED_RANGES = 20  # id ranges a message spells out

LEDGER_SUFFIX = ".missing.json"
LEDGER_KIND = "stream-node missing frames"


def ledger_path(path: str | Path) -> Path:
    """The sidecar ledger of run file `path`: `<file>.missing.json`, next to it."""
    path = Path(path)
    return path.with_name(path.name + LEDGER_SUFFIX)


def id_ranges(ids: Any) -> list[tuple[int, int]]:
    """Ascending ids as inclusive (first, last) runs: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1)
    firsts = np.concatenate(([ids[0]], ids[breaks + 1]))
    lasts = np.concatenate((ids[breaks], [ids[-1]]))
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def read_ledger(path: str | Path) -> dict[str, Any] | None:
    """The sidecar ledger of run file `path` (None without one), its `missing` expanded to
    {frame id: reason}. It is written atomically, so a damaged one was edited by hand: that is
    an error, not an empty ledger."""
    side = ledger_path(path)
    try:
        doc = json.loads(side.read_text())
        if doc.get("ledger") != LEDGER_KIND:
            raise ValueError(f"not a {LEDGER_KIND!r} ledger")
        reasons = doc["reasons"]
        missing = {i: str(reasons[k]) for first, last, k in doc["missing"]
                   for i in range(int(first), int(last) + 1)}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{side} is not a readable ledger of missing frames ({exc}): restore "
                         "it, or move it aside to read the file alone") from None
    return {**doc, "missing": missing, "path": side}


def spell(ranges: list[tuple[int, int]]) -> str:
    """Id ranges for a message: "0-200, 203, 205-210", the first _LISTED_RANGES of them."""
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:_LISTED_RANGES])
    more = len(ranges) - _LISTED_RANGES
    return text + (f" and {more} more ranges" if more > 0 else "")


def write_ledger(side: Path, doc: dict[str, Any]) -> str:
    """Write the sidecar ledger atomically (a temporary file renamed over it, both fsynced);
    if even that fails, print it to stderr: it must not be lost with the disk. Returns how the
    frames are accounted for, for the error message."""
    text = json.dumps(doc, separators=(",", ":"))
    temporary = side.with_name(side.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = memoryview(text.encode())
            while data:  # a nearly full disk takes part of a write, then refuses the rest
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, side)
        directory = os.open(side.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):  # what is in the way stays: stderr gets it
            temporary.unlink(missing_ok=True)
        print(f"stream-node: cannot write the ledger of missing frames {side} "
              f"({brief(exc)}); here it is instead: {text}", file=sys.stderr, flush=True)
        return (f"missing, and their ledger could not be written to {side} "
                f"({brief(exc)}): it was printed to stderr")
    return f"recorded missing in {side}"
