"""How a topology's stages reach each other: every stage has its input, every endpoint it
connects to reaches what another stage binds, no port is bound twice, and the endpoints a stage
leaves out are derived from the stage it talks to."""

from __future__ import annotations

import json
import string
import sys
from typing import Any

from stream_node.deploy.settings import (
    Setting,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


from stream_node.deploy.addresses import (
    ENDPOINT_FLAGS,
    WILDCARDS,
    Endpoint,
    connect_address,
    nth_bind,
    parse_endpoint,
    reaches,
    why_unreached,
)
from stream_node.deploy.findings import Findings
from stream_node.deploy.topology import PLACEHOLDERS, SERVED, Node, Stage, Topology


class LinkCheck:
    """Checks and completes the links of a topology read from a file; problems go to `found`."""

    def __init__(self, found: Findings) -> None:
        self.fail, self.line, self.bad = found.fail, found.line, found.bad

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
        from stream_node.origins import known_origins, origin_scheme

        value = str(stage.get("from", "synthetic:"))
        if origin_scheme(value) is None:
            self.fail(self.line("nodes", node.name, "source", "from"),
                      f"[nodes.{node.name}.source]: from = {value!r}: unknown origin; use one "
                      f"of {known_origins()}")

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
        else:
            source.settings["workers"] = Setting(feeding, "topology (workers counted)")
        direct = (collector.get("input") == source.get("data")
                  and str(source.get("data")).startswith("ring://") and src_host == col_host)
        if not feeding and not direct and not self.bad & {
                (collector.node, "collector", "input"), (source.node, "source", "data")}:
            self.fail(self.line("nodes", collector.node, "collector", "input"),
                      f"[nodes.{collector.node}.collector]: input {collector.get('input')!r}: "
                      "with no workers the collector reads the source's ring itself, so its "
                      f"input must be the source's data {source.get('data')!r} (a ring:// on "
                      "the same host)")

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
            if stage.kind == "collector" and key == "input" and \
                    str(stage.get(key)).startswith("ring://"):
                continue  # a ring fan-in's rings are made by the workers (or the source)
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
