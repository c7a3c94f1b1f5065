"""Where each setting comes from: built-in default < file < environment < command line.

The role commands' flags are the settings (`--ready-timeout` is `ready_timeout`, in a topology
file, as `STREAM_NODE_READY_TIMEOUT` in the environment, or `--set ready_timeout=5`), so there
is one list of settings, one type check per setting (the flag's own), and one default (the
flag's). Every value keeps its origin, which `stream-node config show` prints beside it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "STREAM_NODE_"
IDENTITY = {"name", "index"}  # one worker process's own: never run-wide
# Where a stage's frames enter or leave, and what it serves (status, metrics, live tap): a
# stage's own, never run-wide (not in [defaults], the environment or an unscoped --set).
ENDPOINTS = {"control", "data", "input", "output", "file", "status", "tap", "metrics_port"}


@dataclass(frozen=True)
class Setting:
    value: Any  # as the file, environment or command line gave it
    origin: str  # "default", "file line N", "env STREAM_NODE_X", "--set K=V" or "topology (...)"


def role_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A role command's flags by setting name: `--ready-timeout` is `ready_timeout`."""
    options = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                options[opt[2:].replace("-", "_")] = action
    return options


def run_wide(key: str) -> bool:
    """May the setting apply to every stage that has it (environment, [defaults])?"""
    return key not in ENDPOINTS | IDENTITY


def builtin(options: Mapping[str, argparse.Action]) -> dict[str, Setting]:
    return {key: Setting(action.default, "default") for key, action in options.items()
            if action.default not in (None, argparse.SUPPRESS) and not action.required
            and key not in IDENTITY}


def environment(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`STREAM_NODE_READY_TIMEOUT=5` -> {"ready_timeout": ("5", "env STREAM_NODE_...")}."""
    return {name[len(ENV_PREFIX):].lower(): (value, f"env {name}")
            for name, value in env.items() if name.startswith(ENV_PREFIX)}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def as_text(value: Any) -> str:
    if isinstance(value, list):  # a shape: [512, 1024]
        return "x".join(str(v) for v in value)
    return str(value)


def _many(action: argparse.Action, value: Any) -> list:
    return value if isinstance(value, list) and isinstance(action, argparse._AppendAction) \
        else [value]


def problem(key: str, action: argparse.Action, value: Any) -> str | None:
    """What is wrong with `value` for the flag `key`, checked by the flag's own parser."""
    if action.nargs == 0:
        return None if isinstance(value, bool) else f"{key} is true or false, not {value!r}"
    for v in _many(action, value):
        if isinstance(v, bool | dict) or (isinstance(v, list) and key != "shape"):
            return f"{key} = {v!r} is not a {'shape' if key == 'shape' else 'single value'}"
        try:
            converted = action.type(as_text(v)) if callable(action.type) else as_text(v)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            return f"{key} = {v!r}: {str(exc) or 'invalid value'}"
        if action.choices is not None and converted not in action.choices:
            return f"{key} = {v!r}: choose from {', '.join(map(str, action.choices))}"
    return None


def from_text(action: argparse.Action, text: str) -> Any:
    """A value given as text (environment, --set) as the file would give it."""
    return parse_bool(text) if action.nargs == 0 else text


def to_argv(action: argparse.Action, value: Any) -> list[str]:
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if action.nargs == 0:
        return [flag] if value else []
    return [text for v in _many(action, value) for text in (flag, as_text(v))]


def env_defaults(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> list[str]:
    """Make a role command take its settings from the environment (above its built-in
    defaults, below its flags); returns what was wrong, one line per variable."""
    options = role_options(parser)
    errors = []
    for key, (text, origin) in environment(env).items():
        action = options.get(key)
        if action is None or action.required or not run_wide(key):
            continue
        try:
            value = from_text(action, text)
        except ValueError as exc:
            errors.append(f"{origin}: {exc}")
            continue
        if (wrong := problem(key, action, value)) is not None:
            errors.append(f"{origin}: {wrong}")
            continue
        converted = value if action.nargs == 0 or not callable(action.type) \
            else action.type(as_text(value))
        parser.set_defaults(**{action.dest: converted})
    return errors


def render(sections: list[tuple[str, dict[str, Setting], list[str]]], as_json: bool) -> str:
    """`config show`: per section (a TOML table name), each setting with where it came
    from, then the commands it runs."""
    if as_json:
        return json.dumps({name: {"settings": {k: {"value": s.value, "from": s.origin}
                                               for k, s in settings.items()},
                                  "commands": commands}
                           for name, settings, commands in sections}, indent=1, default=str)
    out = ["# precedence: built-in default < file < environment (STREAM_NODE_KEY) < --set"]
    for name, settings, commands in sections:
        out.append(f"\n[{name}]")
        width = max((len(k) + len(_toml(s.value)) for k, s in settings.items()), default=0)
        for key, setting in sorted(settings.items()):
            pair = f"{key} = {_toml(setting.value)}"
            out.append(f"{pair:<{width + 3}}  # {setting.origin}")
        out += [f"# command: {command}" for command in commands]
    return "\n".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)
