"""The assembly plan: where each module's pixels go in the detector's full image.

Detectors send a stack of modules (the UDP origin puts module k of a `grid=8x1` run in rows
512k..512k+511); the physical image has the modules apart, with gaps, turned as they are
mounted, and (JUNGFRAU, EIGER) with double-size pixels on the chips' inner borders. A
`Geometry` is made once per run from the geometry model (`model.instrument`, read from a TOML,
JSON or CrystFEL file) and gives the `assemble` kernel its tables; it also assembles the pixel
mask, and says how the assembled image is described in NXmx.

Rules, so that every image is reproducible from the file that made it:

* A module's place is the corner of its first pixel (`Module.position`, image coordinates: x
  along the image's columns, y along its rows), rounded to the nearest pixel; its directions
  are rounded to the nearest multiple of 90 degrees (a tilt of a few mrad, as refined
  geometries have, is not an image transformation; keep the geometry file for analysis).
* Pixel (s, f) of a module, in the module's own (slow, fast) order, lands at image pixel
  start + s * slow + f * fast, where `slow`/`fast` are unit steps of the image.
* With double pixels, raw index i along an axis of chips of c pixels lands at i + 2 * (i // c);
  a pixel on a chip's inner border covers two image pixels (the border pixel at the chip's
  start: the one before and its own). Its value is shared among them (see `kernels.reference.
  assemble`).
* The image is shifted so that its first row and column hold a module; the beam centre moves
  with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_node.model.errors import ConfigError
from stream_node.model.instrument import FAST, SLOW, ChipLayout, Instrument, Module
from stream_node.model.pixel_mask import GAP

TILT = 0.05  # a direction further than this (about 3 degrees) from an image axis is refused


@dataclass(frozen=True)
class Placement:
    """One module in the image: all integers, what the kernels read."""

    origin: tuple[int, int]  # (row, column) of its first pixel in the frame as received
    size: tuple[int, int]  # (rows, columns) it reads out
    start: tuple[int, int]  # image (row, column) of its first pixel (its own order)
    fast: tuple[int, int]  # image (row, column) step along its fast axis
    slow: tuple[int, int]  # ... and along its slow axis
    chips: ChipLayout | None  # None: no chip structure, placed pixel for pixel

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) it covers in its own orientation (514 x 1030 for JUNGFRAU)."""
        return self.chips.image_shape if self.chips else self.size

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(first row, first column, rows, columns) of the image it covers."""
        a, b = self.shape[0] - 1, self.shape[1] - 1
        rows = [self.start[0] + i * self.slow[0] + j * self.fast[0] for i in (0, a) for j in (0, b)]
        cols = [self.start[1] + i * self.slow[1] + j * self.fast[1] for i in (0, a) for j in (0, b)]
        return min(rows), min(cols), max(rows) - min(rows) + 1, max(cols) - min(cols) + 1

    def row(self) -> list[int]:
        """This module as a row of `Geometry.table`."""
        chip, double = ((self.chips.size, 1) if self.chips and self.chips.double_pixels
                        else (self.size, 0))
        return [*self.origin, *self.size, *self.start, *self.fast, *self.slow, *chip, double]


TABLE_COLUMNS = ("origin_row", "origin_col", "rows", "cols", "start_row", "start_col",
                 "fast_row", "fast_col", "slow_row", "slow_col", "chip_rows", "chip_cols",
                 "double_pixels")


def axis_map(n: int, chip: int, double: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first image index, image pixels covered) of raw indexes 0..n-1 along one module axis of
    chips of `chip` pixels: with `double`, a chip's inner border pixels cover 2."""
    i = np.arange(n, dtype=np.int64)
    count = np.ones(n, np.int64)
    if not double:
        return i, count
    k, j = i // chip, i % chip
    start = i + 2 * k
    right = (j == chip - 1) & (k < n // chip - 1)
    left = (j == 0) & (k > 0)
    count[right | left] = 2
    start[left] -= 1
    return start, count


def _image_step(vector: Sequence[float], where: str) -> tuple[int, int]:
    """A NeXus direction as a unit (row, column) step of the image (+column along FAST)."""
    col = sum(a * b for a, b in zip(vector, FAST, strict=True))
    row = sum(a * b for a, b in zip(vector, SLOW, strict=True))
    norm = math.hypot(row, col)
    step = (round(row / norm), round(col / norm)) if norm else (0, 0)
    if not norm or math.hypot(row / norm - step[0], col / norm - step[1]) > TILT:
        raise ConfigError(f"{where}: direction {list(vector)} is not along an image axis "
                          "(assembly turns modules by multiples of 90 degrees)")
    return step


@dataclass(frozen=True)
class Geometry:
    """The modules of a detector placed in its image; built by `from_instrument`/`from_file`."""

    placements: tuple[Placement, ...]
    frame_shape: tuple[int, int]  # the frame as received: the stack the modules are read from
    image_shape: tuple[int, int]  # the assembled image
    instrument: Instrument  # what the geometry file said, the beam centre moved with the image

    @classmethod
    def from_file(cls, path: str | Path) -> Geometry:
        """A geometry file (TOML, JSON or CrystFEL .geom) with its modules."""
        return cls.from_instrument(Instrument.from_file(path), where=str(path))

    @classmethod
    def from_spec(cls, value: Any, where: str,
                  frame_shape: Sequence[int] | None = None) -> Geometry:
        """A file path, or the tables of a geometry file given inline (a kernel spec's value)."""
        if isinstance(value, Mapping):
            return cls.from_instrument(Instrument.from_sections(value, where), frame_shape,
                                       where)
        if isinstance(value, (str, Path)):
            return cls.from_instrument(Instrument.from_file(value), frame_shape, str(value))
        raise ConfigError(f"{where}: a geometry file's path or its tables, not {value!r}")

    @classmethod
    def from_instrument(cls, instrument: Instrument, frame_shape: Sequence[int] | None = None,
                        where: str = "geometry") -> Geometry:
        """The plan for `instrument`'s modules (the whole frame as one module when it has
        none; then `frame_shape` is needed). ConfigError naming the module that cannot be
        placed: a tilted one, two overlapping."""
        if not instrument.modules and frame_shape is None:
            raise ConfigError(f"{where}: no modules, and no frame shape to make one of")
        modules = instrument.modules_of(frame_shape or (0, 0))
        placed = []
        for k, m in enumerate(modules):
            label = f"{where}: module {k}"
            fast, slow = _image_step(m.fast, label + " fast"), _image_step(m.slow, label + " slow")
            if fast[0] * slow[0] + fast[1] * slow[1]:
                raise ConfigError(f"{label}: fast {list(m.fast)} and slow {list(m.slow)} are "
                                  "not perpendicular")
            x, y = m.position
            start = (round(y + min(0, fast[0]) + min(0, slow[0])),
                     round(x + min(0, fast[1]) + min(0, slow[1])))
            placed.append(Placement(tuple(m.origin), tuple(m.size), start, fast, slow,
                                    m.chips))
        r0 = min(p.box[0] for p in placed)
        c0 = min(p.box[1] for p in placed)
        placed = [replace(p, start=(p.start[0] - r0, p.start[1] - c0)) for p in placed]
        boxes = [p.box for p in placed]
        for i, a in enumerate(boxes):
            for j in range(i):
                b = boxes[j]
                if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] \
                        and b[1] < a[1] + a[3]:
                    raise ConfigError(f"{where}: modules {j} and {i} overlap in the image "
                                      f"(rows/columns {b[:2]}+{b[2:]} and {a[:2]}+{a[2:]})")
        image = (max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes))
        frame = (max(m.origin[0] + m.size[0] for m in modules),
                 max(m.origin[1] + m.size[1] for m in modules))
        centre = instrument.beam_center
        if centre is not None:
            centre = (centre[0] - c0, centre[1] - r0)
        return cls(tuple(placed), frame, image, replace(instrument, beam_center=centre))

    def check_frame(self, shape: Sequence[int], where: str) -> None:
        """ConfigError unless frames of `shape` are the stack this geometry reads."""
        if tuple(shape) != self.frame_shape:
            sizes = sorted({p.size for p in self.placements})
            raise ConfigError(
                f"{where}: the geometry's {len(self.placements)} module(s) of "
                f"{' / '.join(f'{s[0]}x{s[1]}' for s in sizes)} make frames of "
                f"{self.frame_shape[0]}x{self.frame_shape[1]}, the run's are "
                f"{'x'.join(str(n) for n in shape)}")

    def table(self) -> np.ndarray:
        """int64 (modules, 13), columns `TABLE_COLUMNS`: what the kernels read."""
        return np.array([p.row() for p in self.placements], np.int64).reshape(-1, 13)

    def assemble_mask(self, mask: np.ndarray) -> np.ndarray:
        """A pixel mask of the frame (uint32) as a mask of the image: each pixel's bits on
        every image pixel it covers (a mask is copied, not shared), `GAP` where no module is."""
        out = np.full(self.image_shape, GAP, np.uint32)
        for p in self.placements:
            raw = mask[p.origin[0]: p.origin[0] + p.size[0], p.origin[1]: p.origin[1] + p.size[1]]
            big = raw[np.repeat(*_axis(p, 0))][:, np.repeat(*_axis(p, 1))]
            a, b = np.indices(big.shape)
            out[p.start[0] + a * p.slow[0] + b * p.fast[0],
                p.start[1] + a * p.slow[1] + b * p.fast[1]] = big
        return out

    def gaps(self) -> np.ndarray:
        """bool image: True where no module is."""
        return (self.assemble_mask(np.zeros(self.frame_shape, np.uint32)) & GAP) != 0

    def gap_runs(self) -> np.ndarray:
        """int64 (runs, 2): (first flat index, length) of each run of gap pixels in the image,
        so a kernel fills the gaps without touching the rest."""
        flat = np.concatenate(([0], self.gaps().ravel().astype(np.int8), [0]))
        edges = np.diff(flat)
        starts = np.flatnonzero(edges == 1)
        return np.stack([starts, np.flatnonzero(edges == -1) - starts], 1).astype(np.int64)

    def assembled_instrument(self, run: Instrument | None = None) -> Instrument:
        """How the assembled image is described in NXmx: each module a block of the image, on
        its regular pixel grid (FAST/SLOW), with this geometry's beam centre (its coordinates);
        other values from `run` (the run's geometry), this geometry's filling what it lacks."""
        modules = tuple(Module((b[0], b[1]), (b[2], b[3]), (float(b[1]), float(b[0])))
                        for b in (p.box for p in self.placements))
        base = self.instrument if run is None else self.instrument.merged(run)
        return replace(base, modules=modules, beam_center=self.instrument.beam_center)


def _axis(p: Placement, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw indexes, repeats) along `axis` of a placement: np.repeat's arguments."""
    n = p.size[axis]
    if p.chips is None:
        return np.arange(n), np.ones(n, np.int64)
    return np.arange(n), axis_map(n, p.chips.size[axis], p.chips.double_pixels)[1]
