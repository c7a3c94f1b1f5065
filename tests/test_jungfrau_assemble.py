"""The `assemble` kernel: Numba against the numpy reference on random geometries (every
orientation, chip layouts with and without double pixels, every dtype), the rule that shares a
double pixel's value, and assembly in a chain: its output, fill, errors and pixel mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_node.kernels import _numba, build_chain, reference
from stream_node.kernels.calibration import Calibration, write_calibration
from stream_node.kernels.chain import output_layout
from stream_node.model.errors import ConfigError
from stream_node.model.geometry import Geometry
from stream_node.model.instrument import ChipLayout, Instrument, Module
from stream_node.model.pixel_mask import DEAD, GAP, USER

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "geometry"
FAST_SETTINGS = settings(max_examples=40, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64]
STEPS = [(0, 1), (0, -1), (1, 0), (-1, 0)]


def module_at(origin: tuple[int, int], row0: int, col0: int, fast: tuple[int, int],
              slow: tuple[int, int], size: tuple[int, int], chips: ChipLayout | None) -> Module:
    """A module whose image box starts at (row0, col0), turned as `fast`/`slow` say."""
    a, b = chips.image_shape if chips else size
    start = [row0, col0]
    for axis in (0, 1):
        if slow[axis] < 0:
            start[axis] += a - 1
        if fast[axis] < 0:
            start[axis] += b - 1
    corner = (start[1] - min(0, fast[1]) - min(0, slow[1]),
              start[0] - min(0, fast[0]) - min(0, slow[0]))
    vector = [(-float(step[1]), -float(step[0]), 0.0) for step in (fast, slow)]
    return Module(origin, size, (float(corner[0]), float(corner[1])), vector[0], vector[1],
                  chips)


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    """1-3 modules with random chips, orientations and gaps, stacked in the frame."""
    modules, row, frame_row = [], 0, 0
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            chips = ChipLayout((draw(st.integers(1, 2)), draw(st.integers(1, 3))),
                               (draw(st.integers(2, 5)), draw(st.integers(2, 5))),
                               draw(st.booleans()))
            size = chips.module_shape
        else:
            chips, size = None, (draw(st.integers(1, 6)), draw(st.integers(1, 7)))
        fast = draw(st.sampled_from(STEPS))
        slow = draw(st.sampled_from([s for s in STEPS if s[0] * fast[0] + s[1] * fast[1] == 0]))
        col0 = draw(st.integers(0, 3))
        module = module_at((frame_row, 0), row, col0, fast, slow, size, chips)
        modules.append(module)
        frame_row += size[0]
        shape = chips.image_shape if chips else size
        row += (shape[0] if slow[0] else shape[1]) + draw(st.integers(0, 2))
    return Geometry.from_instrument(Instrument(modules=tuple(modules)))


def frame_for(g: Geometry, dtype: type, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, g.frame_shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 60000), g.frame_shape,
                        dtype=np.int64).astype(dtype)


@FAST_SETTINGS
@given(g=geometries(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_assemble_matches_the_reference_on_random_geometries(g, dtype, seed):
    rng = np.random.default_rng(seed)
    frame = frame_for(g, dtype, rng)
    fill = np.nan if np.dtype(dtype).kind == "f" else 3
    table, gaps = g.table(), g.gap_runs()
    ref = np.empty(g.image_shape, dtype)
    fast = np.full(g.image_shape, 7, dtype)
    n_ref = reference.assemble(frame, ref, table, gaps, fill)
    n = _numba.assemble(frame, fast, table, gaps, fill)
    assert n == n_ref == int(g.gaps().sum())
    np.testing.assert_array_equal(fast, ref)
    covered = ~g.gaps()
    read = sum(frame[p.origin[0]:p.origin[0] + p.size[0], p.origin[1]:p.origin[1] + p.size[1]]
               .astype(np.float64 if np.dtype(dtype).kind == "f" else np.int64).sum()
               for p in g.placements)  # modules of several widths leave frame pixels unread
    if np.dtype(dtype).kind == "f":
        np.testing.assert_equal(np.isnan(ref), ~covered)
        assert ref[covered].astype(np.float64).sum() == pytest.approx(read, rel=1e-6, abs=1e-3)
    else:  # shared exactly: no count lost or made up
        assert ref[covered].astype(np.int64).sum() == read
        assert (ref[~covered] == 3).all()


@pytest.mark.parametrize("impl", [reference, _numba], ids=["reference", "numba"])
def test_a_double_pixel_shares_its_value_two_or_four_ways(impl):
    # one module of 2 x 2 chips of 3 x 3: raw row/column 2 and 3 are double -> an 8 x 8 image
    g = Geometry.from_instrument(Instrument(modules=(
        Module((0, 0), (6, 6), chips=ChipLayout((2, 2), (3, 3), True)),)))
    assert g.image_shape == (8, 8)
    frame = np.zeros((6, 6), np.int32)
    frame[0, 2] = 5  # right border of chip 0 (a plain row): image (0, 2) and (0, 3)
    frame[0, 3] = -3  # left border of chip 1: image (0, 4) and (0, 5)
    frame[2, 2] = 7  # a corner: image rows 2-3, columns 2-3
    frame[5, 0] = 9  # a plain pixel of chip 2: image (7, 0)
    out = np.empty((8, 8), np.int32)
    assert impl.assemble(frame, out, g.table(), g.gap_runs(), -99) == 0
    assert out[0, 2:6].tolist() == [3, 2, -1, -2]  # 5 = 3 + 2; -3 = -1 + -2 (floor division)
    assert out[2:4, 2:4].tolist() == [[2, 2], [2, 1]]  # 7 = 2+2+2+1, the remainder first
    assert out[7, 0] == 9 and out.sum() == frame.sum()
    floats = np.empty((8, 8), np.float32)
    impl.assemble(frame.astype(np.float32), floats, g.table(), g.gap_runs(), np.nan)
    assert floats[0, 2:6].tolist() == [2.5, 2.5, -1.5, -1.5]
    assert floats[2:4, 2:4].ravel().tolist() == [1.75] * 4


def test_a_jungfrau_4m_chain_assembles_as_its_reference_with_gaps_filled():
    geometry = str(EXAMPLES / "jungfrau4m.geom")
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 2000, (4096, 1024), dtype=np.uint16)
    spec = [{"kernel": "assemble", "geometry": geometry}]
    fast = build_chain(spec, (4096, 1024), np.uint16)
    slow = build_chain(spec, (4096, 1024), np.uint16, backend="reference")
    assert fast.out_shape == (2164, 2068) and fast.out_dtype == np.uint16
    out = fast.apply(frame, frame_id=1)
    np.testing.assert_array_equal(out, slow.apply(frame, frame_id=1))
    gaps = Geometry.from_file(geometry).gaps()
    assert (out[gaps] == 65535).all()  # unsigned: the dtype's largest value by default
    # module 3 (stack rows 1536..2047) is in image row block 1, column block 1
    np.testing.assert_array_equal(out[550:550 + 255, 1038:1038 + 255], frame[1536:1791, :255])
    assert out[~gaps].astype(np.int64).sum() == frame.astype(np.int64).sum()


@pytest.mark.parametrize(("dtype", "fill"), [("float32", "nan"), ("int32", -1),
                                             ("uint32", 2**32 - 1)])
def test_gaps_default_to_nan_or_the_integer_marker(dtype, fill):
    chain = build_chain([{"kernel": "assemble", "geometry": str(EXAMPLES / "jungfrau4m.toml")}],
                        (4096, 1024), dtype)
    out = chain.apply(np.ones((4096, 1024), dtype))
    gap = out[520, 0]  # between module rows 0 and 1
    assert np.isnan(gap) if fill == "nan" else gap == fill


def test_a_geometry_can_be_given_inline_in_the_spec():
    inline = {"detector": {"modules": [
        {"origin": [0, 0], "size": [2, 3]}, {"origin": [2, 0], "size": [2, 3],
                                             "position": [0, 3]}]}}
    chain = build_chain([{"kernel": "assemble", "geometry": inline, "fill": 0}], (4, 3),
                        "uint8")
    out = chain.apply(np.arange(12, dtype=np.uint8).reshape(4, 3))
    assert out.tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 0], [6, 7, 8], [9, 10, 11]]


@pytest.mark.parametrize(("entry", "shape", "match"), [
    ({"geometry": str(EXAMPLES / "jungfrau4m.toml")}, (2048, 1024),
     r"make frames of 4096x1024, the run's are 2048x1024"),
    ({"geometry": str(EXAMPLES / "jungfrau4m.toml"), "fill": 70000}, (4096, 1024),
     "'fill' must be an integer a uint16 holds"),
    ({}, (4096, 1024), "'geometry' is required"),
    ({"geometry": 7}, (4096, 1024), "a geometry file's path or its tables"),
    ({"geometry": "/nonexistent/det.geom"}, (4096, 1024), "No such file"),
])
def test_bad_assembly_specs_are_config_errors_naming_the_parameter(entry, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_chain([{"kernel": "assemble", **entry}], shape, "uint16")


def test_the_chain_knows_its_outputs_pixel_mask_and_geometry(tmp_path):
    """Bad pixels of the calibration and of a user mask, through photonise and assembly,
    gaps marked; binning ORs blocks and is no longer the geometry's image."""
    geometry = str(EXAMPLES / "jungfrau4m.geom")
    bad = np.zeros((8, 512, 1024), np.uint32)
    bad[3, 0, 255] = DEAD  # a double border pixel of module 3: two image pixels
    cal = Calibration(pedestal=np.zeros((8, 3, 512, 1024), np.float32),
                      gain=np.ones((8, 3, 512, 1024), np.float32), pixel_mask=bad)
    write_calibration(tmp_path / "cal.h5", cal)
    user = np.zeros((4096, 1024), np.uint8)
    user[0, 0] = 1
    np.save(tmp_path / "mask.npy", user)
    spec = [{"kernel": "gain_correction", "calibration": str(tmp_path / "cal.h5"),
             "mask": str(tmp_path / "mask.npy")},
            {"kernel": "photonise", "photon_energy_kev": 12.4},
            {"kernel": "assemble", "geometry": geometry}]
    layout = output_layout(spec, (4096, 1024), "uint16")
    g = Geometry.from_file(geometry)
    assert layout.geometry is not None and layout.geometry.placements == g.placements
    mask = layout.pixel_mask
    assert mask.shape == (2164, 2068)
    assert ((mask & GAP) != 0).sum() == g.gaps().sum()
    assert np.argwhere(mask & DEAD).tolist() == [[550, 1038 + 255], [550, 1038 + 256]]
    assert np.argwhere(mask & USER).tolist() == [[0, 0]]
    binned = output_layout([*spec, {"kernel": "bin2x2"}], (4096, 1024), "uint16")
    assert binned.geometry is None and binned.pixel_mask.shape == (1082, 1034)
    assert binned.pixel_mask[275, 1038 // 2 + 127] & DEAD
    plain = output_layout([{"kernel": "bin2x2"}], (4096, 1024), "uint16")
    assert plain.pixel_mask is None and plain.geometry is None


def test_a_collector_that_cannot_read_the_chains_geometry_says_so_and_writes_on(caplog):
    """The collector may run where the workers' files are not: the file then lacks the chain's
    pixel mask and assembled geometry, and the log says why; the run is not refused."""
    from stream_node.storage.nexus import _chain_layout

    start = {"kernels": [{"kernel": "assemble", "geometry": "/nonexistent/jf.geom"}],
             "input": {"shape": [4096, 1024], "dtype": "uint16"}}
    assert _chain_layout({"start": start}) is None
    assert "no pixel mask" in caplog.text and "/nonexistent/jf.geom" in caplog.text
    assert _chain_layout({"start": {"kernels": []}}) is None
