"""Files the field's software opens: DIALS' NXmx reader (PyPI `nxmx`, what dxtbx's FormatNXmx is
built on), silx and fabio (what beamline viewers use) read what the header or geometry said.

Each run goes through the real pipeline (source, worker, collector processes); the reader is
given nothing but the file.
"""

from __future__ import annotations

import os
import textwrap

import h5py
import numpy as np
import pytest

import protocol_senders
from conftest import finish
from stream_node import ExitCode, read_run
from stream_node.model.instrument import HC_EV_ANGSTROM, Instrument
from test_pipeline import start_roles

nxmx = pytest.importorskip("nxmx", reason="the NXmx reader is a test dependency: "
                                          'pip install ".[test]"')

sender = pytest.fixture(protocol_senders._sender_fixture, name="sender")
GEOMETRY = Instrument.from_file(
    os.path.join(os.path.dirname(__file__), "..", "examples", "geometry", "jungfrau4m.toml"))


def nxmx_view(path):
    """What DIALS' reader makes of the file: wavelength (A), distance (m), each module's
    (data_origin, data_size, first pixel's position in m, fast and slow pixel vectors scaled by
    the pixel size in m), the scan axis' per-frame values, and the data's shape."""
    with h5py.File(path, "r") as f:
        (entry,) = nxmx.NXmx(f).entries
        assert entry.definition == "NXmx"
        (instrument,) = entry.instruments
        (beam,) = instrument.beams
        (detector,) = instrument.detectors
        (data,) = entry.data
        (sample,) = entry.samples
        distance_chain = nxmx.get_dependency_chain(detector.depends_on)
        z = nxmx.get_cumulative_transformation(distance_chain)[0] @ [0, 0, 0, 1]
        modules = []
        for module in detector.modules:
            chain = nxmx.get_dependency_chain(module.fast_pixel_direction.depends_on)
            origin = (nxmx.get_cumulative_transformation(chain)[0] @ [0, 0, 0, 1])[:3] / 1000
            pixels = [axis[()].to("m").magnitude[0] * np.asarray(axis.vector)
                      for axis in (module.fast_pixel_direction, module.slow_pixel_direction)]
            modules.append((tuple(module.data_origin), tuple(module.data_size), origin,
                            *pixels))
        scan = nxmx.get_rotation_axes(nxmx.get_dependency_chain(sample.depends_on))
        omega = sample.depends_on[()].to("deg").magnitude
        return {
            "wavelength": beam.incident_wavelength.to("angstrom").magnitude,
            "distance": z[2] / 1000, "modules": modules, "omega": omega,
            "scan_axes": list(scan.names), "shape": f[data.path][data.signal].shape,
            "pixel_mask": detector.pixel_mask is not None,
            "sensor": (detector.sensor_material, detector.sensor_thickness.to("m").magnitude)
            if "sensor_material" in f[detector.path] else None,
        }


def beam_centre(module, pixel_size, position=(0.0, 0.0)):
    """The (x, y) pixel where the beam (0, 0, z) meets the detector plane, from a module's
    first pixel and its pixel vectors as the reader sees them."""
    origin, fast, slow = module[2], module[3], module[4]
    solution = np.linalg.lstsq(np.stack([fast[:2], slow[:2]], axis=1), -origin[:2], rcond=None)
    return solution[0] + np.asarray(position)


def assert_viewers_open(path, frames, shape, expected_first):
    """silx finds the frames through @default; fabio reads them as a multi-frame image."""
    from silx.io import nxdata
    from silx.io import open as silx_open

    with silx_open(str(path)) as f:
        default = nxdata.get_default(f)
        assert default is not None and default.signal.shape == (frames, *shape)
        assert np.array_equal(default.signal[0], expected_first)
    import fabio

    image = fabio.open(str(path))
    try:
        assert image.nframes == frames
        assert np.array_equal(image.data, expected_first)
    finally:
        image.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("detail", ["basic", "all"])
def test_a_dectris_v1_series_opens_in_the_nxmx_reader_with_the_header_geometry(
        node, ipc, tmp_path, sender, detail):
    code, err, run, path = protocol_senders.run_series(
        node, ipc, tmp_path, sender, "dectris", "dectris", "--encoding", "bs16-lz4<",
        "--detail", detail)
    assert code == ExitCode.OK, err
    view = nxmx_view(path)
    assert view["wavelength"] == pytest.approx(1.0)
    assert view["distance"] == pytest.approx(0.125)
    ((origin, size, *_),) = view["modules"]
    assert origin == (0, 0) and size == (48, 64)
    assert beam_centre(view["modules"][0], 75e-6) == pytest.approx([31.5, 20.25])
    np.testing.assert_allclose(view["modules"][0][3], [-75e-6, 0, 0])
    np.testing.assert_allclose(view["modules"][0][4], [0, -75e-6, 0])
    np.testing.assert_allclose(view["omega"], 10.0 + 0.1 * np.arange(8))
    assert view["scan_axes"] == ["omega"] and view["shape"] == (8, 48, 64)
    assert view["sensor"] == ("Si", pytest.approx(0.00045))
    assert view["pixel_mask"] == (detail == "all")
    with h5py.File(path) as f:
        det = f["entry/instrument/detector"]
        assert det["bit_depth_readout"][()] == 12  # what the detector said, not the dtype's 16
        assert det["bit_depth_image"][()] == 16
        assert "incident_wavelength" not in det  # NXmx: the beam's, in NXbeam
        assert f["entry/instrument/beam/incident_energy"][()] == pytest.approx(12398.4, 1e-4)
    assert_viewers_open(path, 8, (48, 64), run.frames[0])


@pytest.mark.timeout(90)
def test_a_stream2_series_opens_in_the_nxmx_reader_with_the_header_geometry(
        node, ipc, tmp_path, sender):
    code, err, run, path = protocol_senders.run_series(
        node, ipc, tmp_path, sender, "stream2", "dectris2", "--encoding", "bslz4",
        "--detail", "all")
    assert code == ExitCode.OK, err
    view = nxmx_view(path)
    assert view["wavelength"] == pytest.approx(1.0)
    assert view["distance"] == pytest.approx(0.125)
    assert beam_centre(view["modules"][0], 75e-6) == pytest.approx([31.5, 20.25])
    np.testing.assert_allclose(view["omega"], 10.0 + 0.1 * np.arange(8))
    assert view["shape"] == (8, 48, 64) and view["pixel_mask"]
    assert_viewers_open(path, 8, (48, 64), run.frames[0])


@pytest.mark.timeout(90)
def test_a_synthetic_run_with_a_geometry_file_opens_in_the_nxmx_reader(node, ipc, tmp_path):
    geometry = tmp_path / "geometry.toml"
    geometry.write_text(textwrap.dedent("""
        [beam]
        wavelength = 0.8
        [detector]
        distance = 0.2
        beam_center = [100.5, 60.25]
        pixel_size = [172e-6, 172e-6]
        sensor_material = "CdTe"
        sensor_thickness = 1e-3
        [[goniometer.axes]]
        name = "omega"
        start = -5.0
        increment = 0.25
    """))
    path = tmp_path / "run.h5"
    source, collector, workers = start_roles(node, ipc, path, 1, frames=12,
                                             extra_source=("--geometry", str(geometry)))
    assert finish(source)[0] == ExitCode.OK
    for proc in (collector, *workers):
        finish(proc)
    view = nxmx_view(path)
    assert view["wavelength"] == pytest.approx(0.8) and view["distance"] == pytest.approx(0.2)
    assert beam_centre(view["modules"][0], 172e-6) == pytest.approx([100.5, 60.25])
    np.testing.assert_allclose(view["modules"][0][3], [-172e-6, 0, 0])
    np.testing.assert_allclose(view["omega"], -5.0 + 0.25 * np.arange(12))
    assert view["shape"] == (12, 128, 256) and not view["pixel_mask"]
    assert view["sensor"] == ("CdTe", pytest.approx(1e-3))
    assert_viewers_open(path, 12, (128, 256), read_run(path).frames[0])


@pytest.mark.timeout(120)
def test_a_multi_module_udp_run_with_a_geometry_file_places_every_module(node, tmp_path):
    """Two JUNGFRAU modules over UDP, stacked in the frame, placed with a gap in space."""
    from stream_node.origins.udp import PRESETS, default_positions, module_images, schedule, send
    from test_udp import free_udp_ports, start_udp_roles

    geometry = tmp_path / "jf1m.toml"
    geometry.write_text(textwrap.dedent("""
        [beam]
        energy = 12400.0
        [detector]
        distance = 0.1
        beam_center = [512.0, 530.0]
        pixel_size = [75e-6, 75e-6]
        [[detector.modules]]
        origin = [0, 0]
        size = [512, 1024]
        position = [0, 0]
        [[detector.modules]]
        origin = [512, 0]
        size = [512, 1024]
        position = [0, 550]
        [[goniometer.axes]]
        name = "omega"
        increment = 0.5
    """))
    geo, port = PRESETS["jungfrau"], free_udp_ports(2)
    source, collector, workers = start_udp_roles(
        node, tmp_path, f"udp://127.0.0.1:{port}?modules=2&grid=2x1&frames=6&first=1",
        extra_source=("--geometry", str(geometry)))
    images, positions = module_images(geo, 2, seed=3), default_positions(2, (2, 1))
    send("127.0.0.1", [port, port + 1], geo, schedule(geo, 6, 2, first=1), images, positions,
         rate_pps=20_000)
    assert finish(source)[0] == ExitCode.OK
    for proc in (collector, *workers):
        finish(proc)
    view = nxmx_view(tmp_path / "udp.h5")
    assert view["wavelength"] == pytest.approx(HC_EV_ANGSTROM / 12400.0)
    assert view["shape"] == (6, 1024, 1024)
    (o1, s1, *_), (o2, s2, *_) = view["modules"]
    assert (o1, s1, o2, s2) == ((0, 0), (512, 1024), (512, 0), (512, 1024))
    # Each module's first pixel, seen from the beam: the second one 550 pixels further down.
    assert beam_centre(view["modules"][0], 75e-6) == pytest.approx([512.0, 530.0])
    assert beam_centre(view["modules"][1], 75e-6, (0, 550)) == pytest.approx([512.0, 530.0])
    np.testing.assert_allclose(view["omega"], 0.5 * np.arange(6))


def test_a_run_without_geometry_leaves_nxmx_fields_out_and_says_which(node, ipc, tmp_path):
    path = tmp_path / "run.h5"
    source, collector, workers = start_roles(node, ipc, path, 1, frames=3)
    assert finish(source)[0] == ExitCode.OK
    for proc in (collector, *workers):
        finish(proc)
    with h5py.File(path) as f:
        assert f["entry/definition"][()] == b"NXmx"
        assert "beam" not in f["entry/instrument"] and "sample" not in f["entry"]
        assert "bit_depth_readout" not in f["entry/instrument/detector"]
    out = node("inspect", str(path))
    code, text, _ = finish(out)
    assert code == ExitCode.OK
    assert "NXmx fields missing" in text and "instrument/beam/incident_wavelength" in text


def test_a_bad_geometry_file_is_refused_before_the_run_naming_the_key(node, ipc, tmp_path):
    geometry = tmp_path / "bad.toml"
    geometry.write_text("[detector]\ndistnace = 0.1\n")
    source = node("source", "--control", f"ipc://{tmp_path}/c", "--data", f"ipc://{tmp_path}/d",
                  "--frames", "3", "--geometry", str(geometry), "--ready-timeout", "5")
    code, _, err = finish(source)
    assert code == ExitCode.CONFIG
    assert "distnace" in err and "distance" in err
