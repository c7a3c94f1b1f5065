"""A run across hosts in one TOML file: which node runs which stage, with which settings.

A stage table speaks its role command's own flags (`frames`, `ready_timeout`, `drain_timeout`:
the `stream-node ROLE` flag with `_` for `-`), so a topology run is exactly the commands a user
could type, and a flag a role gains is a topology key at once. Each setting resolves as
built-in default < file < environment (`STREAM_NODE_KEY`) < `--set [ROLE.]KEY=VALUE`, and
remembers where it came from (`stream-node config show`).

A `view` stage is `stream-node view` (a live picture of the collector's tap): auxiliary, it
never holds the run, and its `input` (the command's one positional argument) is the tap.

The model of a loaded topology lives here; `deploy.topology_file.load` reads and checks a file,
`deploy.topology_links` checks how its stages reach each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_node.deploy.addresses import nth_bind
from stream_node.deploy.settings import (
    Setting,
    role_options,
    to_argv,
)
from stream_node.model.errors import ConfigError

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

ROLE_OF = {"source": "source", "workers": "worker", "collector": "collector", "view": "view"}
STAGE_KEYS = {"workers": {"count", "kernels"}, "view": {"input"}}  # beyond the role's flags
AUXILIARY = {"view"}  # stages that only watch the run: they never hold it
GLOBAL_ENV = {"log_level"}  # read by the command line itself, not a stage setting
PLACEHOLDERS = {"run", "node", "host", "date", "time"}
SERVED = ("status", "tap", "metrics_port")  # what a stage binds besides its data path


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
                           "index": Setting(first + i, "topology"),
                           "topology": Setting(self.name, "topology")}
                    own.update({key: Setting(nth_bind(setting.value, i), setting.origin)
                                for key, setting in stage.settings.items() if key in SERVED})
                    out.append(Command(f"{node}/{node}-w{i}", "worker",
                                       self._args(stage, {**stage.settings, **own})))
                continue
            settings = dict(stage.settings)
            if stage.kind != "view":  # nodes of another topology file are refused by name
                settings["topology"] = Setting(self.name, "topology")
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
