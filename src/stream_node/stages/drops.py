"""Counters of what a node dropped, with rate-limited warnings: shared by every node."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

# After this many warnings of one kind, a node only counts: a flood of bad messages must not
# become a flood of log lines (one line per event, never one per frame).
WARN_LIMIT = 5


class DropLedger:
    """Counts messages a node refused, by reason, and logs the first few of each kind."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.by_reason: Counter[str] = Counter()
        self.frames: dict[int, str] = {}  # frame id -> why, for drops that name their frame

    def drop(self, kind: str, detail: str, frame_id: int | None = None) -> None:
        self.by_reason[kind] += 1
        if frame_id is not None:
            self.frames[frame_id] = f"{self.who} dropped it: {detail}"
        n = self.by_reason[kind]
        if n <= WARN_LIMIT:
            suffix = " (further ones only counted)" if n == WARN_LIMIT else ""
            log.warning("%s: dropped a %s message: %s%s", self.who, kind, detail, suffix)

    def __getitem__(self, kind: str) -> int:
        return self.by_reason[kind]

    def as_dict(self) -> dict[str, int]:
        return dict(self.by_reason)
