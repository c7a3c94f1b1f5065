"""The JUNGFRAU 4M preset end to end, as a user runs it: `stream-node run
examples/jungfrau4m_preset.toml` (source, two workers and a collector as processes), 8 modules'
UDP packets from the packet sender, frames by frame number, gain correction with PSI gain-map
files, photons, the assembled image with its gaps, bitshuffle/LZ4, HDF5. Every frame in the file
is checked against the same chain's numpy reference, bit for bit (photons are integers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import finish
from stream_node import ExitCode, read_run
from stream_node.kernels import build_chain
from stream_node.kernels.calibration import Calibration, to_modules, write_calibration
from stream_node.model.geometry import Geometry
from stream_node.model.pixel_mask import DEAD, GAP
from stream_node.origins.jungfrau_sim import JungfrauSimulator
from stream_node.origins.udp import PRESETS, default_positions, expected_frame, schedule, send

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "examples" / "jungfrau4m_preset.toml"
FRAMES = 10
GEO = PRESETS["jungfrau"]
POSITIONS = default_positions(8, (8, 1))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A simulated 4M's calibration where the preset looks for it (jf4m/ beside examples/),
    its bad pixels in the pedestal file's mask, and a lit frame for the modules to send."""
    root = tmp_path_factory.mktemp("jf4m")
    (root / "examples").symlink_to(ROOT / "examples")
    sim = JungfrauSimulator(8, seed=1)
    sim.write_gain_maps(root / "jf4m")
    bad = np.where(sim.any_bad(), DEAD, 0).astype(np.uint32)
    write_calibration(root / "jf4m" / "pedestal.h5", Calibration(
        pedestal=to_modules(sim.pedestal), pixel_mask=to_modules(bad), serials=sim.serials))
    raw = sim.lit_frame(0)
    images = np.stack([raw[512 * k:512 * (k + 1)].reshape(-1).view(np.uint8) for k in range(8)])
    return root, images, bad


def lost_packets(path: Path) -> dict[int, dict[int, list[int]]]:
    """{frame index: {module: [packets]}} of the partial frames the file records."""
    with h5py.File(path) as f:
        ids, bitmaps = f["entry/partial/frame_id"][()], f["entry/partial/missing_parts"][()]
    lost = {}
    for fid, bitmap in zip(ids.tolist(), bitmaps, strict=True):
        bits = np.unpackbits(bitmap, bitorder="little")[:8 * GEO.packets_per_frame]
        lost[fid] = {m: np.flatnonzero(bits.reshape(8, -1)[m]).tolist() for m in range(8)}
    return lost


@pytest.mark.timeout(120)
def test_the_jungfrau_4m_preset_writes_what_its_numpy_reference_computes(
        node, detector, monkeypatch):
    from test_udp import free_udp_ports

    root, images, bad = detector
    monkeypatch.chdir(root)  # the preset's paths are relative to where it runs
    port, path = free_udp_ports(8), root / "jf4m.h5"
    run = node("run", str(PRESET), "--node", "daq",
               # a frame takes 100 ms at this paced rate (1024 packets; a real 4M sends one
               # in under 0.5 ms): the receiver waits for its packets that long
               "--set", f"source.from=udp://127.0.0.1:{port}?modules=8&grid=8x1"
                        f"&frames={FRAMES}&first=1&frame_timeout_ms=1000",
               "--set", f"source.control=ipc://{root}/control",
               "--set", f"source.data=ring://jf4m-{port}",
               "--set", f"collector.input=ipc://{root}/frames",
               "--set", f"collector.file={path}", "--set", "collector.overwrite=true")
    for line in run.stderr:  # the source binds its ports before every stage is ready
        if "the collector ready" in line:
            break
    sent = send("127.0.0.1", [port + k for k in range(8)], GEO, schedule(GEO, FRAMES, 8, first=1),
                images, POSITIONS, rate_pps=10_000)
    assert sent == FRAMES * 8 * GEO.packets_per_frame
    code, out, err = finish(run, timeout=90)
    assert code in (ExitCode.OK, ExitCode.FRAMES_MISSING), out + err
    written = read_run(path)
    assert len(written.missing) <= 2 and all("udp:" in r for r in written.missing.values())
    assert written.frames.shape == (FRAMES, 2164, 2068) and written.frames.dtype == np.uint16

    # the same chain, numpy references only, on the frames the receiver assembled
    spec = tomllib.loads(PRESET.read_text())["nodes"]["daq"]["workers"]["kernels"]
    reference = build_chain(spec, (4096, 1024), np.uint16, backend="reference")
    lost = lost_packets(path)
    assert len(lost) <= 2, f"frames that lost packets: {sorted(lost)}"
    for i in range(FRAMES):
        if i in written.missing:
            continue
        raw = expected_frame(GEO, images, POSITIONS, (8, 1), i + 1, lost=lost.get(i))
        expected = reference.apply(raw, frame_id=i)
        assert np.array_equal(written.frames[i], expected), f"frame {i} differs"
    geometry = Geometry.from_file(ROOT / "examples" / "geometry" / "jungfrau4m.geom")
    assert (written.frames[0][geometry.gaps()] == 65535).all()

    with h5py.File(path) as f:
        assert f["entry/data/data"].id.get_create_plist().get_filter(0)[0] == 32008
        det = f["entry/instrument/detector"]
        mask = det["pixel_mask"][()]
        np.testing.assert_array_equal(mask, geometry.assemble_mask(bad))  # gaps + bad pixels
        assert ((mask & GAP) != 0).sum() == geometry.gaps().sum() and (mask & DEAD).any()
        origins = [det[f"module{k:02d}/data_origin"][()].tolist() for k in range(1, 9)]
        assert origins == [[(k // 2) * 550, (k % 2) * 1038] for k in range(8)]
        assert {tuple(det[f"module{k:02d}/data_size"][()]) for k in range(1, 9)} == {(514, 1030)}
        assert (det["beam_center_x"][()], det["beam_center_y"][()]) == (1034.5, 1082.5)
        start = json.loads(f["entry"].attrs["start"])
        assert start["input"]["shape"] == [4096, 1024] and start["shape"] == [2164, 2068]
    blocks = [((k // 2) * 550, (k % 2) * 1038) for k in range(8)]
    assert_nxmx_sees(path, blocks, (514, 1030), [(c, r) for r, c in blocks], (1034.5, 1082.5))


def nxmx_modules(path: Path) -> list[tuple]:
    """Each module as DIALS' NXmx reader sees it: (data_origin, data_size, first pixel's
    position in m, fast and slow pixel vectors in m)."""
    nxmx = pytest.importorskip("nxmx", reason='the NXmx reader is a test dependency: pip '
                                              'install ".[test]"')
    with h5py.File(path, "r") as f:
        (entry,) = nxmx.NXmx(f).entries
        (detector,) = entry.instruments[0].detectors
        modules = []
        for module in detector.modules:
            chain = nxmx.get_dependency_chain(module.fast_pixel_direction.depends_on)
            origin = (nxmx.get_cumulative_transformation(chain)[0] @ [0, 0, 0, 1])[:3] / 1000
            pixels = [axis[()].to("m").magnitude[0] * np.asarray(axis.vector)
                      for axis in (module.fast_pixel_direction, module.slow_pixel_direction)]
            modules.append((tuple(module.data_origin), tuple(module.data_size), origin, *pixels))
        return modules


def assert_nxmx_sees(path: Path, origins: list[tuple[int, int]], size: tuple[int, int],
                     positions: list[tuple[int, int]], beam: tuple[float, float]) -> None:
    """DIALS' NXmx reader finds each module's data block, and the beam at the same pixel from
    every module's first pixel (at `positions`, image x and y) and pixel vectors."""
    from test_nxmx import beam_centre

    modules = nxmx_modules(path)
    assert [m[0] for m in modules] == origins
    assert {m[1] for m in modules} == {size}
    for module, position in zip(modules, positions, strict=True):
        assert beam_centre(module, 75e-6, position) == pytest.approx(beam, abs=1e-6)


@pytest.mark.timeout(60)
def test_gain_maps_for_other_modules_are_refused_before_the_run_starts(node, detector,
                                                                       tmp_path):
    root, _, _ = detector
    maps = [str(root / "jf4m" / f"gainMaps_M{100 + k}.bin") for k in range(4)]
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps([{"kernel": "gain_correction", "gain_maps": maps,
                                  "pedestal": str(root / "jf4m" / "pedestal.h5")}]))
    source = node("source", "--control", f"ipc://{tmp_path}/c", "--data", f"ipc://{tmp_path}/d",
                  "--from", "synthetic:jungfrau?modules=8", "--frames", "3", "--kernels",
                  str(chain), "--ready-timeout", "5")
    code, _, err = finish(source)
    assert code == ExitCode.CONFIG
    assert ("gain_correction: parameter 'gain_maps': has 4 module(s) (M100, M101, M102, M103), "
            "the run's frames hold 8 modules of 512x1024") in err


@pytest.mark.timeout(90)
def test_without_assembly_a_crystfel_file_places_the_module_stack_in_nxmx(node, tmp_path):
    """The other choice: frames stay a stack of modules and the .geom file's modules become
    NXdetector_modules of the stack, each placed where the detector has it."""
    control, data, fanin = (f"ipc://{tmp_path}/{n}" for n in ("c", "d", "f"))
    timing = ("--ready-timeout", "30", "--peer-timeout", "5")
    path = tmp_path / "stack.h5"
    collector = node("collector", "--control", control, "--input", fanin, "--file", str(path),
                     *timing)
    worker = node("worker", "--control", control, "--input", data, "--output", fanin,
                  "--name", "w0", *timing)
    source = node("source", "--control", control, "--data", data, "--workers", "1",
                  "--frames", "4", "--from", "synthetic:jungfrau?modules=8", "--geometry",
                  str(ROOT / "examples" / "geometry" / "jungfrau4m.geom"), *timing)
    assert finish(source)[0] == ExitCode.OK
    for proc in (collector, worker):
        assert finish(proc)[0] == ExitCode.OK
    assert read_run(path).frames.shape == (4, 4096, 1024)
    with h5py.File(path) as f:
        assert "pixel_mask" not in f["entry/instrument/detector"]  # no chain: nothing known
    # module k: stack rows 512k.., in space at the image corner (k % 2 * 1038, k // 2 * 550)
    assert_nxmx_sees(path, [(512 * k, 0) for k in range(8)], (512, 1024),
                     [((k % 2) * 1038, (k // 2) * 550) for k in range(8)], (1034.5, 1082.5))
