"""Calibration inputs of the gain correction: PSI gain-map files, pedestal files (.npy, HDF5,
PSI's jungfrau_utils layout), stream-node's calibration file with its provenance, and the
configuration errors a calibration that does not fit the run gives before any frame."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stream_node.kernels import build_chain
from stream_node.kernels.calibration import (
    FORMAT,
    MODULE,
    Calibration,
    read_calibration,
    read_pedestal,
    read_psi_gain_maps,
    to_frame,
    to_modules,
    write_calibration,
    write_psi_gain_map,
)
from stream_node.kernels.chain import output_layout
from stream_node.model.errors import ConfigError, OutputExistsError
from stream_node.model.pixel_mask import DEAD, NOISY, USER
from stream_node.origins.jungfrau_sim import JungfrauSimulator

SHAPE = (1024, 1024)  # two modules, stacked


@pytest.fixture(scope="module")
def sim() -> JungfrauSimulator:
    return JungfrauSimulator(2, seed=11)


@pytest.fixture
def files(tmp_path, sim):
    """PSI gain maps and a pedestal .npy of the simulated detector; a lit raw frame."""
    maps = sim.write_gain_maps(tmp_path / "gains")
    np.save(tmp_path / "pedestal.npy", sim.pedestal)
    np.save(tmp_path / "gain.npy", sim.gain)
    return {"maps": [str(p) for p in maps], "pedestal": str(tmp_path / "pedestal.npy"),
            "gain": str(tmp_path / "gain.npy"), "raw": sim.lit_frame(3)}


def test_module_layout_and_frame_layout_are_inverses():
    per_module = np.arange(6 * 3 * 512 * 1024, dtype=np.float32).reshape(6, 3, *MODULE)
    frame = to_frame(per_module, (3, 2))
    assert frame.shape == (3, 1536, 2048)
    np.testing.assert_array_equal(frame[:, 512:1024, 1024:], per_module[3])  # row 1, column 1
    np.testing.assert_array_equal(to_modules(frame), per_module)


def test_psi_gain_map_files_give_g0_to_g2_or_the_high_gain_planes(tmp_path, sim, files):
    cal = read_psi_gain_maps(files["maps"])
    assert cal.serials == ("M100", "M101") and cal.gain.dtype == np.float32
    np.testing.assert_array_equal(cal.gain, to_modules(sim.gain))
    high = read_psi_gain_maps(files["maps"], high_gain=True)
    np.testing.assert_array_equal(high.gain, to_modules(sim.high_gain))
    assert high.gain_mode == "high" and cal.sources["gain"][0]["path"].endswith("M100.bin")
    raw = np.fromfile(files["maps"][0], "<f8")  # the file as PSI writes it
    assert raw.size == 6 * 512 * 1024 and raw[0] == np.float64(sim.gain[0, 0, 0])
    (tmp_path / "short.bin").write_bytes(b"\0" * 800)
    with pytest.raises(ConfigError, match=r"short.bin holds 100 float64 values; a PSI gain-map "
                                          r"file holds 6 x 512 x 1024 = 3145728"):
        read_psi_gain_maps([tmp_path / "short.bin"])
    with pytest.raises(ConfigError, match="a gain-map file holds"):
        write_psi_gain_map(tmp_path / "x.bin", np.zeros((3, 512, 1024)))


def test_pedestal_files_in_every_layout_read_the_same(tmp_path, sim, files):
    want = to_modules(sim.pedestal)
    np.testing.assert_array_equal(read_pedestal(files["pedestal"], SHAPE).pedestal, want)
    np.save(tmp_path / "modules.npy", want)
    np.testing.assert_array_equal(read_pedestal(tmp_path / "modules.npy", SHAPE).pedestal, want)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["pedestal"] = sim.pedestal
    np.testing.assert_array_equal(read_pedestal(tmp_path / "plain.h5", SHAPE).pedestal, want)
    # PSI's jungfrau_utils: "gains" holds the G0, G1, G2, HG0 pedestals, "pixel_mask" its bad
    with h5py.File(tmp_path / "psi.h5", "w") as f:
        f["gains"] = np.concatenate([sim.pedestal, sim.pedestal[:1]])
        f["pixel_mask"] = sim.bad["dead"].astype(np.int32)
    psi = read_pedestal(tmp_path / "psi.h5", SHAPE)
    np.testing.assert_array_equal(psi.pedestal, want)
    assert (psi.pixel_mask == DEAD).sum() == sim.bad["dead"].sum() == (psi.pixel_mask != 0).sum()
    np.save(tmp_path / "wrong.npy", np.zeros((3, 512, 1024), np.float32))
    with pytest.raises(ConfigError, match=r"shape \(3, 512, 1024\); a pedestal is \(3, 1024, "
                                          r"1024\) for these frames"):
        read_pedestal(tmp_path / "wrong.npy", SHAPE)


def test_the_calibration_file_keeps_maps_serials_and_where_they_came_from(tmp_path, sim, files):
    cal = read_psi_gain_maps(files["maps"])
    cal.pedestal = to_modules(sim.pedestal)
    cal.pedestal_rms = to_modules(sim.noise)
    cal.pixel_mask = to_modules(np.where(sim.bad["noisy"], NOISY, 0).astype(np.uint32))
    cal.dark_frames = (100, 50, 50)
    path = tmp_path / "cal.h5"
    write_calibration(path, cal, software="stream-node test")
    back = read_calibration(path)
    for name in ("pedestal", "gain", "pedestal_rms", "pixel_mask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
    assert back.serials == ("M100", "M101") and back.dark_frames == (100, 50, 50)
    assert back.sources["gain"] == cal.sources["gain"] and back.created
    with h5py.File(path) as f:
        assert f.attrs["format"] == FORMAT and f.attrs["software"] == "stream-node test"
        assert f["gain"].attrs["units"] == "ADU/keV" and f["pedestal"].attrs["units"] == "ADU"
        assert json.loads(f["gain"].attrs["sources"])[1]["path"].endswith("gainMaps_M101.bin")
        assert "noisy" in f["pixel_mask"].attrs["description"]
    with pytest.raises(OutputExistsError, match="exists"):
        write_calibration(path, cal)
    with pytest.raises(ConfigError, match=r"cannot read it as HDF5 .* PSI gain maps go to "
                                          r"'gain_maps'"):
        read_calibration(files["maps"][0])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["pedestal"] = np.zeros(3)
    with pytest.raises(ConfigError, match="not a stream-node calibration file"):
        read_calibration(tmp_path / "other.h5")


def test_gain_correction_from_psi_files_or_a_calibration_equals_explicit_maps(tmp_path, sim,
                                                                             files):
    explicit = [{"kernel": "gain_correction", "pedestal": files["pedestal"],
                 "gain": files["gain"]}]
    psi = [{"kernel": "gain_correction", "pedestal": files["pedestal"],
            "gain_maps": files["maps"], "serials": ["M100", "M101"]}]
    cal = read_psi_gain_maps(files["maps"])
    cal.pedestal = to_modules(sim.pedestal)
    write_calibration(tmp_path / "cal.h5", cal)
    from_file = [{"kernel": "gain_correction", "calibration": str(tmp_path / "cal.h5")}]
    raw = files["raw"]
    want = build_chain(explicit, SHAPE, np.uint16, backend="reference").apply(raw)
    for spec in (explicit, psi, from_file):
        for backend in ("numba", "reference"):
            got = build_chain(spec, SHAPE, np.uint16, backend=backend).apply(raw)
            np.testing.assert_array_equal(got, want)
    # keV: a G0 pixel's (ADC - pedestal) / (ADU per keV) is its energy
    assert abs(float(np.median(want))) < 1.0  # mostly dark pixels: 0 keV within the noise
    photons = build_chain([{**from_file[0], "photon_energy_kev": 12.4}], SHAPE, np.uint16)
    np.testing.assert_allclose(photons.apply(raw), want / np.float32(12.4), rtol=2e-6,
                               atol=1e-6)
    high = build_chain([{**psi[0], "high_gain": True}], SHAPE, np.uint16, backend="reference")
    g0 = (raw >> 14) == 0
    np.testing.assert_allclose(high.apply(raw)[g0], (want * sim.gain[0] / sim.high_gain[0])[g0],
                               rtol=1e-4, atol=1e-4)


def test_a_calibration_adds_its_bad_pixels_to_the_mask_and_the_files_pixel_mask(tmp_path,
                                                                                sim, files):
    cal = Calibration(pedestal=to_modules(sim.pedestal), gain=to_modules(sim.gain),
                      pixel_mask=to_modules(np.where(sim.bad["dead"], DEAD, 0).astype(np.uint32)))
    write_calibration(tmp_path / "cal.h5", cal)
    user = np.zeros(SHAPE, np.uint8)
    user[5, 5] = 1
    np.save(tmp_path / "mask.npy", user)
    spec = [{"kernel": "gain_correction", "calibration": str(tmp_path / "cal.h5"),
             "mask": str(tmp_path / "mask.npy"), "fill": -1.0}]
    chain = build_chain(spec, SHAPE, np.uint16)
    out = chain.apply(files["raw"])
    masked = sim.bad["dead"] | (user != 0)
    assert (out[masked] == -1).all()
    assert chain.counters["gain_correction"]["masked"] == masked.sum()
    mask = output_layout(spec, SHAPE, np.uint16).pixel_mask
    assert ((mask & DEAD) != 0).sum() == sim.bad["dead"].sum() and mask[5, 5] & USER


@pytest.mark.parametrize(("extra", "shape", "match"), [
    ({}, (2048, 1024), r"has 2 module\(s\) \(M100, M101\), the run's frames hold 4 modules"),
    ({"serials": ["M100", "M999"]}, SHAPE, "module 1 is M101 here, M999 in the run"),
    ({}, (1000, 1024), "frames of 1000x1024 are no grid of 512x1024 JUNGFRAU modules"),
    ({"gain": "GAIN"}, SHAPE, "give 'gain' .* or 'gain_maps' .*, not both"),
    ({"high_gain": True, "gain_maps": None, "gain": "GAIN"}, SHAPE,
     "'high_gain' selects planes of PSI files"),
    ({"serials": "M100"}, SHAPE, "'serials' must be a list"),
])
def test_psi_files_that_do_not_fit_the_run_are_config_errors_saying_what_differs(
        files, extra, shape, match):
    entry = {"kernel": "gain_correction", "pedestal": files["pedestal"],
             "gain_maps": files["maps"], **extra}
    entry = {k: files["gain"] if v == "GAIN" else v for k, v in entry.items()}
    if shape != SHAPE:
        entry["pedestal"] = np.zeros((3, *shape), np.float32)
    with pytest.raises(ConfigError, match=match):
        build_chain([entry], shape, np.uint16)


def test_a_calibration_without_what_the_chain_needs_is_a_config_error(tmp_path, sim):
    write_calibration(tmp_path / "ped.h5", Calibration(pedestal=to_modules(sim.pedestal),
                                                       serials=("M100", "M101")))
    with pytest.raises(ConfigError, match=r"'gain' is required .* or a 'calibration' that has"):
        build_chain([{"kernel": "gain_correction", "calibration": str(tmp_path / "ped.h5")}],
                    SHAPE, np.uint16)
    with pytest.raises(ConfigError, match=r"parameter 'calibration': calibration .*nope.h5: "
                                          r"cannot read it"):
        build_chain([{"kernel": "gain_correction", "calibration": str(tmp_path / "nope.h5")}],
                    SHAPE, np.uint16)
