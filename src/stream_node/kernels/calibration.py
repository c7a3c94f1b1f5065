"""JUNGFRAU calibration on disk: PSI gain-map files, pedestal files, stream-node's own file.

What the gain correction needs per pixel and gain stage (G0, G1, G2) is a pedestal (ADU) and a
gain (ADU/keV): energy (keV) = (ADC - pedestal[g]) / gain[g]. Three sources, one `Calibration`:

* **PSI gain maps** (`gainMaps_M<serial>.bin`): one file per module, 6 x 512 x 1024 float64
  little-endian, planes G0, G1, G2, HG0, HG1, HG2 (HG: the detector's high-gain G0 setting; its
  gains replace G0-G2's with `high_gain`). ADU/keV. The serial comes from the name (`M420`).
* **pedestal files**: `.npy` of (3, ny, nx) frame-shaped or (modules, 3, 512, 1024); or HDF5:
  a stream-node calibration file, any file with a `pedestal` dataset of those shapes, or a PSI
  `jungfrau_utils` pedestal file (`gains`: the G0, G1, G2[, HG0] pedestals frame-shaped, and
  `pixel_mask`).
* **stream-node's calibration file** (`write_calibration`, made by `stream-node pedestal`):

      /                @format = "stream-node calibration", @format_version, @created,
                       @software, @serials (one per module), @detector
      /pedestal        float32 (modules, 3, 512, 1024)  @units "ADU"      @sources @created
      /pedestal_rms    float32 (modules, 3, 512, 1024)  @units "ADU"
      /gain            float32 (modules, 3, 512, 1024)  @units "ADU/keV"  @sources @mode
      /pixel_mask      uint32  (modules, 512, 1024)     @description (`model.pixel_mask` bits)
      /dark_frames     int64 (3,): frames of each gain stage's dark series

  every dataset optional; `@sources` is JSON: [{"path", "size", "modified"}] of the input files.

Module order: module k is the k-th 512 x 1024 block of the frame, row-major: the UDP origin's
`grid` order (`grid=8x1` stacks module k in rows 512k..512k+511). A calibration whose module
count or serials do not match the run is a ConfigError that says what differs.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_node.model.errors import ConfigError, OutputExistsError
from stream_node.model.pixel_mask import DEAD, DESCRIPTION

MODULE = (512, 1024)  # pixels a JUNGFRAU module reads out
STAGES = ("G0", "G1", "G2")
PSI_PLANES = ("G0", "G1", "G2", "HG0", "HG1", "HG2")
FORMAT = "stream-node calibration"
FORMAT_VERSION = "1"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
_SERIAL = re.compile(r"M\d+")
_MAPS = ("pedestal", "gain", "pedestal_rms")


@dataclass
class Calibration:
    """Per-module maps, modules in frame order (see the module docstring); None: not known."""

    pedestal: np.ndarray | None = None  # float32 (modules, 3, 512, 1024), ADU
    gain: np.ndarray | None = None  # float32 (modules, 3, 512, 1024), ADU/keV
    pedestal_rms: np.ndarray | None = None  # float32 (modules, 3, 512, 1024), ADU
    pixel_mask: np.ndarray | None = None  # uint32 (modules, 512, 1024), `model.pixel_mask` bits
    serials: tuple[str, ...] = ()  # one per module ("" unknown), or none known
    sources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # map -> files
    dark_frames: tuple[int, int, int] | None = None  # frames of the G0, G1, G2 dark series
    gain_mode: str = "normal"  # or "high": the HG0-HG2 planes of PSI's files
    created: str = ""

    @property
    def modules(self) -> int:
        """How many modules the maps (or, with none, the serials) describe."""
        for arr in (self.pedestal, self.gain, self.pedestal_rms, self.pixel_mask):
            if arr is not None:
                return int(arr.shape[0])
        return len(self.serials)

    def check(self, modules: int, serials: Sequence[str] | None, where: str) -> None:
        """ConfigError naming what differs from a run of `modules` modules with `serials`
        (a file that names no serials, a pedestal .npy say, is checked by its shape alone)."""
        if self.modules != modules:
            have = f" ({', '.join(self.serials)})" if any(self.serials) else ""
            raise ConfigError(f"{where}: has {self.modules} module(s){have}, the run's frames "
                              f"hold {modules} modules of {MODULE[0]}x{MODULE[1]}")
        if serials is None:
            return
        if len(serials) != modules:
            raise ConfigError(f"{where}: {len(serials)} serials given for {modules} modules")
        if not any(self.serials):
            return
        wrong = [f"module {k} is {have or '?'} here, {want} in the run"
                 for k, (have, want) in enumerate(zip(self.serials, serials, strict=True))
                 if have != want]
        if wrong:
            raise ConfigError(f"{where}: {'; '.join(wrong)}")

    def frame_maps(self, frame_shape: Sequence[int], where: str,
                   serials: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The known maps in the frame's layout: pedestal/gain/pedestal_rms (3, ny, nx),
        pixel_mask (ny, nx); checked against the frame's modules first."""
        grid = module_grid(frame_shape, where)
        self.check(grid[0] * grid[1], serials, where)
        out = {name: to_frame(getattr(self, name), grid) for name in (*_MAPS, "pixel_mask")
               if getattr(self, name) is not None}
        return out


def module_grid(frame_shape: Sequence[int], where: str) -> tuple[int, int]:
    """(rows, columns) of 512 x 1024 modules a frame holds; ConfigError if it holds none."""
    ny, nx = (int(n) for n in frame_shape[-2:])
    if ny % MODULE[0] or nx % MODULE[1] or not ny or not nx:
        raise ConfigError(f"{where}: frames of {ny}x{nx} are no grid of {MODULE[0]}x"
                          f"{MODULE[1]} JUNGFRAU modules")
    return ny // MODULE[0], nx // MODULE[1]


def to_frame(per_module: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(modules, ..., 512, 1024) -> (..., rows*512, cols*1024), module k at grid cell k."""
    rows, cols = grid
    m = per_module.reshape(rows, cols, *per_module.shape[1:])
    lead = per_module.ndim - 3
    m = np.moveaxis(m, (0, 1), (lead, lead + 2))  # (..., rows, 512, cols, 1024)
    return np.ascontiguousarray(m.reshape(*per_module.shape[1:-2], rows * MODULE[0],
                                          cols * MODULE[1]))


def to_modules(frame: np.ndarray) -> np.ndarray:
    """(..., rows*512, cols*1024) -> (modules, ..., 512, 1024); the inverse of `to_frame`."""
    rows, cols = module_grid(frame.shape, "frame")
    lead = frame.ndim - 2
    m = frame.reshape(*frame.shape[:-2], rows, MODULE[0], cols, MODULE[1])
    m = np.moveaxis(m, (lead, lead + 2), (0, 1))
    return np.ascontiguousarray(m.reshape(rows * cols, *frame.shape[:-2], *MODULE))


def source(path: str | Path) -> dict[str, Any]:
    """What a calibration records of an input file: its path, size and modification time."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(st.st_mtime))}


def serial_of(path: str | Path) -> str:
    """The module serial in a PSI file name (gainMaps_M420.bin -> "M420"), or ""."""
    found = _SERIAL.findall(Path(path).stem)
    return found[-1] if found else ""


# -- PSI gain maps -------------------------------------------------------------------------------

def read_psi_gain_maps(paths: Sequence[str | Path], high_gain: bool = False,
                       where: str = "gain maps") -> Calibration:
    """The gains of PSI gain-map files, one per module in module order (planes G0-G2, or
    HG0-HG2 with `high_gain`), as float32 ADU/keV."""
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise ConfigError(f"{where}: a list of gain-map files, one per module in module order")
    planes = slice(3, 6) if high_gain else slice(0, 3)
    size = len(PSI_PLANES) * MODULE[0] * MODULE[1]
    gains = np.empty((len(paths), 3, *MODULE), np.float32)
    for k, path in enumerate(paths):
        try:
            raw = np.fromfile(os.fspath(path), dtype="<f8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {os.fspath(path)!r}: {exc.strerror}") \
                from None
        if raw.size != size:
            raise ConfigError(f"{where}: {os.fspath(path)} holds {raw.size} float64 values; a "
                              f"PSI gain-map file holds {len(PSI_PLANES)} x {MODULE[0]} x "
                              f"{MODULE[1]} = {size} ({', '.join(PSI_PLANES)})")
        gains[k] = raw.reshape(len(PSI_PLANES), *MODULE)[planes]
    return Calibration(gain=gains, serials=tuple(serial_of(p) for p in paths),
                       sources={"gain": [source(p) for p in paths]},
                       gain_mode="high" if high_gain else "normal")


def write_psi_gain_map(path: str | Path, maps: np.ndarray) -> None:
    """One module's gain-map file as PSI writes it: (6, 512, 1024) float64 little-endian."""
    arr = np.asarray(maps, "<f8")
    if arr.shape != (len(PSI_PLANES), *MODULE):
        raise ConfigError(f"a gain-map file holds {(len(PSI_PLANES), *MODULE)}, not {arr.shape}")
    arr.tofile(os.fspath(path))


# -- pedestal files ------------------------------------------------------------------------------

def read_pedestal(path: str | Path, frame_shape: Sequence[int],
                  where: str = "pedestal") -> Calibration:
    """A pedestal file (see the module docstring) as a Calibration for frames of
    `frame_shape`: pedestal, and its RMS and pixel mask when the file has them."""
    p = Path(path)
    if p.suffix.lower() in HDF5_SUFFIXES:
        cal = _read_hdf5_pedestal(p, frame_shape, where)
    else:
        try:
            arr = np.load(os.fspath(p), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot load {os.fspath(p)!r}: {exc}") from None
        cal = Calibration(pedestal=_modules_of(arr, frame_shape, where, p))
    if cal.pedestal is None:
        raise ConfigError(f"{where}: {p} holds no pedestal")
    cal.sources.setdefault("pedestal", [source(p)])
    return cal


def _modules_of(arr: np.ndarray, frame_shape: Sequence[int], where: str,
                path: Path) -> np.ndarray:
    """A (3, ny, nx) frame-shaped or (modules, 3, 512, 1024) pedestal as the latter."""
    ny, nx = (int(n) for n in frame_shape[-2:])
    if arr.ndim == 3 and arr.shape[0] >= 3 and arr.shape[1:] == (ny, nx):
        return to_modules(np.asarray(arr[:3], np.float32))
    if arr.ndim == 4 and arr.shape[1:] == (3, *MODULE):
        return np.asarray(arr, np.float32)
    raise ConfigError(f"{where}: {path} holds an array of shape {arr.shape}; a pedestal is "
                      f"(3, {ny}, {nx}) for these frames or (modules, 3, {MODULE[0]}, "
                      f"{MODULE[1]})")


def _read_hdf5_pedestal(path: Path, frame_shape: Sequence[int], where: str) -> Calibration:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT:
                return read_calibration(path)
            name = "pedestal" if "pedestal" in f else "gains" if "gains" in f else None
            if name is None:
                raise ConfigError(f"{where}: {path} has neither a 'pedestal' dataset nor a "
                                  "PSI pedestal file's 'gains'")
            cal = Calibration(pedestal=_modules_of(f[name][()], frame_shape, where, path))
            if "pixel_mask" in f:  # its own bits: any is a pixel the pedestal run found dead
                mask = np.where(np.asarray(f["pixel_mask"][()]) != 0, np.uint32(DEAD),
                                np.uint32(0))
                cal.pixel_mask = to_modules(mask) if mask.ndim == 2 else mask
            return cal
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc}") from None


# -- stream-node's calibration file --------------------------------------------------------------

def write_calibration(path: str | Path, cal: Calibration, overwrite: bool = False,
                      detector: str = "PSI JUNGFRAU", software: str = "stream-node") -> None:
    """`cal` as stream-node's calibration file (layout in the module docstring); written
    beside and renamed into place, so a reader never sees half a file."""
    import h5py

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: choose another file or pass --overwrite")
    modules = cal.modules
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = cal.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["software"] = software
        f.attrs["detector"] = detector
        f.attrs["serials"] = json.dumps(list(cal.serials) or [""] * modules)
        for name, units in (("pedestal", "ADU"), ("pedestal_rms", "ADU"), ("gain", "ADU/keV")):
            arr = getattr(cal, name)
            if arr is None:
                continue
            ds = f.create_dataset(name, data=np.asarray(arr, np.float32),
                                  chunks=(1, 1, *MODULE))
            ds.attrs["units"] = units
            ds.attrs["stages"] = json.dumps(list(STAGES))
            ds.attrs["sources"] = json.dumps(cal.sources.get(name, []))
            if name == "gain":
                ds.attrs["mode"] = cal.gain_mode
        if cal.pixel_mask is not None:
            ds = f.create_dataset("pixel_mask", data=np.asarray(cal.pixel_mask, np.uint32),
                                  chunks=(1, *MODULE))
            ds.attrs["description"] = DESCRIPTION
        if cal.dark_frames is not None:
            f["dark_frames"] = np.asarray(cal.dark_frames, np.int64)
    os.replace(tmp, path)


def read_calibration(path: str | Path) -> Calibration:
    """A stream-node calibration file; ConfigError if it is not one."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ConfigError(f"calibration {path}: cannot read it as HDF5 ({exc}); PSI gain maps "
                          "go to 'gain_maps', pedestal files to 'pedestal'") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ConfigError(f"calibration {path}: not a stream-node calibration file (no "
                              f"@format = {FORMAT!r}); PSI gain maps go to 'gain_maps', "
                              "pedestal files to 'pedestal'")
        cal = Calibration(created=str(f.attrs.get("created", "")))
        for name in _MAPS:
            if name in f:
                setattr(cal, name, f[name][()])
                cal.sources[name] = json.loads(f[name].attrs.get("sources", "[]"))
        if "gain" in f:
            cal.gain_mode = str(f["gain"].attrs.get("mode", "normal"))
        if "pixel_mask" in f:
            cal.pixel_mask = f["pixel_mask"][()]
        if "dark_frames" in f:
            cal.dark_frames = tuple(int(n) for n in f["dark_frames"][()])  # type: ignore[assignment]
        cal.serials = tuple(json.loads(f.attrs.get("serials", "[]")))
    shapes = {name: getattr(cal, name).shape for name in (*_MAPS, "pixel_mask")
              if getattr(cal, name) is not None}
    if len({s[0] for s in shapes.values()}) > 1 or any(
            s[-2:] != MODULE for s in shapes.values()):
        raise ConfigError(f"calibration {path}: inconsistent maps {shapes}")
    return cal
