"""The control API's shared secret: where the server and `stream-node ctl` read it from.

A token in a file others can read is no secret, so such a file is refused rather than used.
Kept apart from the server so that the client reads it without loading Flask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from stream_node.model.errors import ConfigError

ENV = "STREAM_NODE_TOKEN"


def load_token(path: str | os.PathLike[str] | None,
               environ: Mapping[str, str] | None = None) -> str | None:
    """The token in `path` (its first line), else env STREAM_NODE_TOKEN, else None (open)."""
    if path is None:
        token = (os.environ if environ is None else environ).get(ENV, "").strip()
        return token or None
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"token file {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"token file {file}: not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file {file} is readable by others (mode "
                          f"{stat.S_IMODE(mode):03o}): chmod 600 {file}")
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"token file {file} is empty: put the token on its first line")
    return lines[0].strip()
