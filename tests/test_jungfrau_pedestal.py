"""Dark runs to pedestals: the accumulation kernel against its reference, pedestals and noise
recovered from a simulated detector whose truth is known, every injected bad pixel flagged, and
`stream-node pedestal` reading series from runs stream-node wrote, from the simulator and over
UDP, as a user runs it."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import finish
from stream_node import ExitCode
from stream_node.kernels import _numba, reference
from stream_node.kernels.calibration import MODULE, read_calibration, to_modules
from stream_node.kernels.compression import compress
from stream_node.kernels.dark import DarkSeries, calibrate_darks
from stream_node.model.pixel_mask import DEAD, GAIN_STAGE, NOISY
from stream_node.origins.jungfrau_sim import JungfrauSimulator
from stream_node.storage.writer import RunWriter

FRAMES = 100


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 90)), stage=st.integers(0, 2),
       seed=st.integers(0, 2**32 - 1), frames=st.integers(1, 4))
def test_dark_accumulation_matches_the_reference(shape, stage, seed, frames):
    rng = np.random.default_rng(seed)
    state = [[np.zeros(shape, t) for t in (np.uint32, np.uint64, np.uint64, np.uint32)]
             for _ in range(2)]
    for _ in range(frames):
        codes = rng.choice(np.array([0, 1, 3, 2], np.uint16), shape, p=[0.6, 0.2, 0.15, 0.05])
        raw = (codes << np.uint16(14)) | rng.integers(0, 1 << 14, shape, dtype=np.uint16)
        n_ref = reference.dark_accumulate(raw, stage, *state[0])
        assert _numba.dark_accumulate(raw, stage, *state[1]) == n_ref
    for ref, fast in zip(*state, strict=True):
        np.testing.assert_array_equal(fast, ref)


@pytest.fixture(scope="module")
def sim() -> JungfrauSimulator:
    return JungfrauSimulator(1, seed=21, bad=0.001)


def darks(sim: JungfrauSimulator, frames: int = FRAMES) -> dict[int, DarkSeries]:
    series = {}
    for stage in range(3):
        series[stage] = DarkSeries(sim.shape, stage)
        for i in range(frames):
            series[stage].add(sim.dark_frame(stage, i))
    return series


def test_pedestals_and_noise_are_recovered_and_every_injected_bad_pixel_is_flagged(sim):
    cal, report = calibrate_darks(darks(sim), serials=sim.serials)
    truth = sim.truth
    bad = to_modules(sim.any_bad().astype(np.uint8)).astype(bool)  # (1, 512, 1024)
    good = ~bad[:, None].repeat(3, 1)
    # the mean of 100 frames: within 5 standard errors of the truth (plus ADC rounding)
    error = np.abs(cal.pedestal - truth.pedestal)[good]
    tolerance = (5 * truth.pedestal_rms / np.sqrt(FRAMES) + 0.3)[good]
    assert (error < tolerance).all(), float((error / tolerance).max())
    rms_error = np.abs(cal.pedestal_rms[good] / truth.pedestal_rms[good] - 1)
    assert np.median(rms_error) < 0.1 and rms_error.max() < 0.5
    mask = cal.pixel_mask[0]
    for kind, bit in (("noisy", NOISY), ("dead", DEAD), ("wrong G0", GAIN_STAGE),
                      ("wrong G1", GAIN_STAGE), ("wrong G2", GAIN_STAGE)):
        injected = sim.bad[kind]
        assert injected.sum() == 524  # 0.1 % of a module's pixels
        assert ((mask[injected] & bit) != 0).all(), f"{kind}: not every pixel flagged"
    false = (mask != 0) & ~sim.any_bad()
    assert false.sum() < 1e-4 * mask.size, int(false.sum())
    assert report.bad[0]["dead"] == 524 and report.bad[0]["wrong gain"] == 3 * 524
    assert report.frames == {"G0": FRAMES, "G1": FRAMES, "G2": FRAMES}
    assert report.rms["G0"][1] == pytest.approx(12.0, rel=0.1)  # the median G0 noise
    text = report.text()
    assert "M100" in text and "wrong gain" in text and "p99.9" in text


def test_a_stage_without_a_series_keeps_the_base_calibrations_pedestal(sim):
    full, _ = calibrate_darks(darks(sim, 20))
    only_g0 = {0: darks(sim, 20)[0]}
    cal, report = calibrate_darks(only_g0, base=full)
    assert report.missing == ["G1", "G2"]
    np.testing.assert_array_equal(cal.pedestal[:, 1:], full.pedestal[:, 1:])
    unknown, _ = calibrate_darks(only_g0)
    assert np.isnan(unknown.pedestal[:, 1:]).all()


def write_dark_run(path, sim: JungfrauSimulator, stage: int, frames: int) -> None:
    """A compressed run file as the collector writes it (the real writer)."""
    w = RunWriter(path, sim.shape, "uint16", frames, 0, {"run_id": 1, "start": {}},
                  compression="bslz4")
    try:
        for i in range(frames):
            w.write(i, compress(sim.dark_frame(stage, i)), 1000 + i, worker=0)
        w.finalize(frames, {}, {}, {"workers": {}, "source": {}})
    finally:
        w.close()


@pytest.mark.timeout(120)
def test_the_pedestal_command_reads_runs_stream_node_wrote(node, tmp_path, sim):
    """G0 through a real pipeline from the simulated detector, G1 and G2 written by the run
    writer; the command's calibration is exactly what the series give in-process."""
    control, data, fanin = (f"ipc://{tmp_path}/{n}" for n in ("c", "d", "f"))
    timing = ("--ready-timeout", "30", "--peer-timeout", "5")
    collector = node("collector", "--control", control, "--input", fanin, "--file",
                     str(tmp_path / "g0.h5"), *timing)
    worker = node("worker", "--control", control, "--input", data, "--output", fanin,
                  "--name", "w0", *timing)
    source = node("source", "--control", control, "--data", data, "--workers", "1",
                  "--frames", "40", "--from", f"synthetic:jungfrau?dark=G0&seed={sim.seed}"
                  "&bad=0.001", "--compress", "bslz4", *timing)
    assert finish(source)[0] == ExitCode.OK
    for proc in (collector, worker):
        assert finish(proc)[0] == ExitCode.OK
    for stage in (1, 2):
        write_dark_run(tmp_path / f"g{stage}.h5", sim, stage, 40)
    maps = sim.write_gain_maps(tmp_path)
    out = tmp_path / "cal.h5"
    args = ["pedestal", "--g0", f"file://{tmp_path}/g0.h5", "--g1", f"file://{tmp_path}/g1.h5",
            "--g2", f"file://{tmp_path}/g2.h5", "--gain-maps", *map(str, maps), "-o", str(out)]
    code, text, err = finish(node(*args), timeout=100)
    assert code == ExitCode.OK, err
    assert "G0: 40 frames from file://" in text and "M100" in text and "p50" in text
    cal = read_calibration(out)
    want, _ = calibrate_darks(darks(sim, 40), serials=sim.serials)
    for name in ("pedestal", "pedestal_rms", "pixel_mask"):
        np.testing.assert_array_equal(getattr(cal, name), getattr(want, name), err_msg=name)
    np.testing.assert_array_equal(cal.gain, sim.truth.gain)
    assert cal.serials == ("M100",) and cal.dark_frames == (40, 40, 40)
    assert [s["stage"] for s in cal.sources["pedestal"]] == ["G0", "G1", "G2"]
    assert cal.sources["pedestal"][0]["path"].endswith("g0.h5")
    again = finish(node(*args), timeout=60)
    assert again[0] == ExitCode.CONFIG and "exists" in again[2]


@pytest.mark.timeout(120)
def test_the_pedestal_command_from_the_simulator_updates_g0_over_a_base(node, tmp_path):
    base = tmp_path / "base.h5"
    common = ["--frames", "30", "--seed", "4"]
    series = [f"--g{s}" for s in range(3)]
    first = ["pedestal", *[a for s in series for a in (s, "synthetic:jungfrau?modules=2")],
             *common, "-o", str(base)]
    code, text, err = finish(node(*first), timeout=100)
    assert code == ExitCode.OK, err
    assert text.count("30 frames") >= 3 and "2 module(s)" in text
    update = tmp_path / "update.h5"
    code, text, err = finish(node("pedestal", "--g0", "synthetic:jungfrau?modules=2&seed=9",
                                  *common, "--base", str(base), "-o", str(update)), timeout=100)
    assert code == ExitCode.OK, err
    assert "no series   G1, G2" in text
    a, b = read_calibration(base), read_calibration(update)
    np.testing.assert_array_equal(a.pedestal[:, 1:], b.pedestal[:, 1:])
    assert not np.array_equal(a.pedestal[:, 0], b.pedestal[:, 0])
    assert b.dark_frames == (30, 0, 0)


@pytest.mark.timeout(120)
def test_the_pedestal_command_reads_a_dark_series_over_udp(node, tmp_path):
    """One module's G0 series sent as JUNGFRAU packets; each frame another dark image."""
    from stream_node.origins.udp import PRESETS, default_positions, schedule, send
    from test_udp import free_udp_ports

    geo, port, frames = PRESETS["jungfrau"], free_udp_ports(1), 30
    sim = JungfrauSimulator(1, seed=8, bad=0.0)
    proc = node("pedestal", "--g0", f"udp://127.0.0.1:{port}?modules=1&frames={frames}&first=1",
                "-o", str(tmp_path / "udp.h5"), "--timeout", "5")
    for line in proc.stderr:  # the ports are bound before this line
        if "udp: receiving on" in line:
            break
    sent = []

    def sender() -> None:
        for i in range(frames):
            image = sim.dark_frame(0, i)
            sent.append(image)
            send("127.0.0.1", [port], geo, schedule(geo, 1, 1, first=i + 1),
                 image.reshape(1, -1).view(np.uint8), default_positions(1, (1, 1)),
                 rate_pps=20_000)

    thread = threading.Thread(target=sender)
    thread.start()
    thread.join(60)
    code, text, err = finish(proc, timeout=60)
    assert code == ExitCode.OK, err
    cal = read_calibration(tmp_path / "udp.h5")
    received = int(text.split("G0: ")[1].split(" frames")[0])
    # a frame that lost packets is skipped (never averaged) and one the loaded 2-core host
    # let the receiver miss is reported missing: most frames come
    assert received >= frames - 5, text
    # the sender stamps each packet's first 8 bytes with the frame number: those pixels aside,
    # the pedestal is the mean of the frames that came (all of them: exactly their mean)
    stamped = np.zeros(MODULE, bool)
    stamped.reshape(128, -1)[:, :4] = True
    adc = np.stack([(f & 0x3FFF).astype(np.float64) for f in sent])[:, ~stamped]
    pedestal = cal.pedestal[0, 0][~stamped]
    if received == frames:
        np.testing.assert_allclose(pedestal, adc.mean(0), rtol=1e-6)
    assert ((pedestal >= adc.min(0) - 1e-3) & (pedestal <= adc.max(0) + 1e-3)).all()
    with h5py.File(tmp_path / "udp.h5") as f:
        assert f["dark_frames"][()].tolist() == [received, 0, 0]
