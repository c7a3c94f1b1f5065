"""DECTRIS SIMPLON stream v1 (`dectris+tcp://DCU:9999`): JSON multipart messages over PUSH/PULL.

A series, as the SIMPLON API manual describes it, is three kinds of multipart message:

    header  [{"htype": "dheader-1.0", "series": S, "header_detail": "none|basic|all"},
             basic and all: the detector configuration (JSON),
             all: {"htype": "dflatfield-1.0", "shape": [x, y], "type": "float32"}, blob,
                  {"htype": "dpixelmask-1.0", "shape": [x, y], "type": "uint32"}, blob,
                  {"htype": "dcountrate_table-1.0", "shape": [x, y], "type": "float32"}, blob,
             optionally the header appendix]
    image   [{"htype": "dimage-1.0", "series": S, "frame": N, "hash": MD5},
             {"htype": "dimage_d-1.0", "shape": [x, y], "type": "uint16", "encoding": E,
              "size": BYTES},
             the data blob,
             {"htype": "dconfig-1.0", "start_time": NS, "stop_time": NS, "real_time": NS},
             optionally the image appendix]
    end     [{"htype": "dseries_end-1.0", "series": S}]

`hash` is the MD5 of the data blob as sent; `?verify_hash=1` checks it (off by default: MD5 runs at
about 1 GB/s, 0.9 ms for a 0.8 MB compressed frame and 4.7 ms for a raw 4 MiB one, more than
the rest of the ingest path) and a frame whose blob does not match is recorded missing; an image
whose `hash` is empty or absent (hashing off at the detector) is written, counted `hash_unchecked`.
Shapes are [x, y] (width first). Encodings: `<` raw little-endian; `lz4<` one LZ4 block
(decompressed here into a raw frame); `bs8-lz4<`, `bs16-lz4<`, `bs32-lz4<` bitshuffle/LZ4 in the
HDF5 filter-32008 framing, which go to the file untouched. Frame N becomes frame id N, the series
id is the run's `series_id`, dconfig's times go to the per-frame datasets `start_time_ns`,
`stop_time_ns`, `real_time_ns`, and the configuration to the file's NXdetector group.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import zmq

from stream_node.links.base import FrameOutput
from stream_node.model.errors import ConfigError, ProtocolError
from stream_node.model.frame import Encoding
from stream_node.model.instrument import Instrument
from stream_node.origins.base import OriginOptions, RunControl
from stream_node.origins.chunks import lz4_block, packed_array
from stream_node.origins.received import (
    ProtocolFault,
    ReceivedOrigin,
    SeriesOver,
    json_part,
)

HEADER, IMAGE, IMAGE_D, CONFIG, END = (
    "dheader-1.0", "dimage-1.0", "dimage_d-1.0", "dconfig-1.0", "dseries_end-1.0")
# header_detail "all": (htype of the array's description, name in the NXdetector group)
ARRAYS = (("dflatfield-1.0", "flatfield"), ("dpixelmask-1.0", "pixel_mask"),
          ("dcountrate_table-1.0", "countrate_correction_table"))
DTYPES = {"uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "float32": "float32",
          "int32": "int32"}
# The NXmx fields of NXdetector that a detector configuration fills: (field, units, SIMPLON v1
# configuration key, stream v2 start-message key), None where a protocol does not send the field.
# One table for both protocols, so that the same quantity lands in the same field with the same
# units whichever way the detector streamed it. Units are as the DECTRIS manuals state them.
NXMX_FIELDS: tuple[tuple[str, str | None, str | None, str | None], ...] = (
    ("description", None, "description", "detector_description"),
    ("serial_number", None, "detector_number", "detector_serial_number"),
    ("distance", "m", "detector_distance", None),
    ("beam_center_x", "pixel", "beam_center_x", "beam_center_x"),
    ("beam_center_y", "pixel", "beam_center_y", "beam_center_y"),
    ("x_pixel_size", "m", "x_pixel_size", "pixel_size_x"),
    ("y_pixel_size", "m", "y_pixel_size", "pixel_size_y"),
    ("count_time", "s", "count_time", "count_time"),
    ("frame_time", "s", "frame_time", "frame_time"),
    ("sensor_material", None, "sensor_material", "sensor_material"),
    ("sensor_thickness", "m", "sensor_thickness", "sensor_thickness"),
    ("incident_wavelength", "angstrom", "wavelength", "incident_wavelength"),
    ("incident_energy", "eV", "photon_energy", "incident_energy"),
    ("threshold_energy", "eV", "threshold_energy", None),
    ("saturation_value", None, "countrate_correction_count_cutoff", "saturation_value"),
    ("countrate_correction_applied", None, "countrate_correction_applied",
     "countrate_correction_enabled"),
    ("flatfield_applied", None, "flatfield_correction_applied", "flatfield_enabled"),
    ("pixel_mask_applied", None, "pixel_mask_applied", "pixel_mask_enabled"),
    ("virtual_pixel_correction_applied", None, "virtual_pixel_correction_applied",
     "virtual_pixel_interpolation_enabled"),
    ("firmware_version", None, "software_version", None),
    ("bit_depth_readout", None, "bit_depth_readout", "bit_depth_readout"),
    ("detector_readout_time", "s", "detector_readout_time", "detector_readout_time"),
)
# The sample axes a header names with a start and increment per image, and their NeXus vectors.
# Only omega has a direction every MX goniometer shares; a header's phi, chi or kappa need the
# goniometer's own vectors, which a geometry file gives (their values stay in the header copy).
SAMPLE_AXES = {"omega": (-1.0, 0.0, 0.0)}
# NXdetector field -> Instrument value, for what `nxmx_fields` found in a header.
INSTRUMENT_OF_FIELD = {
    "description": "description", "serial_number": "serial_number", "distance": "distance",
    "count_time": "count_time", "frame_time": "frame_time",
    "sensor_material": "sensor_material", "sensor_thickness": "sensor_thickness",
    "incident_wavelength": "wavelength", "saturation_value": "saturation_value",
    "bit_depth_readout": "bit_depth_readout", "detector_readout_time": "detector_readout_time",
}


def nxmx_table(version: int) -> dict[str, tuple[str, str | None]]:
    """The `nxmx_fields` table of stream `version` (1 or 2), taken from `NXMX_FIELDS` so that the
    two protocols cannot drift apart."""
    column = 1 + version  # the row's key column: 2 for v1, 3 for v2
    return {row[column]: (row[0], row[1]) for row in NXMX_FIELDS if row[column]}


NXMX = nxmx_table(1)


def nxmx_fields(config: dict[str, Any], table: dict[str, tuple[str, str | None]]) -> dict:
    """The NXdetector fields a detector configuration maps to: {"value", "units"} where the
    value has units, plain values otherwise."""
    fields: dict[str, Any] = {}
    for key, (name, units) in table.items():
        value = config.get(key)
        if value is None or (isinstance(value, (dict, list)) and not value):
            continue
        fields[name] = {"value": value, "units": units} if units else value
    return fields


def header_instrument(fields: dict[str, Any],
                      axes: dict[str, tuple[float, float]]) -> Instrument | None:
    """The geometry a DECTRIS header gives: its NXdetector fields (`nxmx_fields`, either
    protocol) and the (start, increment) of each sample axis it names. A value the header
    sends in a form the model refuses is left out (the header copy keeps it), not guessed."""
    def value(name: str) -> Any:
        item = fields.get(name)
        return item.get("value") if isinstance(item, dict) else item

    known: dict[str, Any] = {}
    for name, attr in INSTRUMENT_OF_FIELD.items():
        if value(name) is not None:
            known[attr] = value(name)
    for attr, (x, y) in (("beam_center", ("beam_center_x", "beam_center_y")),
                         ("pixel_size", ("x_pixel_size", "y_pixel_size"))):
        if value(x) is not None and value(y) is not None:
            known[attr] = [value(x), value(y)]
    goniometer = [{"name": name, "vector": SAMPLE_AXES[name], "start": start,
                   "increment": increment} for name, (start, increment) in axes.items()
                  if name in SAMPLE_AXES]
    if goniometer:
        known["goniometer"] = goniometer
    instrument = Instrument()
    for key, item in known.items():
        try:
            instrument = instrument.merged(Instrument.from_wire({key: item}, "header"))
        except ConfigError:
            continue
    energy = value("incident_energy")
    if isinstance(energy, (int, float)) and energy > 0:
        instrument = instrument.with_energy(float(energy))
    return None if instrument == Instrument() else instrument


def header_axes(config: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """SIMPLON v1: `omega_start`, `omega_increment`, ... -> {"omega": (start, increment)}."""
    axes = {}
    for name in SAMPLE_AXES:
        start, step = config.get(f"{name}_start"), config.get(f"{name}_increment")
        if isinstance(start, (int, float)) and isinstance(step, (int, float)):
            axes[name] = (float(start), float(step))
    return axes


def htype(part: Any) -> tuple[str, dict]:
    try:
        head = json_part(part)
    except ProtocolError as exc:
        raise ProtocolFault("undecodable", f"message whose first part is {exc}") from None
    kind = head.get("htype")
    if not isinstance(kind, str):
        raise ProtocolFault("unknown_htype", f"message without an htype: {str(head)[:80]}")
    return kind, head


def parse_encoding(encoding: Any, dtype: np.dtype) -> str:
    """"raw", "lz4" or "bslz4" for a SIMPLON encoding string; ProtocolError if unsupported."""
    if encoding == "<":
        return "raw"
    if encoding == "lz4<":
        return "lz4"
    if isinstance(encoding, str) and encoding.startswith("bs") and encoding.endswith("-lz4<"):
        bits = encoding[2:-5]
        if bits.isdigit() and int(bits) == dtype.itemsize * 8:
            return "bslz4"
        raise ProtocolError(f"encoding {encoding!r} does not match {dtype} pixels")
    raise ProtocolError(f"unsupported encoding {encoding!r} (use <, lz4<, bs16-lz4<, "
                        "bs32-lz4<; big-endian data is not supported)")


class DectrisOrigin(ReceivedOrigin):
    protocol = "dectris"
    columns = ("start_time_ns", "stop_time_ns", "real_time_ns")

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(address, options, known=("verify_hash",))
        try:
            self.verify_hash = self.flag("verify_hash")
            self._desc: dict | None = None  # the last dimage_d part checked (less its size)
            self._kind = ""
            self.header = self.wait_for("dheader-1.0 series header", self._header)
            self.series_id = int(self.head["series"])
            self.shape, self.dtype, kinds = self._geometry()
            passed = kinds == "bslz4" and not self.decompress
            self.encoding = Encoding.BSLZ4 if passed else Encoding.RAW
        except BaseException:
            self.close()
            raise

    # -- before START -----------------------------------------------------------------------

    def _header(self, parts: list[zmq.Frame]) -> bool:
        kind, head = htype(parts[0])
        if kind == HEADER:
            if not isinstance(head.get("series"), int):
                raise ProtocolFault("invalid", f"{HEADER} without an integer series id")
            self.head = head
            self.detail = head.get("header_detail", "none")
            self.config: dict[str, Any] = {}
            self.arrays: dict[str, Any] = {}
            self.appendix: Any = None
            if self.detail in ("basic", "all") and len(parts) > 1:
                self.config = self._part_json(parts[1], "detector configuration")
            rest = parts[2:]
            if self.detail == "all":
                rest = self._header_arrays(parts[2:])
            if rest:
                self.appendix = bytes(rest[0].buffer).decode(errors="replace")
            return True
        if kind == END and self.ended_before(head.get("series")):
            return False
        if kind in (IMAGE, END):
            what = f"frame {head.get('frame')}" if kind == IMAGE else "series end"
            raise ProtocolFault("out_of_sequence", f"{kind} ({what} of series "
                                f"{head.get('series')}) before any {HEADER}: ignored")
        raise ProtocolFault("unknown_htype", f"unknown htype {kind!r} before the series header")

    def _part_json(self, part: Any, what: str) -> dict:
        try:
            return json_part(part)
        except ProtocolError as exc:
            raise ProtocolFault("invalid", f"{HEADER}: {what} is {exc}") from None

    def _header_arrays(self, parts: list[zmq.Frame]) -> list[zmq.Frame]:
        """Flatfield, pixel mask and countrate table of header_detail "all"; returns what
        follows them (the appendix, if any)."""
        i = 0
        for kind, name in ARRAYS:
            if i + 1 >= len(parts):
                self.fault(ProtocolFault("invalid", f"{HEADER} (all): {kind} missing"))
                break
            desc = self._part_json(parts[i], kind)
            if desc.get("htype") != kind:
                self.fault(ProtocolFault("invalid", f"{HEADER} (all): expected {kind}, got "
                                         f"{desc.get('htype')!r}"))
                break
            try:
                x, y = (int(n) for n in desc["shape"])
                dtype = np.dtype(DTYPES[desc["type"]])
                array = np.frombuffer(parts[i + 1].buffer, dtype).reshape(y, x)
            except (KeyError, TypeError, ValueError) as exc:
                self.fault(ProtocolFault("wrong_size", f"{HEADER} (all): {kind} {desc.get('shape')}"
                                         f" {desc.get('type')} does not fit its blob ({exc})"))
            else:
                self.arrays[name] = packed_array(array)
            i += 2
        return parts[i:]

    def _geometry(self) -> tuple[tuple[int, ...], np.dtype, str]:
        """Shape, dtype and encoding from the configuration (basic/all), or else from the first
        image, which is then kept and emitted first."""
        c = self.config
        nimages = int(c.get("nimages", 0) or 0) * max(int(c.get("ntrigger", 1) or 1), 1)
        self.count = nimages or None
        compression = {"bslz4": "bslz4", "lz4": "lz4", "none": "raw"}.get(c.get("compression"))
        bits = c.get("bit_depth_image")
        if c.get("x_pixels_in_detector") and c.get("y_pixels_in_detector") and bits \
                and compression and int(bits) in (8, 16, 32):
            shape = (int(c["y_pixels_in_detector"]), int(c["x_pixels_in_detector"]))
            return shape, np.dtype(f"uint{int(bits)}"), compression
        first = self.wait_for("first image (the header does not give the frame geometry)",
                              self._first_image)
        self.pending.append(first)
        return self.first_geometry

    def _first_image(self, parts: list[zmq.Frame]) -> bool:
        kind, _ = htype(parts[0])
        if kind == HEADER:
            raise ProtocolFault("out_of_sequence", f"a second {HEADER} before any image")
        if kind != IMAGE:
            raise ProtocolFault("unknown_htype", f"{kind!r} while waiting for the first image")
        if len(parts) < 3:
            raise ProtocolFault("invalid", f"{IMAGE} with {len(parts)} parts (4 expected)")
        desc = self._part_json(parts[1], IMAGE_D)
        try:
            x, y = (int(n) for n in desc["shape"])
            dtype = np.dtype(DTYPES[desc["type"]])
            kind = parse_encoding(desc.get("encoding"), dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolFault("invalid", f"{IMAGE_D} of the first image: {exc}") from None
        self.first_geometry = ((y, x), dtype, kind)
        return True

    def instrument(self) -> Instrument | None:
        return header_instrument(nxmx_fields(self.config, NXMX), header_axes(self.config))

    def metadata(self) -> dict[str, Any]:
        detector = nxmx_fields(self.config, NXMX)
        detector.update(self.arrays)
        meta: dict[str, Any] = {
            "source": f"dectris+{self.address}", "protocol": "DECTRIS SIMPLON stream v1",
            "series_id": self.series_id, "header_detail": self.detail,
            "detector_config": self.config, "detector": detector,
        }
        if self.appendix is not None:
            meta["header_appendix"] = self.appendix
        return meta

    # -- the series --------------------------------------------------------------------------

    def complete(self) -> bool:
        return self.count is not None and len(self.received) + len(self.missing) >= self.count

    def handle(self, parts: list[zmq.Frame], out: FrameOutput, ctl: RunControl) -> None:
        kind, head = htype(parts[0])
        if kind == IMAGE:
            self._image(head, parts, out, ctl)
        elif kind == END:
            if head.get("series") != self.series_id:
                raise ProtocolFault("foreign_series", f"{END} of series {head.get('series')} "
                                    f"during series {self.series_id}: ignored")
            raise SeriesOver(None)
        elif kind == HEADER:
            series = head.get("series")
            if series == self.series_id:
                raise ProtocolFault("out_of_sequence", f"a second {HEADER} of series {series} "
                                    f"mid-series (after {self.sent} frames): ignored")
            self.fault(ProtocolFault("out_of_sequence", f"{HEADER} of series {series} before "
                                     f"the {END} of series {self.series_id}: series ended"))
            raise SeriesOver(f"not received: the detector began series {series} before "
                             f"ending series {self.series_id}", carry=parts)
        else:
            raise ProtocolFault("unknown_htype", f"unknown htype {kind!r} "
                                f"({len(parts)} parts): ignored")

    def _image(self, head: dict, parts: list[zmq.Frame], out: FrameOutput,
               ctl: RunControl) -> None:
        frame_id = head.get("frame")
        where = f"{IMAGE} frame {frame_id}"
        if not isinstance(frame_id, int):
            raise ProtocolFault("invalid", f"{IMAGE} without an integer frame number")
        if head.get("series") != self.series_id:
            raise ProtocolFault("foreign_series", f"{where} of series {head.get('series')} "
                                f"during series {self.series_id}: ignored")
        if len(parts) < 4:
            raise ProtocolFault("invalid", f"{where}: {len(parts)} parts, 4 expected", frame_id)
        self.check_id(frame_id, where)
        kind, size = self._image_d(parts[1], frame_id)
        blob = parts[2].buffer
        if isinstance(size, int) and size != blob.nbytes:
            raise ProtocolFault("wrong_size", f"{where}: blob has {blob.nbytes} bytes, "
                                f"{IMAGE_D} says {size}", frame_id)
        digest = head.get("hash")
        if self.verify_hash and not digest:
            # Absent or empty: the detector sent no hash (hashing off), so there is nothing to
            # compare; counted, never a mismatch that would cost the frame.
            self.errors["hash_unchecked"] += 1
        elif self.verify_hash and isinstance(digest, str):
            mine = hashlib.md5(blob).hexdigest()  # GIL released for the blob
            if mine != digest.lower():
                raise ProtocolFault("hash_mismatch", f"{where}: md5 of the {blob.nbytes}-byte "
                                    f"blob is {mine}, {IMAGE} says {digest}", frame_id)
        if kind == "lz4":
            try:
                blob = lz4_block(blob, self.frame_nbytes)
            except ProtocolError as exc:
                raise ProtocolFault("corrupt", f"{where}: {exc}", frame_id) from None
            kind = "raw"
        payload = self.payload(kind, blob, frame_id, where)
        try:
            times = json_part(parts[3])
        except ProtocolError:
            times = {}
            self.fault(ProtocolFault("invalid", f"{where}: {CONFIG} part is not JSON"))
        if times.get("htype") == CONFIG:
            for name in ("start_time", "stop_time", "real_time"):
                if isinstance(times.get(name), (int, float)):
                    self.record(f"{name}_ns", frame_id, times[name])
        self.deliver(out, ctl, frame_id, payload)

    def _image_d(self, part: Any, frame_id: int) -> tuple[str, Any]:
        """(kind of blob, its "size" field) from frame `frame_id`'s dimage_d part. A detector
        sends the same part with every frame of a series but for the size, so a part equal to
        the last one checked is not checked again."""
        where = f"{IMAGE_D} of frame {frame_id}"
        try:
            desc = json_part(part)
        except ProtocolError as exc:
            raise ProtocolFault("invalid", f"{where}: {exc}", frame_id) from None
        size = desc.pop("size", None)
        if desc == self._desc:
            return self._kind, size
        try:
            if desc.get("htype") != IMAGE_D:
                raise ProtocolError(f"htype {desc.get('htype')!r}")
            x, y = (int(n) for n in desc["shape"])
            dtype = np.dtype(DTYPES[desc["type"]])
            kind = parse_encoding(desc.get("encoding"), dtype)
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolFault("invalid", f"{where}: {exc}", frame_id) from None
        if (y, x) != tuple(self.shape) or dtype != self.dtype:
            raise ProtocolFault("wrong_size", f"{where}: shape [x, y] = [{x}, {y}] {dtype}, the "
                                f"series has {list(self.shape[::-1])} {self.dtype}", frame_id)
        self._desc, self._kind = desc, kind
        return kind, size
