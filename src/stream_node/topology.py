"""A run across hosts in one TOML file: which node runs which stage, with which settings.

A stage table speaks its role command's own flags (`frames`, `ready_timeout`, `drain_timeout`:
the `stream-node ROLE` flag with `_` for `-`), so a topology run is exactly the commands a user
could type, and a flag a role gains is a topology key at once. Each setting resolves as
built-in default < file < environment (`STREAM_NODE_KEY`) < `--set [ROLE.]KEY=VALUE`, and
remembers where it came from (`stream-node config show`).

A `view` stage is `stream-node view` (a live picture of the collector's tap): auxiliary, it
never holds the run, and its `input` (the command's one positional argument) is the tap.

`load()` reports every problem of a file at once, each with its line: tomllib keeps no
positions, so `Lines` finds them by scanning the text for table headers and keys.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import string
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_node.config import (
    ENDPOINTS,
    IDENTITY,
    Setting,
    builtin,
    environment,
    from_text,
    problem,
    role_options,
    run_wide,
    to_argv,
)
from stream_node.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROLE_OF = {"source": "source", "workers": "worker", "collector": "collector", "view": "view"}
STAGE_KEYS = {"workers": {"count", "kernels"}, "view": {"input"}}  # beyond the role's flags
AUXILIARY = {"view"}  # stages that only watch the run: they never hold it
GLOBAL_ENV = {"log_level"}  # read by the command line itself, not a stage setting
PLACEHOLDERS = {"run", "node", "host", "date", "time"}
WILDCARDS = {"*", "0.0.0.0", "::", ""}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TCP = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/\[\]]*):(?P<port>[^:/]+)$")
RING_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
SERVED = ("status", "tap", "metrics_port")  # what a stage binds besides its data path


def nth_bind(value: Any, i: int) -> Any:
    """What worker i of a group binds for a served endpoint: port + i, or the ipc path + .i."""
    if isinstance(value, int):
        return value + i
    if str(value).startswith("tcp://"):
        head, _, port = str(value).rpartition(":")
        return f"{head}:{int(port) + i}"
    return f"{value}.{i}" if i else value


@dataclass(frozen=True, order=True)
class Problem:
    line: int  # 0: not in the file (environment, command line)
    message: str


class TopologyError(ConfigError):
    """Every problem of a topology, each as `FILE:LINE: message`."""

    def __init__(self, path: Path, problems: Iterable[Problem]) -> None:
        self.path = path
        self.problems = sorted(set(problems))
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.path}:{p.line}: {p.message}" if p.line else f"{self.path}: {p.message}"
                for p in self.problems]


@dataclass
class Stage:
    node: str
    kind: str  # "source", "workers", "collector" or "view"
    line: int
    settings: dict[str, Setting] = field(default_factory=dict)
    count: int = 1

    @property
    def role(self) -> str:
        return ROLE_OF[self.kind]

    def get(self, key: str, default: Any = None) -> Any:
        setting = self.settings.get(key)
        return default if setting is None else setting.value


@dataclass
class Node:
    name: str
    host: str
    line: int
    stages: dict[str, Stage] = field(default_factory=dict)


@dataclass
class Command:
    """One process of a node: its role, a label for its log lines, and its arguments."""

    label: str
    role: str
    args: list[str]
    output: Path | None = None  # a file it writes: its directory is made before it starts
    auxiliary: bool = False  # only watches the run: ended when the host's other stages are


@dataclass
class Topology:
    path: Path
    name: str
    nodes: dict[str, Node]
    kernels: list[dict] | None  # the workers' chain, given to the source (START carries it)
    roles: Mapping[str, argparse.ArgumentParser]

    def stages(self, kind: str) -> list[Stage]:
        return [n.stages[kind] for n in self.nodes.values() if kind in n.stages]

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise ConfigError(f"{self.path}: no node {name!r}; the nodes are "
                              f"{', '.join(self.nodes)}")
        return self.nodes[name]

    def commands(self, node: str, kernels_file: str | None = None) -> list[Command]:
        """The processes of `node`: a viewer first (it binds nothing, and it can subscribe
        before frames flow), then the collector (it binds what the workers connect to);
        `kernels_file` is where the caller wrote the chain (`write_kernels`)."""
        order = {"view": 0, "collector": 1, "workers": 2, "source": 3}
        out = []
        for stage in sorted(self.node(node).stages.values(), key=lambda s: order[s.kind]):
            if stage.kind == "workers":
                first = self._first_worker_index(stage)
                for i in range(stage.count):
                    own = {"name": Setting(f"{node}-w{i}", "topology"),
                           "index": Setting(first + i, "topology")}
                    own.update({key: Setting(nth_bind(setting.value, i), setting.origin)
                                for key, setting in stage.settings.items() if key in SERVED})
                    out.append(Command(f"{node}/{node}-w{i}", "worker",
                                       self._args(stage, {**stage.settings, **own})))
                continue
            settings = dict(stage.settings)
            if stage.kind == "source" and self.kernels:
                settings["kernels"] = Setting(kernels_file or "KERNELS.json", "topology")
            output = None
            if stage.kind == "collector":
                output = Path(self.expand(stage))
                settings["file"] = Setting(str(output), settings["file"].origin)
            elif stage.kind == "view" and stage.get("png") is not None:
                output = Path(stage.get("png"))
            out.append(Command(f"{node}/{stage.kind}", stage.role, self._args(stage, settings),
                               output, stage.kind in AUXILIARY))
        return out

    def expand(self, collector: Stage) -> str:
        """The collector's file name with {run}, {node}, {host}, {date}, {time} filled in."""
        now = time.localtime()
        return str(collector.get("file")).format(
            run=self.name, node=collector.node, host=self.nodes[collector.node].host,
            date=time.strftime("%Y%m%d", now), time=time.strftime("%H%M%S", now))

    def write_kernels(self, directory: Path) -> str | None:
        """Write the inline chain where the source's `--kernels` flag can read it."""
        if not self.kernels:
            return None
        path = directory / f"{self.name}-kernels.json"
        path.write_text(json.dumps(self.kernels, indent=1))
        return str(path)

    def _first_worker_index(self, stage: Stage) -> int:
        before = 0
        for other in self.stages("workers"):
            if other is stage:
                return before
            before += other.count
        raise AssertionError("stage not in topology")

    def _args(self, stage: Stage, settings: Mapping[str, Setting]) -> list[str]:
        options = role_options(self.roles[stage.role])
        args = [stage.role]
        if stage.kind == "view":  # the tap is the command's positional argument
            args.append(str(stage.get("input")))
        for key, setting in settings.items():
            if key in STAGE_KEYS.get(stage.kind, ()):
                continue
            if setting.origin != "default":  # the role has the same default
                args += to_argv(options[key], setting.value)
        return args


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


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # tcp, ipc, ring
    host: str  # tcp only
    port: int  # tcp only
    path: str  # ipc path or ring name


def parse_endpoint(text: str, schemes: Sequence[str], binds: bool) -> Endpoint:
    """Raises ValueError saying what is wrong with `text` as a `schemes` endpoint."""
    scheme, sep, rest = str(text).partition("://")
    expect = " or ".join(f"{s}://" + {"tcp": "HOST:PORT", "ipc": "PATH", "ring": "NAME"}[s]
                         for s in schemes)
    if not sep or scheme not in schemes:
        raise ValueError(f"{text!r} is not an endpoint here: expected {expect}")
    if scheme == "tcp":
        match = TCP.match(str(text))
        if not match or not match["port"].isdigit() or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{text!r}: expected tcp://HOST:PORT with a port 1-65535")
        host = match["host"].strip("[]")
        if host in WILDCARDS and not binds:
            raise ValueError(f"{text!r}: a connecting endpoint needs a host, not {host or '*'!r}")
        return Endpoint("tcp", host, int(match["port"]), "")
    if scheme == "ring" and not RING_NAME.match(rest):
        raise ValueError(f"{text!r}: a ring name is letters, digits, '.', '_', '-'")
    if not rest:
        raise ValueError(f"{text!r}: the {scheme}:// endpoint has no path")
    return Endpoint(scheme, "", 0, rest)


# Per role and endpoint flag: the schemes it takes and whether the stage binds it.
ENDPOINT_FLAGS = {
    ("source", "control"): (("tcp", "ipc"), True),
    ("source", "data"): (("tcp", "ipc", "ring"), True),
    ("worker", "control"): (("tcp", "ipc"), False),
    ("worker", "input"): (("tcp", "ipc", "ring"), False),
    ("worker", "output"): (("tcp", "ipc"), False),
    ("collector", "control"): (("tcp", "ipc"), False),
    ("collector", "input"): (("tcp", "ipc"), True),
    **{(role, "status"): (("tcp", "ipc"), True) for role in ("source", "worker", "collector")},
    ("collector", "tap"): (("tcp", "ipc"), True),
    ("view", "input"): (("tcp", "ipc"), False),
}


def connect_address(endpoint: str, host: str) -> str:
    """Where a peer connects to reach `endpoint` bound on `host` (`*` becomes the host)."""
    ep = parse_endpoint(endpoint, ("tcp", "ipc", "ring"), True)
    if ep.scheme == "tcp" and ep.host in WILDCARDS:
        return f"tcp://{host}:{ep.port}"
    return endpoint


def reaches(endpoint: str, from_host: str, bound: str, bound_host: str) -> bool:
    """Does connecting to `endpoint` from `from_host` reach `bound`, bound on `bound_host`?"""
    try:
        a = parse_endpoint(endpoint, ("tcp", "ipc", "ring"), False)
        b = parse_endpoint(bound, ("tcp", "ipc", "ring"), True)
    except ValueError:
        return False
    if a.scheme != b.scheme:
        return False
    if a.scheme != "tcp":  # ipc paths and ring names exist on one host only
        return a.path == b.path and from_host == bound_host
    if a.port != b.port:
        return False
    if a.host in LOOPBACK:
        return from_host == bound_host and (b.host in WILDCARDS or b.host in LOOPBACK)
    return a.host == b.host or (b.host in WILDCARDS and a.host == bound_host)


def why_unreached(endpoint: str, host: str, bound: str, bound_host: str) -> str:
    """A hint for an endpoint that does not reach what is bound, when the reason is clear."""
    if host != bound_host and not endpoint.startswith("tcp"):
        return "; ring:// and ipc:// work within one host, tcp:// between hosts"
    if host != bound_host and any(f"//{a}:" in bound for a in LOOPBACK):
        return "; it binds loopback only: bind * or an address others reach"
    return ""


class _Loader:
    """Builds a Topology from the parsed file, collecting every problem on the way."""

    def __init__(self, path: Path, text: str, roles: Mapping[str, argparse.ArgumentParser],
                 env: Mapping[str, str], sets: Sequence[str]) -> None:
        self.path = path
        self.line = Lines(text)
        self.roles = roles
        self.options = {role: role_options(p) for role, p in roles.items()}
        self.env = environment(env)
        self.sets = sets
        self.problems: list[Problem] = []
        self.bad: set[tuple[str, str, str]] = set()  # (node, stage, key) of unusable endpoints

    def fail(self, line: int, message: str) -> None:
        self.problems.append(Problem(line, message))

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
                                          + _suggest(key, ("name", "defaults", "nodes")))
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
        self.links(topo)
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
                self.fail(line, f"[defaults]: unknown key {key!r} ({why}){_suggest(key, known)}")
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
                          f"{_suggest(key, known)}; a node has host, source, workers, collector,"
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
                                f"{_suggest(key, [*options, *extra])}")
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
                    if key in ENDPOINTS else _suggest(key, known)
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
                    if key in ENDPOINTS else _suggest(key, known - IDENTITY)
                self.fail(0, f"--set {item!r}: no such setting{hint}")
                continue
            for node in nodes.values():
                for stage in node.stages.values():
                    if stage.role in roles:
                        self.override(stage, key, text, f"--set {item}")

    # -- links between stages ------------------------------------------------------------

    def links(self, topo: Topology) -> None:
        """Every stage has its input, every endpoint is reachable, no port is bound twice."""
        for kind in ("source", "collector"):
            found = topo.stages(kind)
            if len(found) != 1:
                where = [f"{s.node} (line {s.line})" for s in found] or ["none"]
                self.fail(found[1].line if len(found) > 1 else 1,
                          f"a topology is one run: exactly one {kind} ({', '.join(where)})")
        if not topo.stages("workers"):
            self.fail(1, "no [nodes.NAME.workers]: frames go from the source to workers")
        for node in topo.nodes.values():
            for stage in node.stages.values():
                self.endpoints(node, stage)
        self.binds(topo)
        for collector in topo.stages("collector"):
            self.file_pattern(collector)
        sources, collectors = topo.stages("source"), topo.stages("collector")
        if len(sources) == 1:
            self.kernels(topo, sources[0])
            if len(collectors) == 1:
                self.derive(topo, sources[0], collectors[0])
        if len(collectors) == 1:
            for view in topo.stages("view"):
                self.view_input(topo, view, collectors[0])

    def view_input(self, topo: Topology, view: Stage, collector: Stage) -> None:
        """A viewer reads the collector's tap: its `input` defaults to it and must reach it."""
        where = f"[nodes.{view.node}.view]"
        tap = collector.get("tap")
        if tap is None:
            self.fail(view.line, f"{where}: the collector has no tap to read: give "
                                 f"[nodes.{collector.node}.collector] tap = \"tcp://*:5560\"")
            return
        if {(view.node, "view", "input"), (collector.node, "collector", "tap")} & self.bad:
            return
        tap_host, host = topo.nodes[collector.node].host, topo.nodes[view.node].host
        given = view.settings.setdefault(
            "input", Setting(connect_address(tap, tap_host), "topology (the collector's tap)"))
        if not reaches(given.value, host, tap, tap_host):
            line = self.line("nodes", view.node, "view", "input") \
                if given.origin.startswith("file") else view.line
            self.fail(line, f"{where}: input {given.value!r} (from {given.origin}) does not "
                            f"reach the collector's tap, {tap!r} on host {tap_host}, from host "
                            f"{host}" + why_unreached(str(given.value), host, tap, tap_host))

    def endpoints(self, node: Node, stage: Stage) -> None:
        """Each endpoint flag of the stage has its scheme and form; the others are noted in
        `bad`, so the checks of links between stages skip them (reported once)."""
        for key in ("control", "data", "input", "output", "status", "tap"):
            spec = ENDPOINT_FLAGS.get((stage.role, key))
            setting = stage.settings.get(key)
            if spec is None or setting is None:
                continue
            values = setting.value if isinstance(setting.value, list) else [setting.value]
            for value in values:
                try:
                    parse_endpoint(value, *spec)
                except ValueError as exc:
                    self.bad.add((node.name, stage.kind, key))
                    self.fail(self.line("nodes", node.name, stage.kind, key),
                              f"[nodes.{node.name}.{stage.kind}]: {key}: {exc}")
        if stage.kind == "source":
            self.origin(node, stage)
        required = {"source": ("control", "data"), "collector": ("input", "file")}
        for key in required.get(stage.kind, ()):
            if key not in stage.settings:
                self.bad.add((node.name, stage.kind, key))
                self.fail(stage.line, f"[nodes.{node.name}.{stage.kind}]: {key} is missing")

    def origin(self, node: Node, stage: Stage) -> None:
        from stream_node.origins import ORIGINS, PLUGINS

        value = str(stage.get("from", "synthetic:"))
        scheme, sep, _ = value.partition("://")
        if not sep:
            scheme, sep, _ = value.partition(":")
        scheme = scheme.split("+", 1)[0]
        known = {*ORIGINS, *PLUGINS}
        if not sep or scheme not in known:
            names = ", ".join(sorted(
                "synthetic:" if s == "synthetic" else f"{s}+tcp://"
                if PLUGINS.get(s) == "stream_node.protocols" else f"{s}://" for s in known))
            self.fail(self.line("nodes", node.name, "source", "from"),
                      f"[nodes.{node.name}.source]: from = {value!r}: unknown origin; use one "
                      f"of {names}")

    def derive(self, topo: Topology, source: Stage, collector: Stage) -> None:
        """Fill in the endpoints a stage leaves out from the stage it talks to, and check
        that the ones it gives (or gets) reach that stage."""
        src_host = topo.nodes[source.node].host
        col_host = topo.nodes[collector.node].host
        peers = {"control": (source, "control", src_host, "the source's control"),
                 "input": (source, "data", src_host, "the source's data"),
                 "output": (collector, "input", col_host, "the collector's input")}
        feeding = 0
        linked = {"input": 0, "output": 0}  # workers whose input / output reach their peer
        for stage in [*topo.stages("workers"), collector]:
            host = topo.nodes[stage.node].host
            for key in ("control", "input", "output") if stage.kind == "workers" else ("control",):
                peer, peer_key, bound_host, what = peers[key]
                bound = peer.get(peer_key)
                if {(peer.node, peer.kind, peer_key), (stage.node, stage.kind, key)} & self.bad:
                    continue
                given = stage.settings.get(key)
                if given is None:
                    given = Setting(connect_address(bound, bound_host), f"topology ({what})")
                    stage.settings[key] = given
                line = self.line("nodes", stage.node, stage.kind, key) \
                    if given.origin.startswith("file") else stage.line
                values = given.value if isinstance(given.value, list) else [given.value]
                if key in linked and all(reaches(v, host, bound, bound_host) for v in values):
                    linked[key] += stage.count
                for value in values:
                    if not reaches(value, host, bound, bound_host):
                        self.fail(line, f"[nodes.{stage.node}.{stage.kind}]: {key} {value!r} "
                                        f"(from {given.origin}) does not reach {what}, "
                                        f"{bound!r} on host {bound_host}, from host {host}"
                                        + why_unreached(value, host, bound, bound_host))
            if stage.kind == "workers":
                feeding += stage.count
        ends = {"input": (source, "data", "no worker reads the source's data"),
                "output": (collector, "input", "nobody sends to the collector's input")}
        for key, (stage, stage_key, what) in ends.items():
            if feeding and not linked[key] and (stage.node, stage.kind, stage_key) not in self.bad:
                self.fail(self.line("nodes", stage.node, stage.kind, stage_key),
                          f"[nodes.{stage.node}.{stage.kind}]: {what} {stage.get(stage_key)!r}")
        expected = source.settings.get("workers")
        if expected is not None and expected.origin != "default" \
                and int(expected.value) != feeding:
            line = self.line("nodes", source.node, "source", "workers")
            self.fail(line if expected.origin.startswith("file") else 0,
                      f"[nodes.{source.node}.source]: workers = {expected.value} "
                      f"({expected.origin}), but the topology has {feeding} workers")
        elif feeding:
            source.settings["workers"] = Setting(feeding, "topology (workers counted)")

    def kernels(self, topo: Topology, source: Stage) -> None:
        chains = [(s, s.settings.pop("kernels")) for s in topo.stages("workers")
                  if "kernels" in s.settings]
        if source.get("kernels") is not None:
            chains.append((source, source.settings["kernels"]))
        distinct = {json.dumps(c.value, sort_keys=True) for _, c in chains}
        if len(distinct) > 1:
            for stage, _ in chains:
                self.fail(self.line("nodes", stage.node, stage.kind, "kernels"),
                          f"[nodes.{stage.node}.{stage.kind}]: every worker runs the same "
                          "kernel chain (the source sends it in START); these differ")
            return
        if chains and isinstance(chains[0][1].value, list):
            topo.kernels = chains[0][1].value
            source.settings.pop("kernels", None)
        elif chains:
            source.settings["kernels"] = chains[0][1]

    def binds(self, topo: Topology) -> None:
        """Two stages binding one host's port (or ipc path) cannot both start."""
        taken: dict[tuple, tuple[str, int]] = {}
        for node in topo.nodes.values():
            for stage in node.stages.values():
                for key, value, line in self.bound_by(stage):
                    what = f"[nodes.{node.name}.{stage.kind}] {key}"
                    if isinstance(value, int):  # metrics_port: every address of the host
                        ep = Endpoint("tcp", "*", value, "")
                    else:
                        ep = parse_endpoint(value, ("tcp", "ipc", "ring"), True)
                    mine = (node.host, ep.scheme, ep.port or ep.path, ep.host)
                    for other in taken:
                        if other[:3] == mine[:3] and (ep.scheme != "tcp" or other[3] == ep.host
                                                      or WILDCARDS & {other[3], ep.host}):
                            by, other_line = taken[other]
                            thing = f"port {ep.port}" if ep.scheme == "tcp" else \
                                f"{ep.scheme}://{ep.path}"
                            self.fail(line, f"{what} = {value!r}: {thing} on host {node.host} "
                                            f"is already bound by {by} (line {other_line})")
                    taken.setdefault(mine, (what, line))

    def bound_by(self, stage: Stage) -> list[tuple[str, Any, int]]:
        """(key, what it binds, line) of every endpoint the stage's processes bind."""
        keys = {"source": ("control", "data"), "collector": ("input",)}.get(stage.kind, ())
        out = []
        for key in (*keys, *SERVED):
            if stage.get(key) is None or (stage.node, stage.kind, key) in self.bad:
                continue
            line = self.line("nodes", stage.node, stage.kind, key)
            for i in range(stage.count):
                out.append((key, nth_bind(stage.get(key), i), line))
        return out

    def file_pattern(self, collector: Stage) -> None:
        line = self.line("nodes", collector.node, "collector", "file")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(str(collector.get("file")))
                      if f is not None}
        except ValueError as exc:
            self.fail(line, f"[nodes.{collector.node}.collector]: file: {exc}")
            return
        known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
        for name in sorted(fields - PLACEHOLDERS):
            self.fail(line, f"[nodes.{collector.node}.collector]: file: unknown placeholder "
                            f"{{{name}}}; use {known}")


def load(path: Path | str, roles: Mapping[str, argparse.ArgumentParser],
         env: Mapping[str, str] | None = None, sets: Sequence[str] = ()) -> Topology:
    """Read and check a topology; raises TopologyError listing every problem at once.

    `roles` are the role commands' parsers (`stream-node source` ...): their flags are the
    keys a stage takes, and their type checks validate the values (`stream-node view`'s for
    a view stage).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read topology {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"at line (\d+)", str(exc))
        raise TopologyError(path, [Problem(int(where[1]) if where else 1,
                                           f"not valid TOML: {exc}")]) from None
    loader = _Loader(path, text, roles, os.environ if env is None else env, sets)
    topo = loader.load(data)
    if loader.problems:
        raise TopologyError(path, loader.problems)
    return topo
