"""Kernels: every Numba kernel against its numpy reference, edge values, and the chain API."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_node.kernels import KERNELS, KernelError, _numba, build_chain, reference
from stream_node.kernels.geometry import azimuthal_bin_index, checked_rois
from stream_node.kernels.registry import binned_dtype
from stream_node.model.errors import ConfigError, StreamNodeError

# Small shapes, but up to ~12k pixels so the gain correction's 64-pixel G1/G2 bit-mask path is
# exercised, not only its short-tail path (several 32768-pixel chunks: the parallel test below).
SHAPES = st.tuples(st.integers(1, 80), st.integers(1, 150))
SEEDS = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SUM_DTYPES = [np.uint16, np.int32, np.float32, np.float64]

G0, G1, G2, INVALID = 0b00, 0b01, 0b11, 0b10


def raw_frame(rng: np.random.Generator, shape: tuple[int, int],
              p_stage: tuple[float, float, float, float] = (0.85, 0.08, 0.05, 0.02)) -> np.ndarray:
    """Random JUNGFRAU-like pixels: every gain stage code, ADC values including 0 and 0x3FFF."""
    codes = rng.choice(np.array([G0, G1, G2, INVALID], np.uint16), size=shape, p=p_stage)
    adc = rng.integers(0, 1 << 14, shape, dtype=np.uint16)
    adc[rng.random(shape) < 0.05] = 0x3FFF  # saturated
    adc[rng.random(shape) < 0.02] = 0
    return (codes << np.uint16(14)) | adc


def maps(rng: np.random.Generator, shape: tuple[int, int],
         nasty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    ped = rng.uniform(500, 3000, (3, *shape)).astype(np.float32)
    gain = rng.uniform(0.5, 60, (3, *shape)).astype(np.float32) * np.array(
        [1, -1, -1], np.float32)[:, None, None]  # G1/G2 gains are negative on JUNGFRAU
    if nasty:  # NaN / inf / zero sprinkled through every map
        for arr in (ped, gain):
            for value in (np.nan, np.inf, -np.inf, 0.0):
                arr[rng.random(arr.shape) < 0.03] = value
    return ped, gain


def assert_same(fast: np.ndarray, ref: np.ndarray) -> None:
    assert fast.dtype == ref.dtype
    np.testing.assert_array_equal(fast, ref)  # NaN == NaN here


# -- gain correction -------------------------------------------------------------------------------


@FAST
@given(shape=SHAPES, seed=SEEDS, with_mask=st.booleans(), nasty=st.booleans(),
       fill=st.sampled_from([0.0, float("nan"), -1.0]))
def test_gain_correction_matches_reference(shape, seed, with_mask, nasty, fill):
    rng = np.random.default_rng(seed)
    raw = raw_frame(rng, shape)
    ped, gain = maps(rng, shape, nasty)
    mask = (rng.random(shape) < 0.1).astype(np.uint8) if with_mask else None
    out_ref = np.empty(shape, np.float32)
    out = np.full(shape, 7.0, np.float32)
    n_ref = reference.gain_correction(raw, out_ref, ped, gain, mask, fill)
    n = _numba.gain_correction(raw, out, ped, gain, mask, fill)
    assert n == n_ref
    assert_same(out, out_ref)
    out[...] = 7.0  # what a chain runs: the same kernel on the packed (interleaved) maps
    assert _numba.gain_correction_packed(raw, out, *_numba.pack_gain_maps(ped, gain), mask,
                                         fill) == n_ref
    assert_same(out, out_ref)


@pytest.mark.parametrize("p_stage", [(1, 0, 0, 0), (0.97, 0.02, 0.009, 0.001), (0, 0.5, 0.5, 0)],
                         ids=["all-G0", "spots", "all-high"])
def test_gain_correction_parallel_matches_serial_and_reference(p_stage):
    rng = np.random.default_rng(1)
    shape = (397, 211)  # two 32768-pixel chunks and a short tail (not a multiple of 64)
    raw = raw_frame(rng, shape, p_stage)
    ped, gain = maps(rng, shape)
    mask = (rng.random(shape) < 0.05).astype(np.uint8)
    ref = np.empty(shape, np.float32)
    n_ref = reference.gain_correction(raw, ref, ped, gain, mask, 0.0)
    packed = _numba.pack_gain_maps(ped, gain)
    # without scratch (each call allocates), with one row, and with more rows than chunks
    scratches = ((), (_numba.gain_scratch(),), (_numba.gain_scratch(5),))
    for fn, maps_ in ((_numba.gain_correction, (ped, gain)),
                      (_numba.gain_correction_parallel, (ped, gain)),
                      (_numba.gain_correction_packed, packed),
                      (_numba.gain_correction_packed_parallel, packed)):
        for m, scratch in itertools.product((mask, None), scratches):
            out = np.empty(shape, np.float32)
            n_want = n_ref if m is mask else reference.gain_correction(raw, ref, ped, gain,
                                                                       None, 0.0)
            assert fn(raw, out, *maps_, m, 0.0, *scratch) == n_want
            want = ref.copy()
            reference.gain_correction(raw, want, ped, gain, m, 0.0)
            assert_same(out, want)


@pytest.mark.parametrize("impl", [reference, _numba], ids=["reference", "numba"])
def test_gain_correction_edge_values_every_stage_saturated_masked(impl):
    codes = np.array([G0, G1, G2, INVALID] * 2, np.uint16)
    adc = np.array([0] * 4 + [0x3FFF] * 4, np.uint16)
    raw = ((codes << np.uint16(14)) | adc).reshape(2, 4)
    ped = np.stack([np.full((2, 4), v, np.float32) for v in (100.0, 200.0, 300.0)])
    gain = np.stack([np.full((2, 4), v, np.float32) for v in (40.0, -2.0, -0.5)])
    mask = np.zeros((2, 4), np.uint8)
    mask[1, 0] = 1  # a saturated G0 pixel, masked
    out = np.empty((2, 4), np.float32)
    filled = impl.gain_correction(raw, out, ped, gain, mask, -7.0)
    f = np.float32
    expected = np.array([
        [(0 - 100) / f(40), (0 - 200) / f(-2), (0 - 300) / f(-0.5), -7],
        [-7, (16383 - 200) / f(-2), (16383 - 300) / f(-0.5), -7],
    ], np.float32)
    assert_same(out, expected)
    assert filled == 3  # two invalid-stage pixels and one masked one


def test_gain_correction_nan_and_inf_in_maps_propagate_like_numpy():
    raw = np.full((1, 4), (G1 << 14) | 1000, np.uint16)
    ped = np.full((3, 1, 4), 100.0, np.float32)
    gain = np.full((3, 1, 4), 2.0, np.float32)
    ped[1, 0, 0] = np.nan
    gain[1, 0, 1] = 0.0
    gain[1, 0, 2] = np.inf
    ped[1, 0, 3] = 1000.0
    gain[1, 0, 3] = 0.0  # 0 / 0
    out = np.empty((1, 4), np.float32)
    assert _numba.gain_correction(raw, out, ped, gain, None, 0.0) == 0  # not counted as filled
    np.testing.assert_array_equal(out, [[np.nan, np.inf, 0.0, np.nan]])


# -- pedestal tracking -----------------------------------------------------------------------------


@FAST
@given(shape=SHAPES, seed=SEEDS, window=st.integers(1, 5), frames=st.integers(1, 8))
def test_pedestal_update_matches_reference(shape, seed, window, frames):
    rng = np.random.default_rng(seed)
    state = {impl: (np.zeros((3, *shape), np.float32), np.zeros((3, *shape), np.uint32))
             for impl in (reference, _numba)}
    for _ in range(frames):
        raw = raw_frame(rng, shape)
        counts = [impl.pedestal_update(raw, *state[impl], window) for impl in state]
        assert counts[0] == counts[1] == int(((raw >> 14) == INVALID).sum())
    for a, b in zip(state[reference], state[_numba], strict=True):
        assert_same(b, a)


def test_pedestal_is_the_mean_then_a_moving_average_per_stage():
    ped = np.zeros((3, 1, 1), np.float32)
    counts = np.zeros((3, 1, 1), np.uint32)
    for adc in (10, 20, 30):  # G0 dark frames; window 2
        _numba.pedestal_update(np.array([[adc]], np.uint16), ped, counts, 2)
    assert ped[0, 0, 0] == 22.5  # mean(10, 20) = 15, then 15 + (30 - 15) / 2
    assert counts[0, 0, 0] == 2
    _numba.pedestal_update(np.array([[(G2 << 14) | 500]], np.uint16), ped, counts, 2)
    assert ped[2, 0, 0] == 500.0 and ped[0, 0, 0] == 22.5 and counts[2, 0, 0] == 1
    assert _numba.pedestal_update(np.array([[(INVALID << 14) | 9]], np.uint16), ped, counts, 2) == 1
    assert ped[1, 0, 0] == 0.0 and counts[1, 0, 0] == 0


# -- mask, photons --------------------------------------------------------------------------------


@FAST
@given(shape=SHAPES, seed=SEEDS, dtype=st.sampled_from([np.uint16, np.float32]),
       in_place=st.booleans())
def test_apply_mask_matches_reference(shape, seed, dtype, in_place):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 1000, shape).astype(dtype)
    mask = (rng.random(shape) < 0.2).astype(np.uint8)
    ref = np.empty(shape, dtype)
    n_ref = reference.apply_mask(frame, ref, mask, 3)
    out = frame.copy() if in_place else np.empty(shape, dtype)
    src = out if in_place else frame
    assert _numba.apply_mask(src, out, mask, 3) == n_ref == int(mask.sum())
    assert_same(out, ref)


@FAST
@given(shape=SHAPES, seed=SEEDS, in_dtype=st.sampled_from([np.float32, np.float64]),
       out_dtype=st.sampled_from([np.uint16, np.int32]),
       photon_energy=st.floats(0.5, 30), threshold=st.floats(0.05, 1.0))
def test_photonise_matches_reference(shape, seed, in_dtype, out_dtype, photon_energy, threshold):
    rng = np.random.default_rng(seed)
    energy = (rng.normal(0, 1, shape) + rng.poisson(2, shape)) * photon_energy
    energy[rng.random(shape) < 0.03] = np.nan
    energy[rng.random(shape) < 0.03] = np.inf
    energy[rng.random(shape) < 0.03] = -np.inf
    energy[rng.random(shape) < 0.03] = 1e12  # more photons than the dtype holds
    energy = energy.astype(in_dtype)
    ref = np.empty(shape, out_dtype)
    out = np.empty(shape, out_dtype)
    assert (_numba.photonise(energy, out, photon_energy, threshold)
            == reference.photonise(energy, ref, photon_energy, threshold))
    assert_same(out, ref)


@pytest.mark.parametrize("impl", [reference, _numba], ids=["reference", "numba"])
def test_photonise_threshold_rounds_and_counts_clipped(impl):
    e = np.array([[-5.0, 0.0, 0.49, 0.5, 1.49, 1.5, 2.0, np.nan, np.inf, 1e9]], np.float32)
    out = np.empty(e.shape, np.uint16)
    assert impl.photonise(e, out, 1.0, 0.5) == 3  # NaN, inf, 1e9 photons > 65535
    assert out.tolist() == [[0, 0, 0, 1, 1, 2, 2, 0, 0, 65535]]
    assert impl.photonise(e, out, 1.0, 0.9) == 3  # one photon only from 0.9 photon energies
    assert out.tolist() == [[0, 0, 0, 0, 1, 1, 2, 0, 0, 65535]]


# -- binning, ROIs, azimuthal integration ----------------------------------------------------------


def random_frame(rng: np.random.Generator, shape: tuple[int, int], dtype: type) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 50, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -(1 << 20)), min(info.max, 1 << 20), shape, dtype=dtype)


def assert_sums_equal(fast: np.ndarray, ref: np.ndarray) -> None:
    """Integer sums exactly; float sums to rounding (the summation orders differ)."""
    if fast.dtype.kind == "f":
        np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-9)
    else:
        assert_same(fast, ref)


@FAST
@given(shape=SHAPES, seed=SEEDS, dtype=st.sampled_from(SUM_DTYPES), factor=st.sampled_from([2, 4]))
def test_binning_matches_reference(shape, seed, dtype, factor):
    rng = np.random.default_rng(seed)
    frame = random_frame(rng, shape, dtype)
    out_shape = (shape[0] // factor, shape[1] // factor)
    out_dtype = binned_dtype(frame.dtype)  # what the chain allocates
    ref, out = np.empty(out_shape, out_dtype), np.empty(out_shape, out_dtype)
    name = f"bin{factor}x{factor}"
    getattr(reference, name)(frame, ref)
    getattr(_numba, name)(frame, out)
    assert_sums_equal(out, ref)


@pytest.mark.parametrize("impl", [reference, _numba], ids=["reference", "numba"])
def test_binning_odd_shapes_drop_the_last_rows_and_columns(impl):
    frame = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9)
    out2 = np.empty((3, 4), np.uint32)
    impl.bin2x2(frame, out2)
    assert out2[0, 0] == 0 + 1 + 9 + 10 and out2[2, 3] == sum(frame[4:6, 6:8].ravel())
    out4 = np.empty((1, 2), np.uint32)
    impl.bin4x4(frame, out4)
    assert out4.tolist() == [[int(frame[:4, :4].sum()), int(frame[:4, 4:8].sum())]]


@FAST
@given(shape=SHAPES, seed=SEEDS, dtype=st.sampled_from(SUM_DTYPES), n_rois=st.integers(1, 6))
def test_roi_sums_match_reference(shape, seed, dtype, n_rois):
    rng = np.random.default_rng(seed)
    frame = random_frame(rng, shape, dtype)
    ys = np.sort(rng.integers(0, shape[0] + 1, (n_rois, 2)), axis=1)
    xs = np.sort(rng.integers(0, shape[1] + 1, (n_rois, 2)), axis=1)
    ys[:, 1] = np.maximum(ys[:, 1], ys[:, 0] + 1).clip(max=shape[0])
    ys[:, 0] = np.minimum(ys[:, 0], ys[:, 1] - 1)
    xs[:, 1] = np.maximum(xs[:, 1], xs[:, 0] + 1).clip(max=shape[1])
    xs[:, 0] = np.minimum(xs[:, 0], xs[:, 1] - 1)
    rois = checked_rois(np.concatenate([ys, xs], axis=1), shape)
    ref, out = np.empty(n_rois), np.empty(n_rois)
    reference.roi_sums(frame, ref, rois)
    _numba.roi_sums(frame, out, rois)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


@FAST
@given(shape=SHAPES, seed=SEEDS, dtype=st.sampled_from(SUM_DTYPES), nbins=st.integers(1, 40),
       data=st.data())
def test_azimuthal_integration_matches_reference(shape, seed, dtype, nbins, data):
    rng = np.random.default_rng(seed)
    frame = random_frame(rng, shape, dtype)
    if frame.dtype.kind == "f":
        frame[rng.random(shape) < 0.05] = np.nan
        frame[rng.random(shape) < 0.05] = -np.inf
    centre = (data.draw(st.floats(-5, shape[0] + 5)), data.draw(st.floats(-5, shape[1] + 5)))
    mask = rng.random(shape) < 0.1
    index = azimuthal_bin_index(shape, centre, nbins, mask=mask)
    ref, out = np.empty((2, nbins)), np.full((2, nbins), 5.0)
    n_ref = reference.azimuthal_integrate(frame, ref, index)
    assert _numba.azimuthal_integrate(frame, out, index) == n_ref
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert out[1].sum() + n_ref == (~mask).sum()  # every unmasked pixel is in a bin or counted


def test_azimuthal_bin_index_radii_mask_and_r_max():
    index = azimuthal_bin_index((3, 3), (1, 1), nbins=2, r_max=2.0)
    # r = 0 at the centre, 1 beside it (bin 1 of width 1), sqrt(2) on the corners (bin 1).
    assert index.tolist() == [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    index = azimuthal_bin_index((1, 4), (0, 0), nbins=2, r_max=2.0)
    assert index.tolist() == [[0, 1, -1, -1]]  # r >= r_max: no bin
    mask = np.array([[0, 1, 0, 0]])
    assert azimuthal_bin_index((1, 4), (0, 0), 4, mask=mask).tolist() == [[0, -1, 2, 3]]


# -- the chain -------------------------------------------------------------------------------------


def exploding(frame, out, limit=100):
    """A user kernel that fails on frames with a bright pixel (a bug in a scientist's code)."""
    if frame.max() > limit:
        raise ValueError(f"pixel above {limit}")
    out[...] = frame


@pytest.fixture
def detector(tmp_path):
    """A 64x96 JUNGFRAU-like frame source, maps saved as .npy files."""
    shape = (64, 96)
    rng = np.random.default_rng(7)
    ped, gain = maps(rng, shape)
    gain[0] = 0.25  # ADC per keV of G0: a 12.4 keV photon is ~3 ADC above the pedestal
    mask = (rng.random(shape) < 0.02).astype(np.uint8)
    paths = {}
    for name, arr in (("ped", ped), ("gain", gain), ("mask", mask)):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], arr)
    frames = [raw_frame(rng, shape, (0.9, 0.05, 0.04, 0.01)) for _ in range(3)]
    return shape, paths, frames


def test_chain_of_built_ins_equals_the_references_applied_offline(detector):
    shape, paths, frames = detector
    spec = [
        {"kernel": "gain_correction", "pedestal": paths["ped"], "gain": paths["gain"],
         "mask": paths["mask"]},
        {"kernel": "photonise", "photon_energy_kev": 12.4, "threshold": 0.5},
        {"kernel": "bin2x2"},
    ]
    fast = build_chain(spec, shape, "uint16")
    slow = build_chain(spec, shape, np.uint16, backend="reference")
    assert fast.out_shape == (32, 48) and fast.out_dtype == np.uint32
    for i, frame in enumerate(frames):
        assert_same(fast.apply(frame, frame_id=i), slow.apply(frame, frame_id=i))
    counters = fast.counters
    assert counters == slow.counters
    gc = counters["gain_correction"]
    n_masked = int(np.load(paths["mask"]).sum())
    assert gc["frames"] == 3 and gc["masked"] == 3 * n_masked
    assert gc["filled"] == gc["masked"] + gc["invalid_gain"]
    assert gc["invalid_gain"] == sum(
        int((((f >> 14) == INVALID) & (np.load(paths["mask"]) == 0)).sum()) for f in frames)


def test_chain_compiles_at_build_for_writable_and_read_only_frames(detector):
    shape, paths, frames = detector
    chain = build_chain([{"kernel": "gain_correction", "pedestal": paths["ped"],
                          "gain": paths["gain"]},
                         {"kernel": "apply_mask", "mask": paths["mask"], "fill": np.nan}],
                        shape, "uint16")
    before = {k: len(KERNELS[k].fast.signatures) for k in ("gain_correction", "apply_mask")}
    frozen = frames[0].copy()
    frozen.flags.writeable = False  # as a frame received from ZeroMQ without a copy
    strided = np.zeros((shape[0], shape[1] * 2), np.uint16)[:, ::2]
    strided[...] = frames[1]
    for frame in (frames[0], frozen, strided):
        out = chain.apply(frame)
    assert {k: len(KERNELS[k].fast.signatures) for k in before} == before
    assert np.isnan(out[np.load(paths["mask"]) != 0]).all()
    assert chain.stage("apply_mask").inplace  # on the gain correction's buffer, no copy


def test_pedestal_chain_passes_frames_through_and_tracks_the_pedestal(detector):
    shape, _, frames = detector
    chain = build_chain([{"kernel": "pedestal_update", "window": 10}], shape, "uint16")
    stage = chain.stage("pedestal_update")
    assert stage.counters["frames"] == 0 and not stage.counts.any()  # warm-up did not count
    ped, counts = np.zeros((3, *shape), np.float32), np.zeros((3, *shape), np.uint32)
    for frame in frames:
        assert chain.apply(frame) is frame
        reference.pedestal_update(frame, ped, counts, 10)
    assert_same(stage.pedestal, ped)
    assert_same(stage.counts, counts)


def test_chain_binning_of_odd_frames_drops_the_remainder_and_refuses_too_small_ones():
    chain = build_chain([{"kernel": "bin4x4"}], (7, 9), "float32")
    assert (chain.out_shape, chain.out_dtype) == ((1, 2), np.float32)
    frame = np.arange(63, dtype=np.float32).reshape(7, 9)
    assert chain.apply(frame).tolist() == [[frame[:4, :4].sum(), frame[:4, 4:8].sum()]]
    with pytest.raises(ConfigError, match="no full 4x4 block"):
        build_chain([{"kernel": "bin4x4"}], (3, 9), "uint16")


def test_azimuthal_chain_from_a_beam_centre_equals_one_from_a_bin_index_file(detector, tmp_path):
    shape, paths, frames = detector
    index = azimuthal_bin_index(shape, (30.5, 40), 25, mask=np.load(paths["mask"]))
    np.save(tmp_path / "bins.npy", index)
    by_centre = build_chain([{"kernel": "azimuthal_integrate", "beam_centre": [30.5, 40],
                              "nbins": 25, "mask": paths["mask"]}], shape, "uint16")
    by_file = build_chain([{"kernel": "azimuthal_integrate",
                            "bin_index": str(tmp_path / "bins.npy")}], shape, "uint16")
    assert by_file.out_shape == by_centre.out_shape == (2, 25)
    assert_same(by_centre.apply(frames[0]).copy(), by_file.apply(frames[0]))


def test_pedestal_chain_started_from_a_map_is_a_moving_average_at_once(detector):
    shape, paths, frames = detector
    chain = build_chain([{"kernel": "pedestal_update", "window": 4, "pedestal": paths["ped"]}],
                        shape, "uint16")
    chain.apply(frames[0])
    ped = np.load(paths["ped"])
    counts = np.full((3, *shape), 4, np.uint32)
    reference.pedestal_update(frames[0], ped, counts, 4)
    assert_same(chain.stage("pedestal_update").pedestal, ped)


def test_user_kernels_by_dotted_path_numpy_and_numba(detector):
    shape, _, frames = detector
    chain = build_chain([
        {"kernel": "python:stream_node.kernels.examples.scale", "factor": 0.5,
         "out_dtype": "float32"},
        {"kernel": "python:stream_node.kernels.examples.zero_below", "low": 1000.0},
        {"kernel": "roi_sums", "rois": [[0, 10, 0, 10], [5, 64, 20, 96]]},
    ], shape, "uint16")
    out = chain.apply(frames[0])
    half = frames[0].astype(np.float32) * 0.5
    kept = np.where(half < 1000, 0, half)
    np.testing.assert_allclose(out, [kept[:10, :10].sum(), kept[5:, 20:].sum()], rtol=1e-6)
    assert chain.counters["python:stream_node.kernels.examples.zero_below"]["count"] == int(
        (half < 1000).sum())


def test_exception_in_a_user_kernel_is_a_kernel_error_naming_it_and_the_frame(detector):
    shape, _, _ = detector
    name = f"python:{__name__}.exploding"
    chain = build_chain([{"kernel": "bin2x2"}, {"kernel": name, "limit": 100}], shape, "uint16")
    dark = np.zeros(shape, np.uint16)
    bright = dark.copy()
    bright[3, 3] = 1000
    chain.apply(dark, frame_id=1)
    with pytest.raises(KernelError) as info:
        chain.apply(bright, frame_id=2)
    err = info.value
    assert isinstance(err, StreamNodeError)
    assert err.kernel == name and err.frame_id == 2
    assert name in str(err) and "frame 2" in str(err) and "pixel above 100" in str(err)
    assert isinstance(err.__cause__, ValueError)
    chain.apply(dark, frame_id=3)  # the chain goes on with the next frame
    assert chain.counters[name] == {"frames": 2, "errors": 1, "count": 0}


def test_a_frame_of_the_wrong_shape_is_a_kernel_error(detector):
    shape, _, _ = detector
    chain = build_chain([{"kernel": "bin2x2"}], shape, "uint16")
    with pytest.raises(KernelError, match="chain was built for"):
        chain.apply(np.zeros((2, 2), np.uint16), frame_id=9)


@pytest.mark.parametrize(("spec", "match"), [
    ([], "non-empty list"),
    ({"kernel": "bin2x2"}, "non-empty list"),
    ([{"kernal": "bin2x2"}], "'kernel' name"),
    ([{"kernel": "gain_corection"}], "unknown kernel 'gain_corection'"),
    ([{"kernel": "bin2x2", "factor": 3}], r"bin2x2: unknown parameter\(s\) 'factor'"),
    ([{"kernel": "gain_correction", "gain": "GAIN"}], "'pedestal' is required"),
    ([{"kernel": "gain_correction", "pedestal": "PED", "gain": "GAIN", "mask": "SMALL"}],
     r"'mask' has shape \(4, 4\), expected \(64, 96\)"),
    ([{"kernel": "gain_correction", "pedestal": "/nonexistent/ped.npy", "gain": "GAIN"}],
     "cannot load '/nonexistent/ped.npy'"),
    ([{"kernel": "gain_correction", "pedestal": "GAIN", "gain": "SMALL"}],
     r"'gain' has shape \(4, 4\), expected \(3, 64, 96\)"),
    ([{"kernel": "photonise", "photon_energy_kev": 12.4}], "dtype uint16 are not supported"),
    ([{"kernel": "gain_correction", "pedestal": "PED", "gain": "GAIN"},
      {"kernel": "photonise", "photon_energy_kev": -1}], "positive"),
    ([{"kernel": "gain_correction", "pedestal": "PED", "gain": "GAIN"},
      {"kernel": "photonise", "photon_energy_kev": 12.4, "threshold": 1.5}], r"\(0, 1\]"),
    ([{"kernel": "gain_correction", "pedestal": "PED", "gain": "GAIN"},
      {"kernel": "photonise", "photon_energy_kev": 12.4, "dtype": "float32"}], "must be one of"),
    ([{"kernel": "apply_mask", "mask": "SMALL"}], "expected"),
    ([{"kernel": "apply_mask", "mask": np.zeros((64, 96)), "fill": np.nan}], "NaN"),
    ([{"kernel": "roi_sums", "rois": [[0, 10, 90, 100]]}], "ROI 0 .* outside the 64x96 frame"),
    ([{"kernel": "roi_sums", "rois": [[0, 10, 0, 10]]}, {"kernel": "bin2x2"}],
     "only the last kernel"),
    ([{"kernel": "azimuthal_integrate", "nbins": 10}], "'beam_centre' is required"),
    ([{"kernel": "pedestal_update", "window": 0}], "integer >= 1"),
    ([{"kernel": "python:no_such_module_xyz.f"}], "cannot import 'no_such_module_xyz'"),
    ([{"kernel": "python:stream_node.kernels.examples.nope"}], "has no function 'nope'"),
    ([{"kernel": "python:exploding"}], "python:package.module.function"),
])
def test_bad_chain_specs_are_config_errors(detector, tmp_path, spec, match):
    shape, paths, _ = detector
    np.save(tmp_path / "small.npy", np.zeros((4, 4), np.float32))
    names = {"PED": paths["ped"], "GAIN": paths["gain"], "SMALL": str(tmp_path / "small.npy")}
    if isinstance(spec, list):
        spec = [{k: names.get(v, v) if isinstance(v, str) else v for k, v in e.items()}
                if isinstance(e, dict) else e for e in spec]
    with pytest.raises(ConfigError, match=match):
        build_chain(spec, shape, "uint16")


def test_registry_names_every_kernel_with_both_implementations():
    assert set(KERNELS) == {"gain_correction", "pedestal_update", "apply_mask", "photonise",
                            "bin2x2", "bin4x4", "roi_sums", "azimuthal_integrate", "assemble"}
    for name, info in KERNELS.items():
        assert info.reference is getattr(reference, name)
        assert info.fast is getattr(_numba, name)
        assert info.summary
