"""docs/file-format.md names every object the writer makes: files written with the real writer
(every geometry field, several modules, two goniometer axes, every DECTRIS header field, a
missing frame, a partial frame, compressed; and a rotated set) are walked, and each group and
dataset must have its row in the document, each attribute must be named in that row, and each
numeric dataset's dtype must be the one the row states. The document's format version must be
the writer's."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from stream_node.kernels.compression import compress
from stream_node.model.frame import FLAG_PARTIAL
from stream_node.model.instrument import Axis, Instrument, Module
from stream_node.origins.chunks import packed_array
from stream_node.origins.dectris import ARRAYS, NXMX, NXMX_FIELDS, DectrisOrigin, nxmx_fields
from stream_node.storage.nexus import PIXEL_MASK_BITS
from stream_node.storage.writer import COUNTERS, FORMAT_VERSION, RunWriter

DOC = Path(__file__).resolve().parent.parent / "docs" / "file-format.md"
SHAPE = (24, 16)  # three modules of 8 x 16, stacked
FRAMES = 6
FIRST = 100
AXES = ("phi", "omega")
INSTRUMENT = Instrument(
    wavelength=0.9763, flux=1e12, description="test detector", serial_number="T-1",
    distance=0.2, beam_center=(8.0, 13.5), pixel_size=(75e-6, 75e-6), sensor_material="Si",
    sensor_thickness=450e-6, saturation_value=65000, underload_value=0, count_time=0.0099,
    frame_time=0.01, bit_depth_readout=12, detector_readout_time=1e-4,
    modules=tuple(Module((8 * k, 0), (8, 16), (0.0, 10.0 * k)) for k in range(3)),
    goniometer=(Axis("phi", (-1.0, 0.0, 0.0), 0.0, 0.0),
                Axis("omega", (-1.0, 0.0, 0.0), -90.0, 0.1)))
# A SIMPLON v1 configuration with every key the DECTRIS origins map into NXdetector.
CONFIG = {
    "description": "Dectris EIGER2 Si 500K", "detector_number": "E-32-0123",
    "detector_distance": 0.2, "beam_center_x": 8.0, "beam_center_y": 13.5,
    "x_pixel_size": 75e-6, "y_pixel_size": 75e-6, "count_time": 0.0099, "frame_time": 0.01,
    "sensor_material": "Si", "sensor_thickness": 450e-6, "wavelength": 0.9763,
    "photon_energy": 12700.0, "threshold_energy": 6350.0,
    "countrate_correction_count_cutoff": 65000, "countrate_correction_applied": True,
    "flatfield_correction_applied": True, "pixel_mask_applied": False,
    "virtual_pixel_correction_applied": True, "software_version": "2022.1.2",
    "bit_depth_readout": 12, "detector_readout_time": 1e-4,
}
ARRAY_DTYPES = {"flatfield": np.float32, "pixel_mask": np.uint32,
                "countrate_correction_table": np.float32}
UDP_DETECTOR = {"description": "UDP detector, 3 module(s)", "module_packets": 4,
                "packet_payload_bytes": 64}
DTYPE_WORD = re.compile(r"\b(u?int(?:8|16|32|64)|float(?:32|64)|bool)\b")


def metadata(run_id: int) -> dict:
    """What the collector gives the writer."""
    return {"run_id": run_id, "run_id_hex": f"{run_id:#018x}", "start": {"frames": FRAMES},
            "configuration": {"drain_timeout_s": 10.0, "flush_interval_s": 1.0,
                              "frames_per_file": 0}}


def write(path: Path, detector: dict, instrument: Instrument, frames_per_file: int = 0,
          columns: tuple[str, ...] = ()) -> None:
    """A compressed run of FRAMES frames: index 2 never arrives, index 4 is partial."""
    w = RunWriter(path, SHAPE, "uint16", FRAMES, FIRST, metadata(7), compression="bslz4",
                  frames_per_file=frames_per_file, detector=detector, columns=columns,
                  instrument=instrument)
    try:
        for i in (0, 1, 3, 4, 5):
            frame = np.full(SHAPE, i, np.uint16)
            w.write(i, compress(frame), 1_000 + i, worker=i % 2,
                    flags=FLAG_PARTIAL if i == 4 else 0, parts=12 if i != 4 else 10)
        per_frame = {name: {i: 10 * i for i in range(FRAMES) if i != 2} for name in columns}
        w.finalize(FRAMES, {2: "detector: never sent"}, {"frames_expected": FRAMES, "partial": 1},
                   {"workers": {"w0": {}}, "source": {}}, per_frame, {4: b"\x05\x00"})
    finally:
        w.close()


def documented_path(path: str, columns: tuple[str, ...]) -> str:
    """The name the document gives an object: modules as moduleNN, goniometer axes as <axis>,
    origin columns as <column>."""
    parts = ["moduleNN" if re.fullmatch(r"module(\d{2,})?", p) else p for p in path.split("/")]
    if path.startswith("/entry/sample/transformations/"):
        for axis in AXES:
            for suffix in ("", "_end", "_increment_set"):
                if parts[-1] == axis + suffix:
                    parts[-1] = "<axis>" + suffix
    if path.startswith("/entry/frames/") and parts[-1] in columns:
        parts[-1] = "<column>"
    return "/".join(parts) or "/"


def doc_rows(doc: str) -> dict[str, list[str]]:
    """Table rows by the path in their first cell: {path: [cells]}."""
    rows: dict[str, list[str]] = {}
    for line in doc.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(match.group(1), []).extend(cells)
    return rows


def objects(path: Path) -> list[tuple[str, list[str], np.dtype | None]]:
    """(path, attribute names, dtype or None for a group) of every object in the file."""
    def entry(name: str, obj: h5py.Group | h5py.Dataset) -> None:
        dtype = obj.dtype if isinstance(obj, h5py.Dataset) else None
        found.append(("/" + name.lstrip("/"), list(obj.attrs), dtype))

    found: list[tuple[str, list[str], np.dtype | None]] = []
    with h5py.File(path, "r") as f:
        entry("", f)
        f.visititems(entry)
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("format")
    detector = nxmx_fields(CONFIG, NXMX)
    for _, name in ARRAYS:
        detector[name] = packed_array(np.ones(SHAPE, ARRAY_DTYPES[name]))
    write(root / "one.h5", detector, INSTRUMENT, columns=DectrisOrigin.columns)
    # The rotated set: one module (the group named "module"), a UDP origin's detector fields.
    write(root / "rot.h5", UDP_DETECTOR, replace(INSTRUMENT, modules=()), frames_per_file=4)
    return {"one": root / "one.h5", "rot": root / "rot.h5",
            "rot_1": root / "rot_000001.h5", "rot_2": root / "rot_000002.h5"}


def test_the_files_have_what_the_document_must_cover(files):
    assert all(getattr(INSTRUMENT, f.name) not in (None, ()) for f in fields(Instrument))
    assert set(CONFIG) == {row[2] for row in NXMX_FIELDS if row[2]}
    with h5py.File(files["one"], "r") as f:
        assert {"module01", "module02", "module03"} <= set(f["entry/instrument/detector"])
        assert f["entry/missing/frame_id"][()].tolist() == [FIRST + 2]
        assert f["entry/partial/missing_parts"].shape == (1, 2)
        assert f["entry/data/data"].id.get_create_plist().get_filter(0)[0] == 32008
    with h5py.File(files["rot"], "r") as f:
        assert f["entry/data/data"].is_virtual and "module" in f["entry/instrument/detector"]
    assert files["rot_1"].exists() and files["rot_2"].exists()


@pytest.mark.parametrize("kind", ["one", "rot"])
def test_every_group_dataset_and_attribute_is_documented(files, kind):
    doc = DOC.read_text()
    rows = doc_rows(doc)
    columns = DectrisOrigin.columns if kind == "one" else ()
    undocumented, unnamed, wrong_type = [], [], []
    for path, attrs, dtype in objects(files[kind]):
        key = documented_path(path, columns)
        if key not in rows:
            undocumented.append(key)
            continue
        row = " ".join(rows[key])
        unnamed += [f"{key}@{a}" for a in attrs if f"`@{a}`" not in row]
        if dtype is not None and dtype.kind in "biuf":
            stated = set(DTYPE_WORD.findall(rows[key][1]))
            if stated and dtype.name not in stated:
                wrong_type.append(f"{key}: {dtype.name}, the document says {stated}")
    assert not undocumented, f"objects {kind}.h5 has that the document lacks: {undocumented}"
    assert not unnamed, f"attributes the document does not name in their row: {unnamed}"
    assert not wrong_type, wrong_type
    for name in columns:
        assert f"`{name}`" in doc, f"origin column {name} is not documented"


def test_the_data_files_of_a_rotated_run_are_documented(files):
    rows = doc_rows(DOC.read_text())
    for kind in ("rot_1", "rot_2"):
        for path, attrs, _ in objects(files[kind]):
            if path != "/":
                assert f"RUN_000001.h5:{path}" in rows, path
            assert not attrs, f"{kind}:{path} has attributes the document does not name"
    assert files["rot_1"].name == "rot_000001.h5"  # the naming the document gives


def test_the_document_states_the_writers_format_version_and_names(files):
    doc = DOC.read_text()
    flat = " ".join(doc.split())
    stated = re.search(r"current format version is \*\*([0-9.]+)\*\*", doc)
    assert stated and stated.group(1) == FORMAT_VERSION
    with h5py.File(files["one"], "r") as f:
        assert f["entry/stream_node"].attrs["format_version"] == FORMAT_VERSION
        assert list(f["entry/stream_node/counters"].attrs["names"]) == list(COUNTERS)
        partial = f["entry/partial/missing_parts"].attrs["description"]
    assert f"### {FORMAT_VERSION} (this version)" in doc
    for name in COUNTERS:
        assert f"| `{name}` |" in doc, f"counter {name} has no row"
    for field, units, v1, v2 in NXMX_FIELDS:
        assert f"| `{field}` | {units or ''} | `{v1}` |".replace("|  |", "| |") in doc, field
        assert v2 is None or f"`{v2}`" in doc, v2
    assert PIXEL_MASK_BITS in flat and partial in flat
