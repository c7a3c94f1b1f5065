"""The NeXus NXmx part of a run file: entry, beam, detector with its modules, sample goniometer.

What a detector said about itself at START (DECTRIS' header fields, with their units) goes
into the NXdetector group as NXmx names it; the run's `Instrument` (from the header and the
source's geometry file) then writes the fields DIALS' NXmx reader needs: the beam's wavelength,
the detector's translation and modules with their pixel axes, the goniometer's per-frame
values. What nobody said is left out, never invented (`missing_nxmx` names it). Stream-node's
own bookkeeping (frames, ledger, counters) is the writer's (`storage.writer`); docs/file-format.md
describes both.

When the workers' kernel chain changes what a frame is an image of, the file says so: the
chain's pixel mask (bad pixels of its calibration, gaps of an assembly) becomes `pixel_mask`, and
an assembled image's modules are blocks of that image (`kernels.chain.output_layout`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from stream_node._version import __version__
from stream_node.kernels.compression import hdf5_filter
from stream_node.model.errors import brief
from stream_node.model.instrument import FAST, SLOW, Instrument, Module
from stream_node.model.pixel_mask import DESCRIPTION as PIXEL_MASK_DESCRIPTION

if TYPE_CHECKING:
    from stream_node.kernels.chain import OutputLayout

log = logging.getLogger(__name__)

ENTRY = "/entry"
BEAM_FIELDS = frozenset({"incident_wavelength", "incident_energy"})
DETECTOR = "/entry/instrument/detector"
TRANSLATION = f"{DETECTOR}/transformations/translation"
PIXEL_MASK_BITS = PIXEL_MASK_DESCRIPTION
# Instrument value -> (NXdetector field, units); None units: a plain number or text.
DETECTOR_FIELDS = (
    ("description", "description", None), ("serial_number", "serial_number", None),
    ("distance", "distance", "m"), ("sensor_material", "sensor_material", None),
    ("sensor_thickness", "sensor_thickness", "m"),
    ("saturation_value", "saturation_value", None),
    ("underload_value", "underload_value", None), ("count_time", "count_time", "s"),
    ("frame_time", "frame_time", "s"), ("bit_depth_readout", "bit_depth_readout", None),
    ("detector_readout_time", "detector_readout_time", "s"),
)
# What an NXmx reader (DIALS' nxmx, dxtbx) looks for, by path under /entry; `inspect` names the
# ones a file lacks.
NXMX_PATHS = (
    "definition", "instrument/beam/incident_wavelength", "instrument/detector/depends_on",
    "instrument/detector/module/fast_pixel_direction",
    "instrument/detector/module/slow_pixel_direction",
    "instrument/detector/module/module_offset", "instrument/detector/sensor_material",
    "instrument/detector/sensor_thickness", "instrument/detector/saturation_value",
    "instrument/detector/count_time", "instrument/detector/frame_time",
    "instrument/detector/bit_depth_readout", "sample/depends_on",
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_entry(f: h5py.File, metadata: dict[str, Any]) -> h5py.Group:
    """/entry with the run's metadata as attributes; `describe_entry` adds the rest of NXmx."""
    f.attrs["default"] = "entry"  # the NeXus @default chain: file -> entry -> data -> frames
    entry = f.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "data"
    entry.attrs["software"] = "stream-node"
    entry.attrs["software_version"] = __version__
    for key, value in metadata.items():
        entry.attrs[key] = _attr(value)
    entry["definition"] = "NXmx"
    entry["start_time"] = now()
    entry.create_dataset("end_time", shape=(), dtype=h5py.string_dtype(length=32))
    return entry


def describe_entry(entry: h5py.Group, metadata: dict[str, Any], frame_shape: tuple[int, ...],
                   dtype: np.dtype, detector: dict[str, Any], instrument: Instrument | None,
                   frames: int) -> None:
    """The rest of /entry as NXmx: the beam, the detector (what the detector's header said,
    then the instrument's geometry), the sample's goniometer with a value per frame (`frames`
    of them, resized by `finish_axes` once the count is known)."""
    inst = _group(entry, "instrument", "NXinstrument")
    det = _group(inst, "detector", "NXdetector")
    det["frame_shape"] = np.array(frame_shape, np.int64)
    det["bit_depth_image"] = dtype.itemsize * 8
    for key, value in detector.items():
        if key not in BEAM_FIELDS:  # NXmx keeps them in NXbeam, which the instrument fills
            _detector_field(det, key, value)
    layout = _chain_layout(metadata)
    if layout is not None and layout.pixel_mask is not None \
            and layout.pixel_mask.shape == tuple(frame_shape):
        _pixel_mask(det, layout.pixel_mask)
    if "pixel_mask" in det:
        det["pixel_mask"].attrs["description"] = PIXEL_MASK_BITS
    if layout is not None and layout.geometry is not None \
            and layout.geometry.image_shape == tuple(frame_shape):
        instrument = layout.geometry.assembled_instrument(instrument)
    if instrument is not None:
        _beam(inst, instrument)
        _detector(det, instrument, frame_shape)
        _goniometer(entry, instrument, frames)


def _chain_layout(metadata: dict[str, Any]) -> OutputLayout | None:
    """The workers' chain's `OutputLayout`, from START's kernels and input geometry; None for
    a run without kernels, or (with a warning) when a map or geometry the chain names cannot
    be read here (the collector may run where the workers' files are not)."""
    start = metadata.get("start") or {}
    kernels, inp = start.get("kernels"), start.get("input") or {}
    if not kernels or "shape" not in inp:
        return None
    from stream_node.kernels.chain import output_layout  # Numba: only for runs with kernels

    try:
        return output_layout(kernels, inp["shape"], inp.get("dtype", "uint16"))
    except Exception as exc:  # metadata only: the source has checked the chain; never fail a run
        log.warning("collector: the file gets no pixel mask or assembled module geometry from "
                    "the kernel chain: %s", brief(exc) if isinstance(exc, OSError) else exc)
        return None


def _pixel_mask(det: h5py.Group, mask: np.ndarray) -> None:
    """The chain's pixel mask, ORed into one the detector's header gave for the same pixels."""
    if "pixel_mask" in det:
        if det["pixel_mask"].shape == mask.shape:
            mask = mask | det["pixel_mask"][()].astype(np.uint32)
        del det["pixel_mask"]
    det.create_dataset("pixel_mask", data=mask.astype(np.uint32), chunks=mask.shape,
                       **hdf5_filter())


def finish_axes(entry: h5py.Group, instrument: Instrument | None, count: int) -> None:
    """The goniometer's per-frame values for the `count` frames the run has."""
    if instrument is None:
        return
    for axis in instrument.goniometer:
        values = axis.start + axis.increment * np.arange(count, dtype=np.float64)
        for name, data in ((axis.name, values), (f"{axis.name}_end", values + axis.increment)):
            ds = entry[f"sample/transformations/{name}"]
            ds.resize((count,))
            ds[:] = data


def missing_nxmx(entry: h5py.Group) -> list[str]:
    """The NXmx fields a reader looks for that this entry lacks (paths under /entry)."""
    return [path for path in NXMX_PATHS if path not in entry]


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _field(group: h5py.Group, name: str, value: Any, units: str | None = None) -> h5py.Dataset:
    if name in group:  # the instrument's value wins over the header's copy of it
        del group[name]
    group[name] = value
    if units is not None:
        group[name].attrs["units"] = units
    return group[name]


def _transformation(group: h5py.Group, name: str, value: Any, kind: str, units: str,
                    vector: tuple[float, ...], depends_on: str,
                    offset: tuple[float, ...] | None = None) -> h5py.Dataset:
    ds = _field(group, name, value, units)
    ds.attrs["transformation_type"] = kind
    ds.attrs["vector"] = np.asarray(vector, np.float64)
    ds.attrs["depends_on"] = depends_on
    if offset is not None:
        ds.attrs["offset"] = np.asarray(offset, np.float64)
        ds.attrs["offset_units"] = units
    return ds


def _beam(inst: h5py.Group, instrument: Instrument) -> None:
    if instrument.wavelength is None and instrument.flux is None:
        return
    beam = _group(inst, "beam", "NXbeam")
    if instrument.wavelength is not None:
        _field(beam, "incident_wavelength", instrument.wavelength, "angstrom")
        _field(beam, "incident_energy", instrument.energy, "eV")
    if instrument.flux is not None:
        _field(beam, "flux", instrument.flux, "1/s")


def _detector(det: h5py.Group, instrument: Instrument, frame_shape: tuple[int, ...]) -> None:
    for attr, name, units in DETECTOR_FIELDS:
        value = getattr(instrument, attr)
        if value is not None:
            _field(det, name, value, units)
    if instrument.beam_center is not None:
        _field(det, "beam_center_x", instrument.beam_center[0], "pixel")
        _field(det, "beam_center_y", instrument.beam_center[1], "pixel")
    if instrument.pixel_size is not None:
        _field(det, "x_pixel_size", instrument.pixel_size[0], "m")
        _field(det, "y_pixel_size", instrument.pixel_size[1], "m")
    # The detector's place: a translation along the beam by the distance, then each module's
    # offset in the detector plane, then its pixel axes. Only what is known is written: a
    # module needs its pixel size, its offset the beam centre, the chain the distance.
    parent = "."
    if instrument.distance is not None:
        trans = _group(det, "transformations", "NXtransformations")
        _transformation(trans, "translation", instrument.distance, "translation", "m",
                        (0.0, 0.0, 1.0), ".")
        parent = TRANSLATION
    _field(det, "depends_on", parent)
    if instrument.pixel_size is None:
        return
    modules = instrument.modules_of(frame_shape)
    for k, module in enumerate(modules):
        name = "module" if len(modules) == 1 else f"module{k + 1:02d}"
        _module(_group(det, name, "NXdetector_module"), f"{DETECTOR}/{name}", module,
                instrument, parent)


def _module(group: h5py.Group, path: str, module: Module, instrument: Instrument,
            parent: str) -> None:
    px, py = instrument.pixel_size  # type: ignore[misc]
    _field(group, "data_origin", np.asarray(module.origin, np.int64))
    _field(group, "data_size", np.asarray(module.size, np.int64))
    _field(group, "data_stride", np.ones(2, np.int64))
    axes_parent = parent
    if instrument.beam_center is not None:
        # Where the module's first pixel sits relative to the beam's point on the detector
        # plane: the beam centre and the module's position are pixel coordinates along FAST/SLOW.
        bx, by = instrument.beam_center
        x, y = module.position
        offset = -((bx - x) * px * np.asarray(FAST)) - ((by - y) * py * np.asarray(SLOW))
        norm = float(np.linalg.norm(offset))
        vector = tuple(offset / norm) if norm else (1.0, 0.0, 0.0)
        _transformation(group, "module_offset", norm, "translation", "m", vector, parent,
                        (0.0, 0.0, 0.0))
        axes_parent = f"{path}/module_offset"
    _transformation(group, "fast_pixel_direction", px, "translation", "m", module.fast,
                    axes_parent, (0.0, 0.0, 0.0))
    _transformation(group, "slow_pixel_direction", py, "translation", "m", module.slow,
                    axes_parent, (0.0, 0.0, 0.0))


def _goniometer(entry: h5py.Group, instrument: Instrument, frames: int) -> None:
    if not instrument.goniometer:
        return
    sample = _group(entry, "sample", "NXsample")
    trans = _group(sample, "transformations", "NXtransformations")
    axes = instrument.goniometer
    paths = [f"{ENTRY}/sample/transformations/{a.name}" for a in axes]
    _field(sample, "depends_on", paths[0])
    for k, axis in enumerate(axes):
        units = "deg" if axis.kind == "rotation" else "m"
        values = axis.start + axis.increment * np.arange(frames, dtype=np.float64)
        depends_on = paths[k + 1] if k + 1 < len(axes) else "."
        ds = trans.create_dataset(axis.name, data=values, maxshape=(None,), chunks=(4096,))
        for key, value in (("transformation_type", axis.kind), ("units", units),
                           ("vector", np.asarray(axis.vector, np.float64)),
                           ("depends_on", depends_on)):
            ds.attrs[key] = value
        end = trans.create_dataset(f"{axis.name}_end", data=values + axis.increment,
                                   maxshape=(None,), chunks=(4096,))
        end.attrs["units"] = units
        _field(trans, f"{axis.name}_increment_set", axis.increment, units)


def _attr(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) else json.dumps(value, default=_summary)


def _summary(value: Any) -> str:
    """JSON for what JSON cannot hold: the bytes of an array in the detector metadata (stored
    as a dataset in the NXdetector group instead) are named by their size."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{memoryview(value).nbytes} bytes>"
    return repr(value)


def _detector_field(det: h5py.Group, key: str, value: Any) -> None:
    """One entry of START's "detector" metadata in the NXdetector group: {"value", "units"} is a
    dataset with a units attribute (NXmx), a packed array (see protocols.chunks.packed_array) a
    compressed dataset, a list a numeric array when it is one, a nested map a subgroup."""
    if key in det:  # the writer's own fields (frame_shape, bit_depth_readout) give way
        del det[key]
    if isinstance(value, dict) and "__array__" in value:
        from stream_node.kernels.compression import decompress

        array = decompress(value["data"], tuple(value["shape"]), np.dtype(value["dtype"]))
        det.create_dataset(key, data=array, chunks=array.shape or None, **hdf5_filter())
    elif isinstance(value, dict) and "value" in value:
        _detector_field(det, key, value["value"])
        for attr, text in value.items():
            if attr != "value" and text is not None:
                det[key].attrs[attr] = text
    elif isinstance(value, dict):
        group = det.create_group(key)
        group.attrs["NX_class"] = "NXcollection"
        for name, item in value.items():
            _detector_field(group, str(name), item)
    elif isinstance(value, (list, tuple)):
        array = np.asarray(value)
        det[key] = array if array.dtype.kind in "biuf" else json.dumps(value)
    elif value is None:
        return
    else:
        det[key] = value
