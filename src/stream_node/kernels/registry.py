"""The built-in kernels by name, and how one spec entry becomes a `Stage`.

A spec entry is a dict: ``{"kernel": NAME, **params}``. NAME is a built-in (the keys of
`KERNELS`) or ``python:package.module.function``, a user kernel. Each builder checks its
parameters, loads its maps (a ``.npy`` path or an array; for the gain correction also PSI
gain-map files, pedestal files and calibration files, `kernels.calibration`; for assembly a
geometry file, `model.geometry`) and checks their shapes once, here, so that everything wrong
with a configuration is a `ConfigError` before the first frame, naming the stage and the
parameter. Each stage also knows what its output's pixel mask is (`Stage.output_mask`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numba
import numpy as np

from stream_node.kernels import _numba, calibration, reference
from stream_node.kernels.geometry import azimuthal_bin_index, checked_rois
from stream_node.kernels.stage import GainStage, PedestalStage, Stage, aligned_copy
from stream_node.model.errors import ConfigError
from stream_node.model.geometry import Geometry
from stream_node.model.pixel_mask import USER

USER_PREFIX = "python:"
# Frame dtypes the summing kernels accept: their sums are exact in int64 / float64.
SUMMABLE = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16", "int32",
                                       "float32", "float64"))
PHOTON_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int16", "int32"))

Builder = Callable[["_Params", tuple[int, ...], np.dtype, ModuleType], Stage]


@dataclass(frozen=True)
class KernelInfo:
    """A built-in kernel: its name in a spec, its two implementations, and its parameters."""

    name: str
    reference: Callable[..., int]
    fast: Callable[..., int]
    params: tuple[str, ...]  # what a spec entry may give (required ones have no default)
    build: Builder

    @property
    def summary(self) -> str:
        return (self.reference.__doc__ or "").strip().split("\n")[0]


class _Params:
    """A spec entry's parameters for one stage; every complaint names the stage and parameter."""

    def __init__(self, label: str, entry: Mapping[str, Any], known: tuple[str, ...]) -> None:
        self.label = label
        self.values = {k: v for k, v in entry.items() if k != "kernel"}
        unknown = sorted(set(self.values) - set(known))
        if unknown:
            raise ConfigError(f"{label}: unknown parameter(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known) or 'none'})")

    def error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.label}: parameter {key!r} {what}")

    def has(self, key: str) -> bool:
        return self.values.get(key) is not None

    def required(self, key: str) -> Any:
        if not self.has(key):
            raise ConfigError(f"{self.label}: parameter {key!r} is required")
        return self.values[key]

    def number(self, key: str, default: float | None = None, *, positive: bool = False,
               allow_nan: bool = False) -> float:
        raw = self.values.get(key)
        if raw is None:
            raw = self.required(key) if default is None else default
        if isinstance(raw, bool):
            raise self.error(key, f"must be a number, not {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise self.error(key, f"must be a number, not {raw!r}") from None
        if np.isnan(value) and not allow_nan:
            raise self.error(key, "must not be NaN")
        if positive and not (value > 0 and np.isfinite(value)):
            raise self.error(key, f"must be a positive finite number, not {raw!r}")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        raw = self.values.get(key, default)
        if raw is None:
            raw = self.required(key)
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)) or raw < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, not {raw!r}")
        return int(raw)

    def flag(self, key: str, default: bool = False) -> bool:
        raw = self.values.get(key, default)
        if not isinstance(raw, (bool, np.bool_)):
            raise self.error(key, f"must be true or false, not {raw!r}")
        return bool(raw)

    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type,
              required: bool = True) -> np.ndarray | None:
        """A map given as a .npy path or an array, checked for `shape`, as an aligned copy."""
        if not self.has(key):
            if required:
                raise ConfigError(f"{self.label}: parameter {key!r} is required "
                                  f"(a .npy path or an array of shape {shape})")
            return None
        arr = load_map(self.values[key], f"{self.label}: parameter {key!r}")
        if arr.shape != shape:
            raise self.error(key, f"has shape {arr.shape}, expected {shape}")
        if arr.dtype.kind not in "biuf":
            raise self.error(key, f"has dtype {arr.dtype}, expected numbers")
        return aligned_copy(arr, dtype)


def load_map(value: Any, what: str) -> np.ndarray:
    """An array given directly, or loaded from a .npy file (no pickles)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return np.load(os.fspath(value), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{what}: cannot load {os.fspath(value)!r}: {exc}") from None
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise ConfigError(f"{what} must be a .npy path or an array, not {type(value).__name__}")


def _need_dtype(label: str, dtype: np.dtype, allowed: tuple[np.dtype, ...]) -> None:
    if dtype not in allowed:
        raise ConfigError(f"{label}: input frames of dtype {dtype} are not supported "
                          f"(supported: {', '.join(str(d) for d in allowed)})")


def _mask(p: _Params, shape: tuple[int, ...], required: bool) -> np.ndarray | None:
    return p.array("mask", shape, np.uint8, required=required)


def _serials(p: _Params) -> list[str] | None:
    raw = p.values.get("serials")
    if raw is None:
        return None
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)) or not all(
            isinstance(v, str) for v in raw):
        raise p.error("serials", f"must be a list of module serials in module order, not {raw!r}")
    return list(raw)


def _path_param(p: _Params, key: str) -> str:
    value = p.values[key]
    if not isinstance(value, (str, os.PathLike)):
        raise p.error(key, f"must be a file path, not {type(value).__name__}")
    return os.fspath(value)


def _gain_inputs(p: _Params, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray | None]:
    """(pedestal, gain, pixel-mask bits) in the frame's layout, from every source a spec may
    name: a calibration file first, then gain_maps / gain and pedestal replacing its maps, and
    mask adding to its bad pixels (as `model.pixel_mask.USER`)."""
    serials = _serials(p)
    maps: dict[str, np.ndarray] = {}
    if p.has("calibration"):
        path = _path_param(p, "calibration")
        where = f"{p.label}: parameter 'calibration' ({path})"
        try:
            cal = calibration.read_calibration(path)
        except ConfigError as exc:
            raise ConfigError(f"{p.label}: parameter 'calibration': {exc}") from None
        maps = cal.frame_maps(shape, where, serials)
    if p.has("gain_maps"):
        if p.has("gain"):
            raise ConfigError(f"{p.label}: give 'gain' (a .npy map) or 'gain_maps' (PSI files), "
                              "not both")
        where = f"{p.label}: parameter 'gain_maps'"
        psi = calibration.read_psi_gain_maps(p.values["gain_maps"], p.flag("high_gain"), where)
        maps["gain"] = psi.frame_maps(shape, where, serials)["gain"]
    elif p.flag("high_gain"):
        raise p.error("high_gain", "selects planes of PSI files: give 'gain_maps' too")
    if p.has("pedestal"):
        value = p.values["pedestal"]
        if isinstance(value, (str, os.PathLike)) and os.fspath(value).lower().endswith(
                calibration.HDF5_SUFFIXES):
            where = f"{p.label}: parameter 'pedestal' ({os.fspath(value)})"
            found = calibration.read_pedestal(value, shape, where).frame_maps(shape, where,
                                                                              serials)
            maps["pedestal"] = found["pedestal"]
            if "pixel_mask" in found and "pixel_mask" not in maps:
                maps["pixel_mask"] = found["pixel_mask"]
        else:
            maps["pedestal"] = p.array("pedestal", (3, *shape), np.float32)  # type: ignore
    if p.has("gain"):
        maps["gain"] = p.array("gain", (3, *shape), np.float32)  # type: ignore[assignment]
    for key, what in (("pedestal", "a .npy or HDF5 pedestal file"), ("gain", "a .npy map or "
                                                                     "'gain_maps'")):
        if key not in maps:
            raise ConfigError(f"{p.label}: parameter {key!r} is required ({what}, an array of "
                              f"shape {(3, *shape)}, or a 'calibration' that has it)")
    bits = maps.get("pixel_mask")
    user = _mask(p, shape, required=False)
    if user is not None:
        added = np.where(user != 0, np.uint32(USER), np.uint32(0))
        bits = added if bits is None else bits | added
    return maps["pedestal"], maps["gain"], None if bits is None else bits.astype(np.uint32)


def _build_gain_correction(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                           impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, (np.dtype(np.uint16),))
    pedestal, gain, bits = _gain_inputs(p, shape)
    if p.has("photon_energy_kev"):  # photons out instead of keV: the gains scaled once, here
        gain = gain * np.float32(p.number("photon_energy_kev", positive=True))
    pedestal, gain = aligned_copy(pedestal, np.float32), aligned_copy(gain, np.float32)
    mask = None if bits is None else aligned_copy((bits != 0).astype(np.uint8))
    fill = p.number("fill", 0.0, allow_nan=True)
    parallel = p.flag("parallel")
    n_masked = 0 if mask is None else int(np.count_nonzero(mask))
    if impl is not _numba:
        return GainStage(p.label, "gain_correction", impl.gain_correction,
                         (pedestal, gain, mask, fill), shape, np.dtype(np.float32),
                         n_masked=n_masked, mask_bits=bits)
    # The Numba kernel reads the G1/G2 maps as (pedestal, gain) pairs: interleaved once, here;
    # its index buffers too (a row per thread), so that no frame allocates.
    fn = _numba.gain_correction_packed_parallel if parallel else _numba.gain_correction_packed
    scratch = _numba.gain_scratch(numba.get_num_threads() if parallel else 1)
    return GainStage(p.label, "gain_correction", fn,
                     (*_numba.pack_gain_maps(pedestal, gain), mask, fill, scratch), shape,
                     np.dtype(np.float32), n_masked=n_masked, mask_bits=bits)


def _build_pedestal_update(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                           impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, (np.dtype(np.uint16),))
    window = p.integer("window", 100)
    initial = p.array("pedestal", (3, *shape), np.float32, required=False)
    counts = aligned_copy(np.zeros((3, *shape), np.uint32))
    if initial is None:
        pedestal = aligned_copy(np.zeros((3, *shape), np.float32))
    else:  # as if `window` dark frames had made it: the update is a moving average at once
        pedestal = initial
        counts[...] = window
    return PedestalStage(p.label, "pedestal_update", impl.pedestal_update, pedestal, counts,
                         window)


def _build_apply_mask(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                      impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, SUMMABLE)
    mask = _mask(p, shape, required=True)
    fill = p.number("fill", 0.0, allow_nan=dtype.kind == "f")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if fill != int(fill) or not info.min <= fill <= info.max:
            raise p.error("fill", f"must be an integer a {dtype} holds, not {fill!r}")
    assert mask is not None
    return Stage(p.label, "apply_mask", impl.apply_mask, (mask, fill), shape, dtype,
                 count_name="masked", inplace=True,
                 mask_bits=np.where(mask != 0, np.uint32(USER), np.uint32(0)))


def _build_photonise(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                     impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, (np.dtype(np.float32), np.dtype(np.float64)))
    photon_energy = p.number("photon_energy_kev", positive=True)
    threshold = p.number("threshold", 0.5)
    if not 0 < threshold <= 1:
        raise p.error("threshold", f"must be in (0, 1] photon energies, not {threshold!r}")
    try:
        out_dtype = np.dtype(p.values.get("dtype", "uint16"))
    except TypeError:
        raise p.error("dtype", f"is not a dtype: {p.values['dtype']!r}") from None
    if out_dtype not in PHOTON_DTYPES:
        raise p.error("dtype", f"must be one of {', '.join(str(d) for d in PHOTON_DTYPES)}, "
                               f"not {out_dtype}")
    return Stage(p.label, "photonise", impl.photonise, (photon_energy, threshold), shape,
                 out_dtype, count_name="clipped")


def binned_dtype(dtype: np.dtype) -> np.dtype:
    """Output dtype of binning: floats keep theirs; integers widen so 16 pixels' sum fits."""
    if dtype.kind == "f":
        return dtype
    wide = 4 if dtype.itemsize <= 2 else 8
    return np.dtype(f"{'u' if dtype.kind == 'u' else 'i'}{wide}")


def _binner(factor: int) -> Builder:
    name = f"bin{factor}x{factor}"

    def build(p: _Params, shape: tuple[int, ...], dtype: np.dtype, impl: ModuleType) -> Stage:
        _need_dtype(p.label, dtype, SUMMABLE)
        out_shape = (shape[0] // factor, shape[1] // factor)
        if 0 in out_shape:
            raise ConfigError(f"{p.label}: a {shape[0]}x{shape[1]} frame has no full "
                              f"{factor}x{factor} block")
        return Stage(p.label, name, getattr(impl, name), (), out_shape, binned_dtype(dtype),
                     mask_fn=lambda mask: _or_blocks(mask, factor))

    return build


def _or_blocks(mask: np.ndarray, factor: int) -> np.ndarray:
    """A pixel mask binned as the pixels are: a binned pixel has every bit of its block."""
    ny, nx = mask.shape[0] // factor, mask.shape[1] // factor
    blocks = mask[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor)
    return np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=3), axis=1)


def _gap_value(p: _Params, dtype: np.dtype) -> float:
    """`fill` of the assembly's gaps: by default NaN for floats, the dtype's largest value for
    unsigned integers (as DECTRIS marks gaps), -1 for signed ones."""
    if dtype.kind == "f":
        return p.number("fill", float("nan"), allow_nan=True)
    info = np.iinfo(dtype)
    fill = p.number("fill", info.max if dtype.kind == "u" else -1)
    if fill != int(fill) or not info.min <= fill <= info.max:
        raise p.error("fill", f"must be an integer a {dtype} holds, not {fill!r}")
    return fill


def _build_assemble(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                    impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, SUMMABLE)
    where = f"{p.label}: parameter 'geometry'"
    geometry = Geometry.from_spec(p.required("geometry"), where, shape)
    geometry.check_frame(shape, where)
    fill = _gap_value(p, dtype)
    return Stage(p.label, "assemble", impl.assemble,
                 (aligned_copy(geometry.table()), aligned_copy(geometry.gap_runs()), fill),
                 geometry.image_shape, dtype, mask_fn=geometry.assemble_mask, geometry=geometry)


def _build_roi_sums(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                    impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, SUMMABLE)
    rois = checked_rois(p.required("rois"), shape)  # type: ignore[arg-type]
    return Stage(p.label, "roi_sums", impl.roi_sums, (rois,), (len(rois),),
                 np.dtype(np.float64))


def _build_azimuthal_integrate(p: _Params, shape: tuple[int, ...], dtype: np.dtype,
                               impl: ModuleType) -> Stage:
    _need_dtype(p.label, dtype, SUMMABLE)
    if p.has("bin_index"):
        if p.has("beam_centre") or p.has("r_max"):
            raise ConfigError(f"{p.label}: give either 'bin_index' or 'beam_centre' (with "
                              "'nbins', 'r_max', 'mask'), not both")
        index = p.array("bin_index", shape, np.int32)
        assert index is not None
        nbins = p.integer("nbins", int(index.max()) + 1 if index.size else 1)
        if index.size and index.max() >= nbins:
            raise p.error("bin_index", f"has bin {int(index.max())}, beyond nbins = {nbins}")
    else:
        centre = p.required("beam_centre")
        if not isinstance(centre, (list, tuple, np.ndarray)) or len(centre) != 2:
            raise p.error("beam_centre", f"must be [row, column], not {centre!r}")
        nbins = p.integer("nbins")
        r_max = p.number("r_max", positive=True) if p.has("r_max") else None
        index = aligned_copy(azimuthal_bin_index(shape, [float(c) for c in centre], nbins,
                                                 r_max, _mask(p, shape, required=False)))
    return Stage(p.label, "azimuthal_integrate", impl.azimuthal_integrate, (index,),
                 (2, nbins), np.dtype(np.float64), count_name="nonfinite")


def _info(name: str, params: tuple[str, ...], build: Builder) -> KernelInfo:
    return KernelInfo(name, getattr(reference, name), getattr(_numba, name), params, build)


KERNELS: Mapping[str, KernelInfo] = MappingProxyType({k.name: k for k in (
    _info("gain_correction", ("pedestal", "gain", "mask", "fill", "parallel", "calibration",
                              "gain_maps", "high_gain", "serials", "photon_energy_kev"),
          _build_gain_correction),
    _info("pedestal_update", ("window", "pedestal"), _build_pedestal_update),
    _info("apply_mask", ("mask", "fill"), _build_apply_mask),
    _info("photonise", ("photon_energy_kev", "threshold", "dtype"), _build_photonise),
    _info("bin2x2", (), _binner(2)),
    _info("bin4x4", (), _binner(4)),
    _info("roi_sums", ("rois",), _build_roi_sums),
    _info("azimuthal_integrate", ("beam_centre", "nbins", "r_max", "mask", "bin_index"),
          _build_azimuthal_integrate),
    _info("assemble", ("geometry", "fill"), _build_assemble),
)})


def load_user_kernel(name: str) -> Callable[..., Any]:
    """The function ``python:package.module.function`` names; ConfigError if there is none."""
    path = name[len(USER_PREFIX):]
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{name}: a user kernel is 'python:package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs user code: any failure is a configuration error
        raise ConfigError(f"{name}: cannot import {module_name!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{name}: module {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def _build_user(label: str, name: str, entry: Mapping[str, Any], shape: tuple[int, ...],
                dtype: np.dtype) -> Stage:
    """``fn(frame, out, **params)``; "out_shape"/"out_dtype" (default: the input's) size `out`,
    and a parameter given as a ``.npy`` path is loaded once, here."""
    fn = load_user_kernel(name)
    params = {k: v for k, v in entry.items() if k not in ("kernel", "out_shape", "out_dtype")}
    for key, value in params.items():
        if isinstance(value, (str, os.PathLike)) and os.fspath(value).endswith(".npy"):
            params[key] = load_map(value, f"{label}: parameter {key!r}")
    try:
        out_shape = tuple(int(n) for n in entry.get("out_shape", shape))
        out_dtype = np.dtype(entry.get("out_dtype", dtype))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: bad out_shape/out_dtype: {exc}") from None
    jitted = hasattr(fn, "py_func")  # a Numba dispatcher: compile it at build, not on a frame
    return Stage(label, name, fn, (), out_shape, out_dtype, kwargs=params, count_name="count",
                 jitted=jitted)


def build_stage(entry: Any, label_of: Callable[[str], str], shape: tuple[int, ...],
                dtype: np.dtype, backend: str) -> Stage:
    """The `Stage` for one spec entry, fed frames of `shape` and `dtype`."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("kernel"), str):
        raise ConfigError(f"a kernel spec entry is a dict with a 'kernel' name, not {entry!r}")
    name = entry["kernel"]
    label = label_of(name)
    if name.startswith(USER_PREFIX):
        return _build_user(label, name, entry, shape, dtype)
    info = KERNELS.get(name)
    if info is None:
        raise ConfigError(f"unknown kernel {name!r} (built-in: {', '.join(KERNELS)}; or "
                          "'python:package.module.function')")
    impl = _numba if backend == "numba" else reference
    return info.build(_Params(label, entry, info.params), shape, dtype, impl)
