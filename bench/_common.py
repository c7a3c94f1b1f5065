"""Command-line and child-process plumbing the benchmarks share, so that every bench is driven,
and cleans up after itself, the same way."""

from __future__ import annotations

import argparse
from multiprocessing.process import BaseProcess


def bench_parser(doc: str | None, quick: str, full: str) -> argparse.ArgumentParser:
    """A parser with the two run lengths every bench offers, `quick` and `full` their help.

    --quick is the default (a bench runs on shared 2-core machines, so a bare run must stay
    short); the flag exists so a command line can say so. The description is the first line of
    `doc`, the bench's module docstring."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help=quick)
    group.add_argument("--full", action="store_true", help=full)
    return ap


def reap(*procs: BaseProcess, join_s: float = 10.0, term_s: float = 5.0) -> None:
    """Wait up to `join_s` each for `procs` to exit, then terminate, and at last kill, those left.

    A hung child must neither hang the bench nor outlive it, holding shared memory, ports or a
    core that the next row would be measured against."""
    for proc in procs:
        proc.join(join_s)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(term_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
