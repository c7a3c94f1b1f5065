"""CrystFEL `.geom` files read into the sections of a stream-node geometry file.

A CrystFEL geometry describes panels: a rectangle of the data (min/max fs/ss, inclusive), its
fast and slow scan directions and the corner of its first pixel in the laboratory frame (in
pixels, relative to the beam), plus `clen`, `res` and the photon energy. stream-node's geometry
(`model.instrument`) describes modules, so this reader groups panels into modules and hands back
the same `[beam]` / `[detector]` tables a TOML geometry file holds; `Instrument.from_sections`
then checks them like any other file. One model, two readers.

Grouping: panels named `<module>a<asic>` (p0a0 .. p0a7, as CrystFEL and EXtra-geom name the
chips of JUNGFRAU, EIGER and AGIPD modules) that tile a rectangle of equal chips become one
module with that chip layout; 256 x 256 chips are taken to have the double-size pixels at their
inner borders (JUNGFRAU, EIGER, Medipix). Any other panel is a module of its own. A module's
place is its first chip's corner; its chips must share their directions (a module is rigid).
Panels of a 3-D data block (`dim1 = <module index>`, as EXtra-geom writes them) are stacked in
index order, the way the UDP origin's `grid=Nx1` stacks modules.

Coordinates: CrystFEL's laboratory frame (+z along the beam, +y up, right-handed) is NeXus'
McStas frame, so a panel's `fs`/`ss` vectors are the module's NeXus pixel directions as they
are. The detector plane's image coordinates (x along FAST = -x_lab, y along SLOW = -y_lab, the
view from the sample) place the beam at (X0, Y0) = the largest lab x and y any module reaches,
so every pixel has coordinates >= 0.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_node.model.errors import ConfigError

# Keys of a panel that stream-node uses; others (badrow_direction, max_adu, mask...) are
# CrystFEL's own business and are skipped without complaint.
_NUMBERS = ("min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "res", "coffset")
_VECTOR = re.compile(r"([+-]?\s*(?:\d+\.?\d*|\.\d+)?(?:[eE][+-]?\d+)?)\s*([xyz])")
_CHIP = re.compile(r"^(?P<module>.+?)a(?P<chip>\d+)$")
DOUBLE_PIXEL_CHIP = (256, 256)  # chips with double-size border pixels (JUNGFRAU, EIGER)


@dataclass
class Panel:
    """One panel as the file gives it (data ranges inclusive, lab vectors in pixels)."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    dims: dict[int, str] = field(default_factory=dict)

    def number(self, key: str, where: str) -> float:
        """A numeric value of the panel; ConfigError naming the panel if it has none."""
        if key not in self.values:
            raise ConfigError(f"{where}: panel {self.name} has no {key}")
        return float(self.values[key])

    def vector(self, key: str, where: str) -> tuple[float, float, float]:
        """A direction such as fs = "+0.999x -0.002y", as (x, y, z) in pixels."""
        if key not in self.values:
            raise ConfigError(f"{where}: panel {self.name} has no {key}")
        return _vector(self.values[key], f"{where}: {self.name}/{key}")

    def index(self, where: str) -> int | None:
        """The fixed index of a 3-D data block this panel reads (its module), if any."""
        fixed = [int(v) for v in self.dims.values() if v.lstrip("-").isdigit()]
        if len(fixed) > 1:
            raise ConfigError(f"{where}: panel {self.name} fixes {len(fixed)} data dimensions; "
                              "one (the module index) is supported")
        return fixed[0] if fixed else None

    def box(self, where: str) -> tuple[int, int, int, int]:
        """(first row, first column, rows, columns) of the panel's data, within its block."""
        v = [self.number(k, where) for k in ("min_ss", "min_fs", "max_ss", "max_fs")]
        if any(x != int(x) or x < 0 for x in v) or v[2] < v[0] or v[3] < v[1]:
            raise ConfigError(f"{where}: panel {self.name} has data range ss {v[0]}..{v[2]}, "
                              f"fs {v[1]}..{v[3]}: not whole, non-negative, increasing indices")
        r0, c0, r1, c1 = (int(x) for x in v)
        return r0, c0, r1 - r0 + 1, c1 - c0 + 1


def parse(text: str, where: str) -> tuple[dict[str, str], dict[str, Panel]]:
    """(global values, panels by name) of a .geom file's text. A global value is the default of
    every panel first mentioned after it, as CrystFEL reads it."""
    globals_: dict[str, str] = {}
    panels: dict[str, Panel] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        key, sep, value = (s.strip() for s in line.partition("="))
        if not sep or not key:
            raise ConfigError(f"{where}:{number}: not 'key = value': {raw.strip()!r}")
        name, slash, param = key.rpartition("/")
        if not slash:
            globals_[key] = value
            continue
        if name.startswith(("bad", "rigid_group", "group")):
            continue  # bad regions and refinement groups: not geometry stream-node needs
        panel = panels.get(name)
        if panel is None:
            panel = panels[name] = Panel(name, dict(globals_), _dims(globals_))
        if param.startswith("dim") and param[3:].isdigit():
            panel.dims[int(param[3:])] = value
        else:
            panel.values[param] = value
    return globals_, panels


def _dims(values: dict[str, str]) -> dict[int, str]:
    return {int(k[3:]): v for k, v in values.items() if k.startswith("dim") and k[3:].isdigit()}


def _vector(text: str, where: str) -> tuple[float, float, float]:
    out = {"x": 0.0, "y": 0.0, "z": 0.0}
    rest = _VECTOR.sub("", text).strip()
    terms = _VECTOR.findall(text)
    if rest or not terms:
        raise ConfigError(f"{where}: {text!r} is not a vector like '+0.999x -0.002y'")
    for coefficient, axis in terms:
        c = coefficient.replace(" ", "")
        out[axis] += float(c + "1" if c in ("", "+", "-") else c)
    return out["x"], out["y"], out["z"]


def _length_m(text: str, where: str) -> float | None:
    """A length with optional units (m, mm); None for a data-file location."""
    value, _, unit = text.strip().partition(" ")
    if value.startswith("/"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a length") from None
    scale = {"": 1.0, "m": 1.0, "mm": 1e-3}.get(unit.strip())
    if scale is None:
        raise ConfigError(f"{where}: unknown length unit {unit.strip()!r} (m or mm)")
    return number * scale


def _beam(values: dict[str, str], where: str) -> dict[str, float]:
    """[beam] from photon_energy (eV, or keV) or wavelength (m, or A); nothing for a data-file
    location or when neither is given."""
    for key, units in (("photon_energy", {"": 1.0, "eV": 1.0, "keV": 1e3}),
                       ("wavelength", {"": 1e10, "m": 1e10, "A": 1.0})):
        if key not in values:
            continue
        value, _, unit = values[key].partition(" ")
        if value.startswith("/"):
            return {}
        scale = units.get(unit.strip())
        try:
            number = float(value) * (scale if scale is not None else math.nan)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{where}: {key} = {values[key]!r} is not a positive number with "
                              f"units {', '.join(u for u in units if u)}")
        return {"energy" if key == "photon_energy" else "wavelength": number}
    return {}


@dataclass
class _Module:
    panels: list[Panel]
    index: int | None  # 3-D block index
    box: tuple[int, int, int, int]  # first row, first column, rows, columns (within the block)
    chips: dict[str, Any] | None


def _modules(panels: dict[str, Panel], where: str) -> list[_Module]:
    """Panels grouped into modules (see the module docstring), in the file's order."""
    groups: dict[tuple[str, int | None], list[Panel]] = defaultdict(list)
    for panel in panels.values():
        match = _CHIP.match(panel.name)
        key = match.group("module") if match else panel.name
        groups[(key, panel.index(where))].append(panel)
    out = []
    for (_, index), members in groups.items():
        chips = _tiling(members, where)
        if chips is None:
            out += [_Module([p], index, p.box(where), None) for p in members]
        else:
            boxes = [p.box(where) for p in members]
            r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            size = chips["chips"][0] * chips["size"][0], chips["chips"][1] * chips["size"][1]
            first = next(p for p, b in zip(members, boxes, strict=True) if b[:2] == (r0, c0))
            out.append(_Module([first, *(p for p in members if p is not first)], index,
                               (r0, c0, *size), chips))
    return out


def _tiling(members: list[Panel], where: str) -> dict[str, Any] | None:
    """The chip layout of panels that tile a rectangle with equal chips, else None."""
    if len(members) < 2:
        return None
    boxes = [p.box(where) for p in members]
    h, w = boxes[0][2], boxes[0][3]
    r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    rows = max(b[0] + b[2] for b in boxes) - r0
    cols = max(b[1] + b[3] for b in boxes) - c0
    cells = {((b[0] - r0) // h, (b[1] - c0) // w) for b in boxes}
    if (any((b[2], b[3]) != (h, w) or (b[0] - r0) % h or (b[1] - c0) % w for b in boxes)
            or rows % h or cols % w or len(cells) != len(boxes)
            or len(boxes) != (rows // h) * (cols // w)):
        return None
    return {"chips": [rows // h, cols // w], "size": [h, w],
            "double_pixels": (h, w) == DOUBLE_PIXEL_CHIP}


def _direction(vector: tuple[float, float, float], where: str) -> tuple[float, float, float]:
    norm = math.sqrt(sum(v * v for v in vector))
    if not norm:
        raise ConfigError(f"{where}: a zero vector")
    return tuple(v / norm for v in vector)  # type: ignore[return-value]


def sections(path: str | Path) -> dict[str, Any]:
    """The `[beam]` and `[detector]` tables (as `Instrument.from_sections` reads them) that a
    CrystFEL .geom file describes; ConfigError naming the file, line or panel."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"geometry file {path}: {exc.strerror}") from None
    where = str(path)
    globals_, panels = parse(text, where)
    if not panels:
        raise ConfigError(f"{where}: no panels (lines like 'p0a0/min_fs = 0')")
    modules = _modules(panels, where)
    block_rows = max(m.box[0] + m.box[2] for m in modules)
    placed = []
    for m in modules:
        first = m.panels[0]
        label = f"{where}: panel {first.name}"
        fs = _direction(first.vector("fs", where), label + " fs")
        ss = _direction(first.vector("ss", where), label + " ss")
        for other in m.panels[1:]:
            ofs, oss = (_direction(other.vector(k, where), f"{where}: {other.name}")
                        for k in ("fs", "ss"))
            if max(abs(a - b) for a, b in zip(ofs + oss, fs + ss, strict=True)) > 0.01:
                raise ConfigError(f"{where}: panel {other.name} points another way than "
                                  f"{first.name}: the chips of a module are rigid")
        corner = first.number("corner_x", where), first.number("corner_y", where)
        rows, cols = m.box[2], m.box[3]
        if m.chips and m.chips["double_pixels"]:  # its extent in space: chips' borders double
            rows, cols = rows + 2 * (m.chips["chips"][0] - 1), cols + 2 * (m.chips["chips"][1] - 1)
        reach = [(corner[0] + a * ss[0] + b * fs[0], corner[1] + a * ss[1] + b * fs[1])
                 for a in (0, rows) for b in (0, cols)]
        origin_row = m.box[0] + (m.index * block_rows if m.index is not None else 0)
        placed.append((m, origin_row, fs, ss, corner, reach))
    x0 = max(x for *_, reach in placed for x, _ in reach)
    y0 = max(y for *_, reach in placed for _, y in reach)
    detector: dict[str, Any] = {"beam_center": [x0, y0], "modules": []}
    for m, origin_row, fs, ss, corner, _ in sorted(placed, key=lambda p: (p[1], p[0].box[1])):
        module = {"origin": [origin_row, m.box[1]], "size": [m.box[2], m.box[3]],
                  "position": [x0 - corner[0], y0 - corner[1]], "fast": list(fs),
                  "slow": list(ss)}
        if m.chips:
            module["chips"] = m.chips
        detector["modules"].append(module)
    first = next(iter(panels.values()))
    if "res" in first.values:
        res = first.number("res", where)
        if not res > 0:
            raise ConfigError(f"{where}: res = {res} is not a positive number of pixels per m")
        detector["pixel_size"] = [1 / res, 1 / res]
    if "clen" in globals_:
        distance = _length_m(globals_["clen"], f"{where}: clen")
        if distance is not None:
            detector["distance"] = distance
    return {"beam": _beam(globals_, where), "detector": detector}
