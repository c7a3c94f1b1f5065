"""Number formatting the benchmark tables share (NaN, a row that could not be measured, is "—"),
and the tables themselves."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

_RULE = {"l": "---", "r": "---:"}


def fmt_rate(x: float) -> str:
    """A rate with a k/M suffix: 291.2 k, 1.05 M."""
    if math.isnan(x):
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt(x: float, digits: int = 2) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


def md_table(head: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table of `rows` (cells as str() gives them) under `head`.

    `align` has a letter per column, "l" or "r" (numbers, so that their digits line up when the
    table is rendered). The rule under the header is derived from it, and every row is checked
    against the header, so that a column added to one and not the other fails at once instead of
    shifting the rest of the table."""
    if len(align) != len(head) or set(align) - set(_RULE):
        raise ValueError(f"align {align!r} does not fit {len(head)} columns")
    lines = ["| " + " | ".join(head) + " |", "|" + "".join(_RULE[a] + "|" for a in align)]
    for row in rows:
        if len(row) != len(head):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(head)} columns")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)
