"""The NeXus part of a run file: the entry, its instrument and the detector group.

What a detector said about itself at START (DECTRIS' header fields, with their units) goes
into the NXdetector group as NXmx names it; stream-node's own bookkeeping (frames, ledger,
counters) is the writer's (`storage.writer`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import h5py
import numpy as np

from stream_node._version import __version__
from stream_node.kernels.compression import hdf5_filter


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_entry(f: h5py.File, metadata: dict[str, Any], frame_shape: tuple[int, ...],
                dtype: np.dtype, detector: dict[str, Any]) -> h5py.Group:
    """/entry with the run's metadata as attributes and /entry/instrument/detector."""
    entry = f.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["software"] = "stream-node"
    entry.attrs["software_version"] = __version__
    for key, value in metadata.items():
        entry.attrs[key] = _attr(value)
    entry["start_time"] = now()
    entry.create_dataset("end_time", shape=(), dtype=h5py.string_dtype(length=32))
    inst = entry.create_group("instrument")
    inst.attrs["NX_class"] = "NXinstrument"
    det = inst.create_group("detector")
    det.attrs["NX_class"] = "NXdetector"
    det["frame_shape"] = np.array(frame_shape, np.int64)
    det["bit_depth_readout"] = dtype.itemsize * 8
    for key, value in detector.items():
        _detector_field(det, key, value)
    return entry


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
