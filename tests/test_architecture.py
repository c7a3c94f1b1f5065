"""The package's import graph: no cycles, and each part imports only the parts below it.

Every import counts, also those inside functions and under TYPE_CHECKING, and the Cython
modules' imports too: a cycle that only closes at run time is still a cycle. The rules are the
README's "Architecture" section; change both together.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "stream_node"

# part -> the parts it may import (besides itself). "(top)" is stream_node/__init__.py, which
# re-exports the public API and may import anything; nothing may import it.
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "_native": {"model"},  # the codecs raise the model's errors
    "model": {"_native"},
    "kernels": {"model"},
    "links": {"model", "_native"},
    "origins": {"model", "links", "kernels", "_native"},
    "storage": {"model", "kernels", "_version"},
    "ops": {"model", "links", "kernels", "storage", "_version"},
    "stages": {"model", "links", "origins", "kernels", "storage", "ops", "_version"},
    "deploy": {"model", "links", "origins", "kernels", "storage", "ops", "stages", "_version"},
    "cli": {"model", "links", "origins", "kernels", "storage", "ops", "stages", "deploy",
            "_version"},
    "__main__": {"cli"},
    "(top)": {"model", "links", "origins", "kernels", "storage", "ops", "stages", "deploy",
              "_version"},
}
DATA_PATH = {"model", "links", "origins", "kernels", "storage"}  # never import ops


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyx")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its body."""
    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    text = path.read_text()
    targets: set[str | None] = set()
    if path.suffix == ".pyx":  # Cython: plain Python imports of the package, by pattern
        for module, names in re.findall(r"^\s*from (stream_node[\w.]*) c?import (.+)$", text,
                                        re.M):
            targets |= {resolve(f"{module}.{n.strip()}") for n in names.split(",")}
        return {t for t in targets if t and t != name}
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets |= {resolve(a.name) for a in node.names if a.name.startswith("stream_node")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "stream_node":
                targets |= {resolve(f"{module}.{a.name}") for a in node.names}
    return {t for t in targets if t and t != name}


def part(module: str) -> str:
    pieces = module.split(".")
    return "(top)" if len(pieces) == 1 else pieces[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_part_of_the_package_has_a_rule():
    assert {part(m) for m in modules()} <= set(ALLOWED)


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_each_part_imports_only_what_the_architecture_allows():
    wrong = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                   if part(a) != part(b) and part(b) not in ALLOWED[part(a)])
    assert wrong == []


def test_nothing_imports_the_package_root_or_the_cli():
    wrong = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                   if part(b) == "(top)" or (part(b) == "cli" and part(a) not in ("cli",
                                                                                   "__main__")))
    assert wrong == []


def test_the_data_path_never_imports_ops():
    wrong = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                   if part(a) in DATA_PATH and part(b) == "ops")
    assert wrong == []


def test_the_checker_sees_a_cycle_and_a_forbidden_edge():
    """The rules above can fail: a made-up graph with both faults is caught."""
    edges = {"stream_node.kernels.a": {"stream_node.stages.b"},
             "stream_node.stages.b": {"stream_node.kernels.a"}}
    assert cycles(edges) == [["stream_node.kernels.a", "stream_node.stages.b"]]
    assert "stages" not in ALLOWED["kernels"]


@pytest.mark.parametrize(("statement", "absent"), [
    ("import stream_node", {"zmq", "h5py", "numba", "stream_node.stages.collector"}),
    ("import stream_node.kernels", {"zmq", "h5py", "numba"}),
    ("from stream_node.model.contract import RunContract", {"zmq", "h5py", "numba"}),
    ("from stream_node.storage.reader import read_run", {"zmq", "numba"}),
    ("from stream_node import FrameHeader", {"zmq", "h5py", "numba"}),
])
def test_importing_a_light_part_loads_no_heavy_dependency(statement, absent):
    code = (f"import sys; {statement}; "
            f"print(sorted(m for m in {sorted(absent)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"


def test_the_lazy_top_level_exports_every_name_it_lists():
    import stream_node

    for name in stream_node.__all__:
        assert getattr(stream_node, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = stream_node.nope
