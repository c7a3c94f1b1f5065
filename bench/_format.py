"""Number formatting the benchmark tables share (NaN, a row that could not be measured, is "—")."""

from __future__ import annotations

import math


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
