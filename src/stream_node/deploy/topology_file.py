"""Reading a topology file: every problem of a file reported at once, each with its line.

tomllib keeps no positions, so `Lines` finds them by scanning the text for table headers and
keys.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stream_node.deploy.settings import (
    ENDPOINTS,
    IDENTITY,
    Setting,
    builtin,
    environment,
    from_text,
    problem,
    role_options,
    run_wide,
)
from stream_node.model.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


from stream_node.deploy.findings import Findings, Lines, suggest
from stream_node.deploy.topology import (
    GLOBAL_ENV,
    ROLE_OF,
    STAGE_KEYS,
    Node,
    Problem,
    Stage,
    Topology,
    TopologyError,
)
from stream_node.deploy.topology_links import LinkCheck


class _Loader:
    """Builds a Topology from the parsed file, collecting every problem on the way."""

    def __init__(self, path: Path, text: str, roles: Mapping[str, argparse.ArgumentParser],
                 env: Mapping[str, str], sets: Sequence[str]) -> None:
        self.path = path
        self.found = Findings(Lines(text))
        self.line, self.fail = self.found.line, self.found.fail
        self.roles = roles
        self.options = {role: role_options(p) for role, p in roles.items()}
        self.env = environment(env)
        self.sets = sets

    # -- values --------------------------------------------------------------------------

    def check_value(self, role: str, key: str, value: Any, line: int, where: str) -> bool:
        """Is `value` valid for the role's flag `key`? The flag's own parser decides."""
        if key == "kernels":
            return self.check_kernels(value, line, where)
        wrong = problem(key, self.options[role][key], value)
        if wrong is not None:
            self.fail(line, f"{where}: {wrong}")
        return wrong is None

    def check_kernels(self, value: Any, line: int, where: str) -> bool:
        if isinstance(value, str):
            return True  # a JSON file, read where the source runs
        if isinstance(value, list) and all(
                isinstance(k, dict) and isinstance(k.get("kernel"), str) for k in value):
            return True
        self.fail(line, f'{where}: kernels is a list of tables each with a "kernel" name, '
                        'e.g. [{kernel = "bin2x2"}], or the path of a JSON chain')
        return False

    # -- structure -----------------------------------------------------------------------

    def load(self, data: dict) -> Topology:
        for key in data:
            if key not in ("name", "defaults", "nodes"):
                self.fail(self.line(key), f"unknown key {key!r} at the top level"
                                          + suggest(key, ("name", "defaults", "nodes")))
        name = data.get("name", self.path.stem)
        if not isinstance(name, str) or not name:
            self.fail(self.line("name"), "name is the run's name, a non-empty string")
            name = self.path.stem
        defaults = self.defaults(data.get("defaults", {}))
        nodes = {}
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, dict) or not raw_nodes:
            self.fail(self.line("nodes"), "no [nodes.NAME] table: a topology needs at least "
                                          "one node with a source, workers and a collector")
            raw_nodes = {}
        for node_name, raw in raw_nodes.items():
            node = self.node(node_name, raw, defaults)
            if node is not None:
                nodes[node_name] = node
        self.apply_sets(nodes)
        self.unknown_environment()
        topo = Topology(self.path, name, nodes, None, self.roles)
        LinkCheck(self.found).links(topo)
        return topo

    def defaults(self, raw: Any) -> dict[str, Setting]:
        if not isinstance(raw, dict):
            self.fail(self.line("defaults"), "[defaults] is a table of role settings")
            return {}
        out = {}
        for key, value in raw.items():
            line = self.line("defaults", key)
            roles = [r for r, opts in self.options.items() if key in opts]
            if not roles or not run_wide(key):
                known = {k for opts in self.options.values() for k in opts} - ENDPOINTS - IDENTITY
                why = "an endpoint belongs to its stage" if key in ENDPOINTS else "not a setting"
                self.fail(line, f"[defaults]: unknown key {key!r} ({why}){suggest(key, known)}")
                continue
            if self.check_value(roles[0], key, value, line, "[defaults]"):
                out[key] = Setting(value, f"file line {line}")
        return out

    def node(self, name: str, raw: Any, defaults: dict[str, Setting]) -> Node | None:
        line = self.line("nodes", name)
        if not isinstance(raw, dict):
            self.fail(line, f"nodes.{name} is a table: [nodes.{name}] with host = ...")
            return None
        known = ("host", *ROLE_OF)
        for key in raw:
            if key not in known:
                self.fail(self.line("nodes", name, key), f"[nodes.{name}]: unknown key {key!r}"
                          f"{suggest(key, known)}; a node has host, source, workers, collector,"
                          " view")
        host = raw.get("host")
        if not isinstance(host, str) or not host:
            self.fail(line, f"[nodes.{name}]: host = \"ADDRESS\" is missing (the address the "
                            "other nodes reach it at)")
            host = ""
        node = Node(name, host, line)
        for kind in ROLE_OF:
            if kind in raw:
                stage = self.stage(node, kind, raw[kind], defaults)
                if stage is not None:
                    node.stages[kind] = stage
        if not any(k in raw for k in ROLE_OF):
            self.fail(line, f"[nodes.{name}]: no stage (source, workers, collector or view)")
        return node

    def stage(self, node: Node, kind: str, raw: Any, defaults: dict[str, Setting]) -> Stage | None:
        path = ("nodes", node.name, kind)
        where = f"[{'.'.join(path)}]"
        if not isinstance(raw, dict):
            self.fail(self.line(*path), f"{where} is a table")
            return None
        role = ROLE_OF[kind]
        options = self.options[role]
        stage = Stage(node.name, kind, self.line(*path))
        stage.settings.update(builtin(options))
        for key, setting in defaults.items():
            if key in options:
                stage.settings[key] = setting
        extra = STAGE_KEYS.get(kind, set())
        for key, value in raw.items():
            line = self.line(*path, key)
            if key in extra:
                self.stage_key(stage, key, value, line, where)
            elif key in IDENTITY and role == "worker":
                self.fail(line, f"{where}: {key} is set per worker process "
                                f"({node.name}-w0, {node.name}-w1, ...), not in the file")
            elif key not in options:
                self.fail(line, f"{where}: unknown key {key!r}"
                                f"{suggest(key, [*options, *extra])}")
            elif self.check_value(role, key, value, line, where):
                stage.settings[key] = Setting(value, f"file line {line}")
        for key, (text, origin) in self.env.items():
            if key in options and run_wide(key):
                self.override(stage, key, text, origin)
        return stage

    def stage_key(self, stage: Stage, key: str, value: Any, line: int, where: str) -> None:
        if key == "count":
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                stage.count = value
            else:
                self.fail(line, f"{where}: count = {value!r}: a positive number of workers")
        elif key == "kernels" and self.check_kernels(value, line, where):
            stage.settings["kernels"] = Setting(value, f"file line {line}")
        elif key == "input":  # the view's tap; checked with the other endpoints
            stage.settings["input"] = Setting(value, f"file line {line}")

    def override(self, stage: Stage, key: str, text: str, origin: str) -> None:
        where = f"{origin} ({stage.node} {stage.kind})"
        try:
            value = from_text(self.options[stage.role][key], text)
        except ValueError as exc:
            self.fail(0, f"{where}: {exc}")
            return
        if self.check_value(stage.role, key, value, 0, where):
            stage.settings[key] = Setting(value, origin)

    def unknown_environment(self) -> None:
        """A STREAM_NODE_ variable that sets nothing is a typo that would pass silently."""
        known = {k for opts in self.options.values() for k in opts if run_wide(k)}
        for key, (_, origin) in self.env.items():
            if key not in known and key not in GLOBAL_ENV:
                why = " (an endpoint is set per stage, in the file or with --set ROLE.KEY=)" \
                    if key in ENDPOINTS else suggest(key, known)
                self.fail(0, f"{origin}: no such setting{why}")

    def apply_sets(self, nodes: dict[str, Node]) -> None:
        """`--set [ROLE.]KEY=VALUE`, the command line's overrides: the last word."""
        for item in self.sets:
            target, sep, text = item.partition("=")
            role, dot, key = target.strip().rpartition(".")
            role = ROLE_OF.get(role, role)
            if not sep or not key or (dot and role not in self.options):
                self.fail(0, f"--set {item!r}: expected [source.|worker.|collector.|view.]"
                             "KEY=VALUE")
                continue
            roles = [role] if dot else [r for r, o in self.options.items() if key in o]
            if not roles or key not in self.options[roles[0]] or key in IDENTITY or (
                    not dot and key in ENDPOINTS):
                known = {k for r in roles or self.options for k in self.options[r]}
                hint = " (an endpoint needs its role: --set worker.input=...)" \
                    if key in ENDPOINTS else suggest(key, known - IDENTITY)
                self.fail(0, f"--set {item!r}: no such setting{hint}")
                continue
            for node in nodes.values():
                for stage in node.stages.values():
                    if stage.role in roles:
                        self.override(stage, key, text, f"--set {item}")


def load(path: Path | str, roles: Mapping[str, argparse.ArgumentParser],
         env: Mapping[str, str] | None = None, sets: Sequence[str] = ()) -> Topology:
    """Read and check a topology; raises TopologyError listing every problem at once.

    `roles` are the role commands' parsers (`stream-node source` ...): their flags are the
    keys a stage takes, and their type checks validate the values (`stream-node view`'s for
    a view stage).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read topology {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8 whatever the locale says
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TopologyError(path, [Problem(line, (
            f"not UTF-8 text: byte {raw[exc.start]:#04x} at column {column} "
            "(TOML files are UTF-8: save the file as UTF-8)"))]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"at line (\d+)", str(exc))
        raise TopologyError(path, [Problem(int(where[1]) if where else 1,
                                           f"not valid TOML: {exc}")]) from None
    loader = _Loader(path, text, roles, os.environ if env is None else env, sets)
    topo = loader.load(data)
    if loader.found.problems:
        raise TopologyError(path, loader.found.problems)
    return topo
