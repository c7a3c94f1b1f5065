"""The compiled modules and their .pyi stubs name the same things; the .pxd files declare every
constant of their C header; the constants the modules expose are the header's values, and the C
code acts on those values."""

from __future__ import annotations

import ast
import os
import re
import types
from pathlib import Path

import numpy as np
import pytest

from stream_node._native import _frame, _ring, _udp
from stream_node._native._frame import FrameHeader
from stream_node._native._ring import RingHandle
from stream_node.model.errors import ProtocolError, RingError
from stream_node.model.frame import MsgType

NATIVE = Path(_frame.__file__).parent
HEADERS = Path(__file__).resolve().parents[1] / "native" / "include" / "stream_node"
MODULES = {"_frame": _frame, "_ring": _ring, "_udp": _udp}
PXD_OF_HEADER = {"frame_header.h": "frame_header.pxd", "ring.h": "ring.pxd",
                 "udp_receiver.h": "udp_receiver.pxd"}

# Every int constant a native module exposes, and the header name it stands for.
EXPOSED = {
    "_frame": {
        "HEADER_SIZE": "SN_HEADER_SIZE",
        "HEADER_VERSION": "SN_HEADER_VERSION",
        "FLAG_PAYLOAD_CRC": "SN_FLAG_PAYLOAD_CRC",
        "MAX_DIMS": "SN_MAX_DIMS",
    },
    "_ring": {
        "WORK": "SN_GROUP_WORK",
        "LATEST": "SN_GROUP_LATEST",
        "MAX_GROUPS": "SN_RING_MAX_GROUPS",
        "MAX_MEMBERS": "SN_RING_MAX_MEMBERS",
        "MAX_BATCH": "SN_RING_MAX_BATCH",
        "PAYLOAD_OFFSET": "SN_RING_PAYLOAD_OFFSET",
        "NOT_FOUND": "SN_RING_ENOENT",
        "NOT_READY": "SN_RING_ENOTREADY",
    },
    "_udp": {
        "HEADER_BYTES": "SN_UDP_HEADER_BYTES",
        "MAX_MODULES": "SN_UDP_MAX_MODULES",
        "MAX_BATCH": "SN_UDP_MAX_BATCH",
        "MAX_JUMP": "SN_UDP_MAX_JUMP",
        "EV_PARTIAL": "SN_UDP_EV_PARTIAL",
        "EV_MISSING": "SN_UDP_EV_MISSING",
        "EV_RING_FULL": "SN_UDP_EV_RING_FULL",
        "EV_RESTART": "SN_UDP_EV_RESTART",
    },
}


# ---- stubs ---------------------------------------------------------------------------------------


def _public(names: set[str]) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _stub_names(body: list[ast.stmt]) -> set[str]:
    """Names a stub body defines: defs, classes, annotated or assigned names, `import x as x`."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.asname for a in node.names if a.asname == a.name)
    return names


def _stub(name: str) -> ast.Module:
    path = NATIVE / f"{name}.pyi"
    assert path.is_file(), f"{name} has no stub: write {path}"
    return ast.parse(path.read_text(), str(path))


def _runtime_names(module: types.ModuleType) -> set[str]:
    """Public names the module defines itself: not modules, classes or functions it imports."""

    def defined_here(obj: object) -> bool:
        if isinstance(obj, types.ModuleType):
            return False
        if isinstance(obj, type) or callable(obj):
            return getattr(obj, "__module__", module.__name__) == module.__name__
        return True

    return {n for n in _public(set(dir(module))) if defined_here(getattr(module, n))}


def _differences(what: str, has: set[str], truth: str, wanted: set[str]) -> list[str]:
    """What `what` lacks of `truth`'s names, and what it names that `truth` lacks."""
    problems = []
    if wanted - has:
        problems.append(f"{what} lacks {sorted(wanted - has)}")
    if has - wanted:
        problems.append(f"{what} names what {truth} lacks: {sorted(has - wanted)}")
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_stub_names_exactly_the_public_names_of_the_compiled_module(name):
    stub, runtime = _public(_stub_names(_stub(name).body)), _runtime_names(MODULES[name])
    assert not _differences(f"{name}.pyi", stub, "the compiled module", runtime)


@pytest.mark.parametrize("name", MODULES)
def test_stub_classes_name_exactly_the_public_members_of_the_compiled_classes(name):
    tree = _stub(name)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
    assert classes, f"{name}.pyi declares no class"
    problems = []
    for node in classes:
        runtime = _public(set(dir(getattr(MODULES[name], node.name))))
        stub = _public(_stub_names(node.body))
        problems += _differences(f"{name}.pyi {node.name}", stub, "the compiled class", runtime)
    assert not problems


# ---- constants -----------------------------------------------------------------------------------


def _c_int(expr: str, known: dict[str, int]) -> int | None:
    """Value of a C integer constant expression (literals with u/l suffixes, << + - *, names);
    None for anything else."""
    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    ops = {ast.LShift: int.__lshift__, ast.Add: int.__add__, ast.Sub: int.__sub__,
           ast.Mult: int.__mul__}

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError(ast.dump(node))

    try:
        return value(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def _constants_of(header: Path, known: dict[str, int]) -> dict[str, int]:
    """The SN_* #defines and enum members with an integer value in one header."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", header.read_text(), flags=re.S)
    pairs = re.findall(r"^#define\s+(SN_\w+)\s+(.+)$", text, flags=re.M)
    pairs += re.findall(r"\b(SN_\w+)\s*=\s*([^,}\n]+)", text)
    found: dict[str, int] = {}
    for key, expr in pairs:
        if (v := _c_int(expr, {**known, **found})) is not None:
            found[key] = v
    return found


def header_constants() -> dict[str, int]:
    """Every SN_* constant with an integer value in the public headers."""
    known: dict[str, int] = {}
    for header in sorted(HEADERS.glob("*.h")):
        known.update(_constants_of(header, known))
    return known


def test_header_parser_reads_defines_enums_and_suffixed_literals():
    c = header_constants()
    assert c["SN_HEADER_SIZE"] == 96 and c["SN_RING_ESYS"] == -112 and c["SN_UDP_NO_CPU"] == -1
    assert c["SN_RING_WRITING"] == 0x80000000 and c["SN_UDP_MAX_JUMP"] == 1 << 20


@pytest.mark.parametrize("header", PXD_OF_HEADER)
def test_pxd_declares_every_constant_of_its_header(header):
    in_header = set(_constants_of(HEADERS / header, header_constants()))
    pxd = PXD_OF_HEADER[header]
    text = (NATIVE / pxd).read_text()
    declared = set(re.findall(r"^\s+(?:const \w+ )?(SN_\w+)\s*(?:#.*)?$", text, flags=re.M))
    assert not _differences(pxd, declared, header, in_header)


@pytest.mark.parametrize("name", MODULES)
def test_exposed_constants_equal_the_header_values(name):
    module, c = MODULES[name], header_constants()
    ints = {n for n in _runtime_names(module) if type(getattr(module, n)) is int}
    assert ints == set(EXPOSED[name]), "a constant is exposed without a header name in EXPOSED"
    assert {n: getattr(module, n) for n in ints} == {n: c[h] for n, h in EXPOSED[name].items()}


def test_frame_codec_packs_header_size_bytes_and_at_most_max_dims_dimensions():
    full = FrameHeader(MsgType.FRAME, shape=(1,) * _frame.MAX_DIMS, dtype_code=1)
    assert len(full.pack()) == _frame.HEADER_SIZE
    assert FrameHeader.parse(full.pack()) == full
    with pytest.raises(ProtocolError, match=f"at most {_frame.MAX_DIMS} dimensions"):
        FrameHeader(MsgType.FRAME, shape=(1,) * (_frame.MAX_DIMS + 1), dtype_code=1)


@pytest.fixture
def ring_name(request):
    name = f"stub{os.getpid()}-{request.node.name[:30]}"
    yield name
    RingHandle.unlink(name)


def test_ring_limits_are_the_ones_the_c_ring_enforces(ring_name):
    c = header_constants()
    longest = "g" * (c["SN_RING_GROUP_NAME_BYTES"] - 1)
    groups = [(longest, _ring.WORK)]
    groups += [(f"latest{i}", _ring.LATEST) for i in range(_ring.MAX_GROUPS - 1)]
    with pytest.raises(RingError) as too_many:
        RingHandle.create(ring_name, 4, 64, [*groups, ("one-more", _ring.WORK)], 1, 0o600)
    assert too_many.value.code == c["SN_RING_EINVAL"]
    with pytest.raises(RingError) as too_long:
        RingHandle.create(ring_name, 4, 64, [(longest + "g", _ring.WORK)], 1, 0o600)
    assert too_long.value.code == c["SN_RING_EINVAL"]

    n = _ring.MAX_BATCH + 1
    h = RingHandle.create(ring_name, n, 64, groups, 1, 0o600)
    assert h.group_index(longest) == (0, _ring.WORK)
    assert len(memoryview(h.slot_buffer(0))) == _ring.PAYLOAD_OFFSET + 64
    members = [h.join(0) for _ in range(_ring.MAX_MEMBERS)]
    with pytest.raises(RingError) as full:
        h.join(0)
    assert full.value.code == c["SN_RING_EBUSY"]
    for _ in range(n):
        h.publish(h.claim(0))
    slots, seqs = np.zeros(2 * n, np.uint32), np.zeros(2 * n, np.uint64)
    got = h.acquire(0, members[0], 2 * n, 0, slots, seqs)
    assert got == _ring.MAX_BATCH  # the C clamps a larger request to MAX_BATCH
    h.release_n(0, members[0], seqs, slots, got)
    h.end()
    assert h.stats()["state"] == "closed"


def test_the_python_frame_model_mirrors_the_header_constants():
    """model/frame.py names the header's message types, encodings, flags and dtypes in Python
    (enums a reader can use without the native module); they must be the header's values."""
    from stream_node.model.frame import (
        DTYPE_CODES,
        FLAG_FAILED,
        FLAG_PARTIAL,
        Encoding,
        MsgType,
    )

    c = header_constants()
    assert {m.name: m.value for m in MsgType} == {
        k[len("SN_MSG_"):]: v for k, v in c.items()
        if k.startswith("SN_MSG_") and k != "SN_MSG_TYPE_MAX"}
    assert {e.name: e.value for e in Encoding} == {
        k[len("SN_ENC_"):]: v for k, v in c.items()
        if k.startswith("SN_ENC_") and k != "SN_ENC_MAX"}
    assert {str(dt).upper(): code for dt, code in DTYPE_CODES.items()} == {
        k[len("SN_DTYPE_"):]: v for k, v in c.items()
        if k.startswith("SN_DTYPE_") and k not in ("SN_DTYPE_NONE", "SN_DTYPE_MAX")}
    assert (c["SN_FLAG_PARTIAL"], c["SN_FLAG_FAILED"]) == (FLAG_PARTIAL, FLAG_FAILED)
