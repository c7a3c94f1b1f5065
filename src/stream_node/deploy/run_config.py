"""The settings a served node's next run starts with: checked here, one key at a time.

An operator changes them between series (`PUT /api/v1/config`, `stream-node ctl HOST config
KEY=VALUE`), so every value may arrive as a string and is coerced; whatever cannot work is a
`ConfigError` naming the key, at the moment it is set, never when the next run starts.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from stream_node.model.errors import ConfigError

DEFAULT_TEMPLATE = "{node}_{series}_{run:05d}.h5"
PLACEHOLDERS = ("node", "series", "run", "date", "time", "run_id")
COMPRESSIONS = ("none", "bslz4")
NONE_WORDS = ("", "none", "null")  # what `ctl config frames=none` sends for "no value"
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # a series label becomes part of a file name


def defaults() -> dict[str, Any]:
    """The settings before anyone changed them."""
    return {"file_template": DEFAULT_TEMPLATE, "directory": ".", "frames": None,
            "kernels": [], "compression": "none", "rate_hz": None, "series": None}


def _none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)


def _file_template(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("file_template: give a non-empty file name pattern, "
                          f"e.g. {DEFAULT_TEMPLATE!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"file_template {value!r}: {exc} (a literal brace is {{{{ or }}}})"
                          ) from None
    for field in fields:
        if field not in PLACEHOLDERS:
            raise ConfigError(f"file_template {value!r}: unknown placeholder {{{field}}}; "
                              f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"file_template {value!r}: a name inside `directory` (no leading / "
                          "and no ..); set `directory` for where the files go")
    expand_template(value, node="node", series="series", run=1, run_id=1,
                    now=datetime(2000, 1, 1))  # a format spec that cannot work fails now
    return value


def _directory(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("directory: give the folder the run files go to, e.g. /data/run")
    if "\0" in value:
        raise ConfigError("directory: a path cannot hold a NUL character")
    return value


def _frames(value: Any) -> int | None:
    if _none(value):
        return None
    try:
        frames = int(value) if not isinstance(value, (bool, float)) else None
    except ValueError:
        frames = None
    if frames is None and isinstance(value, float) and value.is_integer():
        frames = int(value)
    if frames is None or frames < 1:
        raise ConfigError(f"frames {value!r}: a whole number >= 1, or none (until the "
                          "detector's series ends)")
    return frames


def _kernels(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise ConfigError(f"kernels: not JSON ({exc}); give a list like "
                              '[{"kernel": "bin2x2"}]') from None
    if not isinstance(value, list) or not all(
            isinstance(k, dict) and isinstance(k.get("kernel"), str) and k["kernel"]
            for k in value):
        raise ConfigError('kernels: a list of objects, each with a "kernel" name, like '
                          '[{"kernel": "bin2x2"}]')
    return [dict(k) for k in value]


def _compression(value: Any) -> str:
    text = str(value).strip().lower() if value is not None else "none"
    if text not in COMPRESSIONS:
        raise ConfigError(f"compression {value!r}: one of {', '.join(COMPRESSIONS)}")
    return text


def _rate_hz(value: Any) -> float | None:
    if _none(value):
        return None
    try:
        rate = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"rate_hz {value!r}: a number > 0, or none (as fast as frames come)")
    return rate


def _series(value: Any) -> str | None:
    if _none(value):
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"series {value!r}: a label, e.g. lysozyme_01")
    return str(value)


CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "file_template": _file_template, "directory": _directory, "frames": _frames,
    "kernels": _kernels, "compression": _compression, "rate_hz": _rate_hz, "series": _series,
}


def checked(updates: Any) -> dict[str, Any]:
    """`updates` with every value coerced; a ConfigError for the first key that cannot work,
    so a request changes all its keys or none."""
    if not isinstance(updates, Mapping):
        raise ConfigError('the settings are a JSON object like {"frames": 1000}')
    out = {}
    for key, value in updates.items():
        check = CHECKS.get(key)
        if check is None:
            raise ConfigError(f"unknown setting {key!r}; allowed: {', '.join(CHECKS)}")
        out[key] = check(value)
    return out


def expand_template(template: str, *, node: str, series: str | None, run: int, run_id: int,
                    now: datetime) -> str:
    """The file name of one run; the series label is made safe for a file name (a `/` in it
    must not put the file elsewhere)."""
    label = UNSAFE.sub("_", series) if series else "series"
    try:
        name = template.format(node=UNSAFE.sub("_", node), series=label, run=run,
                               run_id=f"{run_id:016x}", date=now.strftime("%Y%m%d"),
                               time=now.strftime("%H%M%S"))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ConfigError(f"file_template {template!r}: {exc}") from None
    path = PurePosixPath(name)
    if not name.strip() or name.endswith("/") or path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"file_template {template!r} gives {name!r}, which is not a file "
                          "name inside `directory`")
    return name
