"""What is wrong with a topology file, each problem with its line.

tomllib keeps no positions, so `Lines` finds them by scanning the text for table headers and
keys.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from stream_node.deploy.topology import Problem


@dataclass
class Findings:
    """What is wrong with a file so far, with a way to find a key's line."""

    line: Lines
    problems: list[Problem] = field(default_factory=list)
    bad: set[tuple[str, str, str]] = field(default_factory=set)  # unusable endpoints

    def fail(self, line: int, message: str) -> None:
        self.problems.append(Problem(line, message))


class Lines:
    """Line numbers of a TOML text's tables and keys, found by scanning the text."""

    HEADER = re.compile(r"^\[\[?\s*(?P<path>[^\[\]]+?)\s*\]\]?\s*(#.*)?$")
    KEY = re.compile(r"""^(?P<path>[A-Za-z0-9_\-"'. ]+?)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if header := self.HEADER.match(line):
                table = self._split(header["path"])
                self.lines.setdefault(table, number)
            elif key := self.KEY.match(line):
                self.lines.setdefault(table + self._split(key["path"]), number)

    @staticmethod
    def _split(dotted: str) -> tuple[str, ...]:
        parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', dotted)
        return tuple(p.strip().strip("\"'") for p in parts if p.strip())

    def __call__(self, *path: str) -> int:
        """The line of `path`, else of its nearest enclosing table or key found."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1


def suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
