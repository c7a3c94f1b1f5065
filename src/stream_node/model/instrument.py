"""The experiment's geometry: beam, detector (with its modules) and goniometer, in one model.

A DECTRIS header fills it (`origins.dectris`, `origins.stream2`); for any other origin a small
file given to the source does (`--geometry FILE`: TOML or JSON, a CrystFEL `.geom` file read by
`model.crystfel`, or a `[geometry]` table of a topology's source); both can be combined, the
file's values winning. `model.geometry` turns the modules into the plan that assembles a full
image from a stack of modules (the `assemble` kernel). START carries it to the
collector, which writes it as NeXus NXmx (`storage.nexus`). What nobody said stays unknown:
the file then leaves that NXmx field out rather than invent it.

Conventions (NeXus, as the NXmx readers of DIALS and others expect them): lengths in metres,
angles in degrees, wavelength in angstrom, energy in eV; the beam runs along +z, and pixel
coordinates (x along the fast axis, y along the slow one) are those of the frames as written,
gaps between modules included in a module's `position`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from stream_node.model.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HC_EV_ANGSTROM = 12398.419843320026  # h*c: energy in eV times wavelength in angstrom
FAST = (-1.0, 0.0, 0.0)  # NeXus (McStas) directions of a detector seen from the sample
SLOW = (0.0, -1.0, 0.0)


@dataclass(frozen=True)
class ChipLayout:
    """How a module's pixels are read out: `chips` (slow, fast) readout chips of `size` pixels.

    Hybrid pixel detectors (JUNGFRAU, EIGER) bridge the gap between two chips with pixels of
    twice the size on each chip's inner border: `double_pixels` says so, and assembly then
    gives each of them two pixels of the image (four at a corner where two borders meet), so
    the image has a regular pixel grid. A JUNGFRAU module is 2 x 4 chips of 256 x 256: 512 x
    1024 pixels read out, 514 x 1030 in the image.
    """

    chips: tuple[int, int] = (2, 4)
    size: tuple[int, int] = (256, 256)
    double_pixels: bool = True

    @property
    def module_shape(self) -> tuple[int, int]:
        """(rows, columns) of pixels a module reads out."""
        return self.chips[0] * self.size[0], self.chips[1] * self.size[1]

    @property
    def image_shape(self) -> tuple[int, int]:
        """(rows, columns) the module covers in an assembled image."""
        extra = 2 if self.double_pixels else 0
        return (self.module_shape[0] + extra * (self.chips[0] - 1),
                self.module_shape[1] + extra * (self.chips[1] - 1))


JUNGFRAU = ChipLayout()
CHIP_LAYOUTS = {"jungfrau": JUNGFRAU}  # what a geometry file may name instead of a table


@dataclass(frozen=True)
class Module:
    """One detector module: where its pixels sit in the frame and where it sits in space.

    `origin` and `size` are (slow, fast) indexes into the frame as written (NXmx `data_origin`
    and `data_size`); `position` is the (x, y) pixel coordinate of the corner of its first pixel
    on the detector plane, gaps included; `fast` and `slow` the directions of its pixel axes;
    `chips` its readout chips, when the image is to be assembled with their double pixels.
    """

    origin: tuple[int, int]
    size: tuple[int, int]
    position: tuple[float, float] = (0.0, 0.0)
    fast: tuple[float, float, float] = FAST
    slow: tuple[float, float, float] = SLOW
    chips: ChipLayout | None = None


@dataclass(frozen=True)
class Axis:
    """A goniometer axis; `start` + i * `increment` is its value at frame i."""

    name: str
    vector: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    start: float = 0.0
    increment: float = 0.0
    kind: str = "rotation"  # or "translation" (then start/increment in metres)


@dataclass(frozen=True)
class Instrument:
    """Everything known about the measurement's geometry; None where nobody said."""

    wavelength: float | None = None  # angstrom
    flux: float | None = None  # photons/s
    description: str | None = None
    serial_number: str | None = None
    distance: float | None = None  # m, sample to detector plane along the beam
    beam_center: tuple[float, float] | None = None  # pixels (x fast, y slow)
    pixel_size: tuple[float, float] | None = None  # m (x, y)
    sensor_material: str | None = None
    sensor_thickness: float | None = None  # m
    saturation_value: int | None = None
    underload_value: int | None = None
    count_time: float | None = None  # s
    frame_time: float | None = None  # s
    bit_depth_readout: int | None = None
    detector_readout_time: float | None = None  # s
    modules: tuple[Module, ...] = ()  # none: the whole frame is one module at (0, 0)
    goniometer: tuple[Axis, ...] = ()  # the sample's axes, innermost first

    @property
    def energy(self) -> float | None:
        """Photon energy in eV, from the wavelength."""
        return None if not self.wavelength else HC_EV_ANGSTROM / self.wavelength

    def with_energy(self, energy_ev: float | None) -> Instrument:
        """The same, with the wavelength an energy in eV gives (unless one is known)."""
        if self.wavelength is not None or not energy_ev:
            return self
        return replace(self, wavelength=HC_EV_ANGSTROM / energy_ev)

    def modules_of(self, frame_shape: Sequence[int]) -> tuple[Module, ...]:
        """The modules, or the whole frame as one module when none was described."""
        if self.modules:
            return self.modules
        slow, fast = (int(n) for n in frame_shape[-2:])
        return (Module((0, 0), (slow, fast)),)

    def merged(self, other: Instrument) -> Instrument:
        """This instrument with every value `other` knows put in (other wins)."""
        known = {f.name: getattr(other, f.name) for f in fields(other)
                 if getattr(other, f.name) not in (None, ())}
        return replace(self, **known)

    def missing(self) -> list[str]:
        """What an NXmx reader needs that nobody said, as field names."""
        need = ("wavelength", "distance", "beam_center", "pixel_size", "sensor_material",
                "sensor_thickness", "saturation_value", "count_time", "frame_time",
                "bit_depth_readout")
        gone = [name for name in need if getattr(self, name) is None]
        return gone + ([] if self.goniometer else ["goniometer"])

    def to_wire(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], ())}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], where: str = "instrument") -> Instrument:
        """From START's "instrument" or a geometry file's contents; ConfigError naming the key
        that is unknown or of the wrong kind."""
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: a table of geometry values, not {body!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, value in body.items():
            values[name] = _value(name, value, where)
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> Instrument:
        """A geometry file: TOML (tables [beam], [detector] with [[detector.modules]],
        [[goniometer.axes]]), JSON of the same shape, or a CrystFEL `.geom` file (`.geom`: see
        `model.crystfel`); see examples/geometry/."""
        path = Path(path)
        if path.suffix == ".geom":
            from stream_node.model import crystfel

            return cls.from_sections(crystfel.sections(path), str(path))
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"geometry file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"geometry file {path}: not valid "
                              f"{'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
        return cls.from_sections(data, str(path))

    @classmethod
    def from_sections(cls, data: Mapping[str, Any], where: str) -> Instrument:
        """[beam], [detector] and [goniometer] tables, as a geometry file writes them."""
        sections = {"beam": ("wavelength", "energy", "flux"),
                    "detector": tuple(f.name for f in fields(cls)
                                      if f.name not in ("wavelength", "flux", "goniometer")),
                    "goniometer": ("axes",)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"{where}: unknown table(s) {', '.join(unknown)}; use [beam], "
                              "[detector], [goniometer]")
        flat: dict[str, Any] = {}
        energy = None
        for section, keys in sections.items():
            table = data.get(section, {})
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where}: [{section}] is a table")
            for key, value in table.items():
                if key not in keys:
                    raise ConfigError(f"{where}: [{section}] has no key {key!r}; known: "
                                      f"{', '.join(keys)}")
                if key == "energy":
                    energy = _number("energy", value, where)
                elif key == "axes":
                    flat["goniometer"] = value
                else:
                    flat[key] = value
        instrument = cls.from_wire(flat, where)
        if energy is not None and instrument.wavelength is not None:
            raise ConfigError(f"{where}: give the beam's wavelength or its energy, not both")
        return instrument.with_energy(energy)


def _number(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} is a finite number, not {value!r}")
    return float(value)


def _pair(name: str, value: Any, where: str, n: int = 2) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"{where}: {name} is a list of {n} numbers, not {value!r}")
    return tuple(_number(name, v, where) for v in value)


def _value(name: str, value: Any, where: str) -> Any:
    if name in ("description", "serial_number", "sensor_material"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} is a string, not {value!r}")
        return value
    if name in ("saturation_value", "underload_value", "bit_depth_readout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{where}: {name} is an integer, not {value!r}")
        return int(value)
    if name in ("beam_center", "pixel_size"):
        return _pair(name, value, where)
    if name == "modules":
        return tuple(_module(m, f"{where}: modules[{i}]") for i, m in enumerate(_list(
            name, value, where)))
    if name == "goniometer":
        return tuple(_axis(a, f"{where}: goniometer axis {i}") for i, a in enumerate(_list(
            name, value, where)))
    number = _number(name, value, where)
    if number <= 0 and name != "flux":
        raise ConfigError(f"{where}: {name} must be > 0, not {value!r}")
    return number


def _list(name: str, value: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {name} is a list of tables, not {value!r}")
    return list(value)


def _module(raw: Any, where: str) -> Module:
    if isinstance(raw, Module):
        return raw
    if not isinstance(raw, Mapping) or not {"origin", "size"} <= set(raw):
        raise ConfigError(f"{where}: a module has origin = [slow, fast] and size = [slow, fast]")
    extra = sorted(set(raw) - {"origin", "size", "position", "fast", "slow", "chips"})
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
    origin = tuple(int(v) for v in _pair("origin", raw["origin"], where))
    size = tuple(int(v) for v in _pair("size", raw["size"], where))
    if min(size) < 1 or min(origin) < 0:
        raise ConfigError(f"{where}: origin {origin} and size {size} must be >= 0 and >= 1")
    chips = _chips(raw.get("chips"), where)
    if chips is not None and chips.module_shape != size:
        raise ConfigError(f"{where}: size {list(size)} is not what its chips read out "
                          f"({chips.chips[0]} x {chips.chips[1]} chips of {chips.size[0]} x "
                          f"{chips.size[1]}: {list(chips.module_shape)})")
    return Module(origin, size,  # type: ignore[arg-type]
                  _pair("position", raw.get("position", (0, 0)), where),  # type: ignore[arg-type]
                  _pair("fast", raw.get("fast", FAST), where, 3),  # type: ignore[arg-type]
                  _pair("slow", raw.get("slow", SLOW), where, 3),  # type: ignore[arg-type]
                  chips)


def _chips(raw: Any, where: str) -> ChipLayout | None:
    """A module's `chips`: a preset name ("jungfrau") or {chips, size, double_pixels}."""
    if raw is None or isinstance(raw, ChipLayout):
        return raw
    if isinstance(raw, str):
        if raw not in CHIP_LAYOUTS:
            raise ConfigError(f"{where}: chips {raw!r} is not a known layout "
                              f"({', '.join(CHIP_LAYOUTS)}) or a table")
        return CHIP_LAYOUTS[raw]
    if not isinstance(raw, Mapping) or not {"chips", "size"} <= set(raw) or (
            set(raw) - {"chips", "size", "double_pixels"}):
        raise ConfigError(f"{where}: chips is a layout name or {{chips = [slow, fast], size = "
                          f"[slow, fast], double_pixels = true}}, not {raw!r}")
    counts = tuple(int(v) for v in _pair("chips", raw["chips"], where))
    size = tuple(int(v) for v in _pair("chips size", raw["size"], where))
    double = raw.get("double_pixels", True)
    if min(counts + size) < 1 or not isinstance(double, bool):
        raise ConfigError(f"{where}: chips {raw!r}: counts and sizes >= 1, double_pixels a "
                          "boolean")
    return ChipLayout(counts, size, double)  # type: ignore[arg-type]


def _axis(raw: Any, where: str) -> Axis:
    if isinstance(raw, Axis):
        return raw
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: an axis has a name, e.g. {{name = \"omega\"}}")
    extra = sorted(set(raw) - {"name", "vector", "start", "increment", "kind"})
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
    kind = raw.get("kind", "rotation")
    if kind not in ("rotation", "translation"):
        raise ConfigError(f"{where}: kind is rotation or translation, not {kind!r}")
    vector = _pair("vector", raw.get("vector", (-1, 0, 0)), where, 3)
    if not any(vector):
        raise ConfigError(f"{where}: vector {vector} has no direction")
    return Axis(raw["name"], vector,  # type: ignore[arg-type]
                _number("start", raw.get("start", 0.0), where),
                _number("increment", raw.get("increment", 0.0), where), kind)


__all__ = ["CHIP_LAYOUTS", "FAST", "HC_EV_ANGSTROM", "JUNGFRAU", "SLOW", "Axis",
           "ChipLayout", "Instrument", "Module"]
