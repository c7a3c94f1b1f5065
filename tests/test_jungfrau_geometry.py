"""The geometry model's two readers (CrystFEL .geom, TOML) and the assembly plan they make:
module places, orientations, chip double pixels, gaps, and the errors that name what is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from stream_node.model.errors import ConfigError
from stream_node.model.geometry import Geometry, axis_map
from stream_node.model.instrument import FAST, JUNGFRAU, SLOW, ChipLayout, Instrument, Module
from stream_node.model.pixel_mask import GAP

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "geometry"


def geom_file(tmp_path: Path, body: str, header: str = "res = 13333.3\nclen = 95 mm\n") -> Path:
    path = tmp_path / "det.geom"
    path.write_text(header + textwrap.dedent(body))
    return path


def chips_of(name: str, module_row: int, corner: tuple[float, float], fs: str = "-1x",
             ss: str = "-1y", dim: str = "", size: int = 4, chips: tuple[int, int] = (2, 2),
             step: int = 6) -> str:
    """The panels <name>a0.. of one module: chips of `size` pixels, each `step` apart."""
    lines = []
    sign_f = -1 if fs.startswith("-") else 1
    sign_s = -1 if ss.startswith("-") else 1
    for a in range(chips[0] * chips[1]):
        r, c = divmod(a, chips[1])
        p = f"{name}a{a}"
        x = corner[0] + (sign_f * c * step if "x" in fs else sign_s * r * step if "x" in ss else 0)
        y = corner[1] + (sign_s * r * step if "y" in ss else sign_f * c * step if "y" in fs else 0)
        lines += [f"{p}/min_ss = {module_row + r * size}",
                  f"{p}/max_ss = {module_row + (r + 1) * size - 1}",
                  f"{p}/min_fs = {c * size}", f"{p}/max_fs = {(c + 1) * size - 1}",
                  f"{p}/fs = {fs}", f"{p}/ss = {ss}", f"{p}/corner_x = {x}",
                  f"{p}/corner_y = {y}"] + ([f"{p}/dim1 = {dim}"] if dim else [])
    return "\n".join(lines) + "\n"


def test_a_double_border_pixel_covers_two_image_pixels_along_each_axis():
    start, count = axis_map(1024, 256, True)
    assert start[[0, 254, 255, 256, 257, 511, 512, 767, 768, 1023]].tolist() == [
        0, 254, 255, 257, 259, 513, 515, 771, 773, 1029]
    assert count[[0, 254, 255, 256, 257, 1023]].tolist() == [1, 1, 2, 2, 1, 1]
    assert int((start + count).max()) == 1030 == JUNGFRAU.image_shape[1]
    assert int(count.sum()) == 1030  # every image pixel covered exactly once
    rows_start, rows_count = axis_map(512, 256, True)
    assert int(rows_count.sum()) == 514 == JUNGFRAU.image_shape[0]
    assert rows_start[[255, 256]].tolist() == [255, 257]
    plain, ones = axis_map(7, 3, False)
    assert plain.tolist() == list(range(7)) and ones.tolist() == [1] * 7


def test_the_crystfel_and_toml_jungfrau4m_examples_are_the_same_detector():
    crystfel = Geometry.from_file(EXAMPLES / "jungfrau4m.geom")
    toml = Geometry.from_file(EXAMPLES / "jungfrau4m.toml")
    assert crystfel.placements == toml.placements
    assert crystfel.frame_shape == (4096, 1024) and crystfel.image_shape == (2164, 2068)
    assert crystfel.instrument.beam_center == toml.instrument.beam_center == (1034.5, 1082.5)
    assert crystfel.instrument.distance == pytest.approx(0.120)
    assert crystfel.instrument.pixel_size == pytest.approx((75e-6, 75e-6))
    assert crystfel.instrument.energy == pytest.approx(12400.0)
    # module k: stack rows 512k.., image row (k // 2) * 550, column (k % 2) * 1038
    for k, p in enumerate(crystfel.placements):
        assert p.origin == (512 * k, 0) and p.chips == JUNGFRAU
        assert p.box == ((k // 2) * 550, (k % 2) * 1038, 514, 1030)
        assert (p.fast, p.slow) == ((0, 1), (1, 0))


def test_crystfel_chips_of_a_module_make_one_module_placed_by_its_first_chip(tmp_path):
    # two modules of 2 x 2 chips of 4 x 4 (256 x 256 is the size taken to have double pixels)
    path = geom_file(tmp_path, chips_of("p0", 0, (20.0, 10.0))
                     + chips_of("p1", 8, (20.0, -2.0)))
    inst = Instrument.from_file(path)
    assert [m.origin for m in inst.modules] == [(0, 0), (8, 0)]
    assert [m.size for m in inst.modules] == [(8, 8), (8, 8)]
    assert inst.modules[0].chips == ChipLayout((2, 2), (4, 4), False)
    assert inst.modules[0].fast == (-1.0, 0.0, 0.0) and inst.modules[0].slow == (0.0, -1.0, 0.0)
    # image x = 20 - x_lab, y = 10 - y_lab: module 0 at (0, 0), module 1 12 rows further down
    assert inst.beam_center == (20.0, 10.0)
    assert [m.position for m in inst.modules] == [(0.0, 0.0), (0.0, 12.0)]
    assert inst.distance == pytest.approx(0.095)
    assert inst.pixel_size[0] == pytest.approx(75e-6, 1e-5)
    g = Geometry.from_instrument(inst)
    assert g.image_shape == (20, 8) and g.frame_shape == (16, 8)
    assert g.gaps()[8:12].all() and not g.gaps()[:8].any() and not g.gaps()[12:].any()


def test_crystfel_3d_data_blocks_stack_modules_by_their_index(tmp_path):
    body = (chips_of("p0", 0, (8.0, 0.0), dim="0") + chips_of("p1", 0, (8.0, -10.0), dim="1"))
    inst = Instrument.from_file(geom_file(tmp_path, body, "res = 10000\ndim0 = %\ndim2 = ss\n"
                                                          "dim3 = fs\n"))
    assert [m.origin for m in inst.modules] == [(0, 0), (8, 0)]


def test_jungfrau_sized_chips_have_double_pixels(tmp_path):
    path = geom_file(tmp_path, chips_of("p0", 0, (0.0, 0.0), size=256, chips=(2, 4), step=258))
    (module,) = Instrument.from_file(path).modules
    assert module.chips == JUNGFRAU and module.size == (512, 1024)
    assert Geometry.from_instrument(Instrument(modules=(module,))).image_shape == (514, 1030)


@pytest.mark.parametrize(("fs", "ss", "fast", "slow"), [
    ("+1x", "-1y", (0, -1), (1, 0)),  # mirrored left-right: the first pixel at the right end
    ("-1x", "+1y", (0, 1), (-1, 0)),  # mirrored top-bottom
    ("+1x", "+1y", (0, -1), (-1, 0)),  # turned by 180 degrees
    ("-1y", "+1x", (1, 0), (0, -1)),  # turned by 90 degrees
])
def test_a_module_turned_in_space_is_turned_in_the_image(tmp_path, fs, ss, fast, slow):
    body = "\n".join(f"m/{k} = {v}" for k, v in (
        ("min_fs", 0), ("max_fs", 5), ("min_ss", 0), ("max_ss", 3), ("fs", fs), ("ss", ss),
        ("corner_x", 0), ("corner_y", 0)))
    g = Geometry.from_file(geom_file(tmp_path, body + "\n"))
    (p,) = g.placements
    assert (p.fast, p.slow) == (fast, slow)
    assert p.box[:2] == (0, 0) and g.image_shape == (p.box[2], p.box[3])
    # the first pixel sits at the image corner its directions start from
    assert p.start == (0 if slow[0] + fast[0] >= 0 else g.image_shape[0] - 1,
                       0 if slow[1] + fast[1] >= 0 else g.image_shape[1] - 1)


def test_a_toml_module_names_its_chips_by_preset_or_table(tmp_path):
    inst = Instrument.from_sections({"detector": {"modules": [
        {"origin": [0, 0], "size": [512, 1024], "chips": "jungfrau"},
        {"origin": [512, 0], "size": [6, 4], "position": [0, 600],
         "chips": {"chips": [2, 1], "size": [3, 4], "double_pixels": False}}]}}, "t")
    assert inst.modules[0].chips == JUNGFRAU
    assert inst.modules[1].chips == ChipLayout((2, 1), (3, 4), False)
    # START carries it: the wire form gives the same model back
    assert Instrument.from_wire(inst.to_wire()) == inst


@pytest.mark.parametrize(("sections", "match"), [
    ({"detector": {"modules": [{"origin": [0, 0], "size": [512, 1000], "chips": "jungfrau"}]}},
     r"size \[512, 1000\] is not what its chips read out"),
    ({"detector": {"modules": [{"origin": [0, 0], "size": [4, 4], "chips": "eiger9m"}]}},
     "not a known layout"),
    ({"detector": {"modules": [{"origin": [0, 0], "size": [4, 4], "chips": {"chips": [2]}}]}},
     "chips is a layout name"),
])
def test_bad_chip_layouts_are_refused_naming_the_module(sections, match):
    with pytest.raises(ConfigError, match=match):
        Instrument.from_sections(sections, "g.toml")


def test_modules_that_overlap_or_tilt_are_refused_naming_them():
    a = Module((0, 0), (4, 4), (0.0, 0.0))
    b = Module((4, 0), (4, 4), (2.0, 2.0))
    with pytest.raises(ConfigError, match="modules 0 and 1 overlap"):
        Geometry.from_instrument(Instrument(modules=(a, b)))
    tilted = Module((0, 0), (4, 4), fast=(-0.7, -0.7, 0.0), slow=(0.7, -0.7, 0.0))
    with pytest.raises(ConfigError, match=r"module 0 fast: direction \[-0.7, -0.7, 0.0\] is "
                                          "not along an image axis"):
        Geometry.from_instrument(Instrument(modules=(tilted,)))
    slightly = Module((0, 0), (4, 4), fast=(-0.9995, 0.03, 0.0), slow=(-0.03, -0.9995, 0.0))
    assert Geometry.from_instrument(Instrument(modules=(slightly,))).placements[0].fast == (0, 1)
    parallel = Module((0, 0), (4, 4), fast=FAST, slow=FAST)
    with pytest.raises(ConfigError, match="not perpendicular"):
        Geometry.from_instrument(Instrument(modules=(parallel,)))


def test_a_frame_that_is_not_the_geometrys_stack_is_refused_saying_both_sizes():
    g = Geometry.from_file(EXAMPLES / "jungfrau4m.toml")
    with pytest.raises(ConfigError, match=r"8 module\(s\) of 512x1024 make frames of "
                                          r"4096x1024, the run's are 2048x1024"):
        g.check_frame((2048, 1024), "assemble")


@pytest.mark.parametrize(("good", "bad", "match"), [
    ("pa0/min_fs = 0", "pa0/min_fs 0", r"det.geom:\d+: not 'key = value'"),
    ("pa0/fs = -1x", "pa0/fs = +1q", "pa0/fs: '\\+1q' is not a vector"),
    ("pa0/min_fs = 0", "pa0/min_fs = -3", "panel pa0 has data range .* not whole, non-negative"),
    ("pa0/corner_x = 0.0", "", "panel pa0 has no corner_x"),
])
def test_bad_crystfel_files_are_refused_naming_the_line_or_panel(tmp_path, good, bad, match):
    body = chips_of("p", 0, (0.0, 0.0))
    assert good in body
    with pytest.raises(ConfigError, match=match):
        Instrument.from_file(geom_file(tmp_path, body.replace(good, bad)))


def test_chips_of_one_module_that_point_different_ways_are_refused(tmp_path):
    body = chips_of("p0", 0, (0.0, 0.0)).replace("p0a3/fs = -1x", "p0a3/fs = +1y")
    with pytest.raises(ConfigError, match="p0a3 points another way than p0a0"):
        Instrument.from_file(geom_file(tmp_path, body))


def test_the_assembled_image_is_described_as_blocks_with_the_geometrys_beam_centre():
    g = Geometry.from_file(EXAMPLES / "jungfrau4m.geom")
    run = Instrument(distance=0.2, wavelength=1.0, beam_center=(1.0, 2.0))
    inst = g.assembled_instrument(run)
    assert inst.distance == 0.2 and inst.wavelength == 1.0  # the run's own values win ...
    assert inst.beam_center == (1034.5, 1082.5)  # ... but not where the image's coords matter
    assert inst.pixel_size == pytest.approx((75e-6, 75e-6))  # filled in from the geometry
    assert [m.origin for m in inst.modules][:3] == [(0, 0), (0, 1038), (550, 0)]
    assert {m.size for m in inst.modules} == {(514, 1030)}
    assert {(m.fast, m.slow) for m in inst.modules} == {(FAST, SLOW)}


def test_the_mask_of_an_assembled_image_copies_each_pixels_bits_and_marks_the_gaps():
    module = Module((0, 0), (4, 4), chips=ChipLayout((2, 2), (2, 2), True))
    g = Geometry.from_instrument(Instrument(modules=(module, Module((4, 0), (4, 4), (7.0, 0.0)))))
    assert g.image_shape == (6, 11)  # a 6 x 6 module, a 1-column gap, a plain 4 x 4 one
    mask = np.zeros((8, 4), np.uint32)
    mask[1, 1] = 16  # a corner pixel of the first chip: 4 image pixels
    image = g.assemble_mask(mask)
    assert (image[1:3, 1:3] == 16).all() and np.count_nonzero(image & 16) == 4
    assert (image[:, 6] == GAP).all() and (image[4:, 7:] == GAP).all()
    assert (g.gaps() == ((image & GAP) != 0)).all()
    runs = g.gap_runs()
    flat = np.zeros(66, bool)
    for start, n in runs:
        flat[start:start + n] = True
    assert (flat.reshape(6, 11) == g.gaps()).all()
