"""How a command ends on a signal."""

from __future__ import annotations

import signal


def terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a node the way Ctrl-C does: it finalises what it holds, then exits."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
