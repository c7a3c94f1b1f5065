"""Kernel benchmark: each Numba kernel against its numpy reference and a memcpy roofline.

For 512x1024 and 2048x2048 JUNGFRAU-like uint16 frames, in ONE run so the numbers are comparable,
each kernel of `stream_node.kernels` is timed three ways, on the same inputs:

* ``numba``: the kernel of `kernels._numba` that a `Chain` runs, single-threaded (for the gain
  correction that is `gain_correction_packed` on `pack_gain_maps` of the maps; the "unpacked" row
  is `gain_correction` on the maps as given);
* ``numpy``: the same kernel's reference in `kernels.reference` (the "numpy" baseline);
* ``roofline``: ``np.copyto`` moving the same number of bytes (a copy of B/2 bytes reads B/2 and
  writes B/2; two such copies alternate, see `memcpy_time`), measured in this run: no kernel that
  has to read and write B bytes can beat it.

GB/s is the bytes the kernel MUST read and write per frame / time per call / 1e9: input and
output pixels, maps and masks it needs for every pixel; extra reads a kernel makes by choice
(e.g. the G1/G2 maps' cache lines around the few high-gain pixels) are not counted. The column
"B/px" gives that figure per pixel. Ratios: "vs numpy" is the speed-up over the reference,
"vs roofline" the fraction of memcpy speed. A kernel can beat the roofline where its working set
is smaller than the memcpy's: in place (apply_mask reads and writes the same 16 MiB at 2048x2048,
which stays in this machine's 32 MiB L3, while a copy of the same bytes needs 38 MiB) or with a
small output (binning).

Inputs: the maps are 64-byte aligned copies as `build_chain` makes them (and packs them). The raw
frame of the gain correction is "spots": G0 everywhere except one 5x5 spot per 4000 pixels in G1
with a G2 centre pixel (~0.6 % of pixels in G1/G2, as a busy diffraction frame) and 0.01 % invalid-
stage pixels, with a 1 % pixel mask; two more rows show an all-G0 frame (dark or weak scattering)
and the worst case, 3 % of pixels in G1/G2 scattered uniformly. Energies are that frame corrected;
photons are those energies photonised.

The `parallel` row is `gain_correction_parallel` on all of this machine's cores (Numba threads):
every other row runs in one thread. The chain rows time what one worker core does per frame:
``Chain.apply`` (gain correction with mask -> photonise at 12.4 keV) then
``stream_node.kernels.compression.compress`` of the photons (bitshuffle/LZ4; its OpenMP is set
to one thread), against the same chain with ``backend="reference"`` plus the same compression.

JUNGFRAU 4M rows ("4096x1024 JF4M": the 8-module stack the UDP origin receives, assembled by
`examples/geometry/jungfrau4m.geom` into 2164 x 2068 with gaps and split double pixels): the
`assemble` kernel on energies (float32) and on photons (uint16), and two chains per core,
"correct -> assemble -> compress" (keV, float32) and "correct -> photonise -> assemble ->
compress" (photons, uint16, what `examples/jungfrau4m_preset.toml` runs). A chain's roofline is
memcpy of the bytes its kernels must move (gain correction 15 B/px, photonise 6, assembly in +
out, compression reads its input), so "vs roofline" says how close the chain runs to moving
each byte once. The last lines project, on paper, the cores a 4M at 2 kHz and 1.1 kHz would
need for the chain from these per-core rates (kernels and compression only: the UDP receiver's
CPU and the collector's writes are not in it).

Each figure is the median of per-call times (quick: calls for >= 0.3 s, at least 5; ``--full``
1.5 s, at least 20), so one call disturbed by another process on this shared 2-core machine does
not make the number. Every kernel's output is checked against its reference before it is timed;
the exit status is 1 if one differs.

Usage::

    python bench/kernels.py            # quick (default), about a minute
    python bench/kernels.py --full     # longer timing per row
    python bench/kernels.py --only 512 # only the 512x1024 frame
    python bench/kernels.py --only JF4M  # only the JUNGFRAU 4M rows and chains
    python bench/kernels.py --kernel gain_correction  # only the gain correction rows
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from _common import bench_parser  # bench/ is on sys.path when run as a script
from _format import md_table
from stream_node.kernels import _numba, build_chain, reference
from stream_node.kernels.compression import compress, set_codec_threads
from stream_node.kernels.geometry import azimuthal_bin_index, checked_rois
from stream_node.kernels.stage import aligned_copy, aligned_empty
from stream_node.model.geometry import Geometry

SHAPES = ((512, 1024), (2048, 2048))
PHOTON_KEV = 12.4
JF4M = (4096, 1024)  # 8 JUNGFRAU modules as received
JF4M_LABEL = "4096x1024 JF4M"
JF4M_GEOMETRY = Path(__file__).resolve().parent.parent / "examples" / "geometry" / \
    "jungfrau4m.geom"
JF4M_RATES = (("2 kHz", 2000.0), ("1.1 kHz", 1100.0))  # frames/s of a 4M to project cores for


@dataclass(frozen=True)
class Mode:
    seconds: float  # time each measurement for at least this long ...
    min_calls: int  # ... and at least this many calls


QUICK = Mode(0.3, 5)
FULL = Mode(1.5, 20)


@dataclass
class Row:
    kernel: str
    frame: str
    io: str  # input -> output
    bytes_per_frame: int
    pixels: int
    t_numba: float = float("nan")
    t_numpy: float = float("nan")
    t_memcpy: float = float("nan")
    note: str = ""
    ok: bool = True

    def gbps(self, t: float) -> float:
        return self.bytes_per_frame / t / 1e9


def median_call(fn: Callable[[], Any], mode: Mode) -> float:
    """Median seconds per call of fn() after one untimed call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < mode.min_calls or time.perf_counter() - start < mode.seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_memcpy_cache: dict[int, float] = {}


def memcpy_time(nbytes: int, mode: Mode) -> float:
    """Seconds to np.copyto nbytes/2 bytes (so nbytes are read and written), once per size.

    The copy alternates between two source/destination pairs. A large memcpy writes with non-
    temporal stores, so a single pair keeps only its source in cache; at 2048x2048 that source
    (31.5 MB) about fits this machine's 32 MiB L3, which made the "roofline" partly an L3 copy
    (35-58 GB/s from run to run) while the kernel, whose 63 MB all go through the cache, has to
    stream from memory. With two pairs the copy streams from memory too; where everything fits
    in L3 (512x1024), both stay in it."""
    if nbytes not in _memcpy_cache:
        half = max(nbytes // 2, 64)
        pairs = [(aligned_empty((half,), np.uint8), aligned_empty((half,), np.uint8))
                 for _ in range(2)]
        for src, dst in pairs:
            src[...] = 1
            dst[...] = 0
        turn = [0]

        def copy() -> None:
            turn[0] ^= 1
            np.copyto(pairs[turn[0]][1], pairs[turn[0]][0])

        _memcpy_cache[nbytes] = median_call(copy, mode)
    return _memcpy_cache[nbytes]


# -- inputs ----------------------------------------------------------------------------------------


def raw_frame(shape: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    """A JUNGFRAU-like raw frame: ADC ~1500 (pedestal) plus photons; gain bits as `kind` says."""
    ny, nx = shape
    adc = np.clip(rng.normal(1500, 20, shape) + 40 * PHOTON_KEV * rng.poisson(0.05, shape),
                  0, 0x3FFF).astype(np.uint16)
    stage = np.zeros(shape, np.uint16)
    if kind == "spots":
        n = ny * nx // 4000
        ys, xs = rng.integers(0, ny - 5, n), rng.integers(0, nx - 5, n)
        for y, x in zip(ys, xs, strict=True):
            stage[y:y + 5, x:x + 5] = 0b01
            stage[y + 2, x + 2] = 0b11
        stage[rng.random(shape) < 1e-4] = 0b10
    elif kind == "uniform 3%":
        stage = rng.choice(np.array([0b00, 0b01, 0b11, 0b10], np.uint16), size=shape,
                           p=[0.969, 0.02, 0.01, 0.001])
    return (stage << np.uint16(14)) | adc


def maps(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pedestal and gain (3, ny, nx) float32, aligned as build_chain stores them."""
    ped = np.stack([rng.normal(m, 30, shape) for m in (1500, 14000, 14500)]).astype(np.float32)
    gain = np.stack([rng.normal(m, abs(m) * 0.02, shape)
                     for m in (40.0, -1.5, -0.1)]).astype(np.float32)
    return aligned_copy(ped), aligned_copy(gain)


# -- rows ------------------------------------------------------------------------------------------


def check(row: Row, fast_out: Any, ref_out: Any, n_fast: int, n_ref: int, exact: bool) -> None:
    if n_fast != n_ref:
        row.ok, row.note = False, f"count {n_fast} != reference {n_ref}"
        return
    for f, r in zip(fast_out, ref_out, strict=True):
        same = (np.array_equal(f, r, equal_nan=True) if exact
                else np.allclose(f, r, rtol=1e-6, equal_nan=True))
        if not same:
            row.ok, row.note = False, "output differs from the reference"


def kernel_row(kernel: str, frame: str, io: str, nbytes: int, pixels: int,
               fast: Callable[..., int], ref: Callable[..., int],
               fast_args: tuple[Any, ...], ref_args: tuple[Any, ...],
               outs: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], mode: Mode,
               exact: bool = True, note: str = "", reset: Callable[[], None] | None = None) -> Row:
    """Check fast against ref once (outputs `outs`), then time both and memcpy."""
    row = Row(kernel, frame, io, nbytes, pixels, note=note)
    if reset:
        reset()  # stateful kernels: both start from the same state
    n_ref = ref(*ref_args)
    n_fast = fast(*fast_args)
    check(row, outs[0], outs[1], n_fast, n_ref, exact)
    row.t_numba = median_call(lambda: fast(*fast_args), mode)
    ref_mode = Mode(mode.seconds, max(3, mode.min_calls // 4))
    row.t_numpy = median_call(lambda: ref(*ref_args), ref_mode)
    row.t_memcpy = memcpy_time(nbytes, mode)
    return row


def rows_for(shape: tuple[int, int], mode: Mode, gain_only: bool = False) -> list[Row]:
    rng = np.random.default_rng(0)
    label = f"{shape[0]}x{shape[1]}"
    px = shape[0] * shape[1]
    ped, gain = maps(shape, rng)
    mask = aligned_copy((rng.random(shape) < 0.01).astype(np.uint8))
    rows: list[Row] = []

    def pair(shape_: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        return aligned_empty(shape_, dtype), aligned_empty(shape_, dtype)

    # gain correction: three frames, then the parallel variant on the spots frame
    e_fast, e_ref = pair(shape, np.float32)
    raws = {kind: aligned_copy(raw_frame(shape, kind, rng))
            for kind in ("spots", "all G0", "uniform 3%")}
    packed = _numba.pack_gain_maps(ped, gain)  # as build_chain stores the maps ...
    scratch = _numba.gain_scratch()  # ... and the index buffers
    threads = numba.get_num_threads()
    for kind, raw in raws.items():
        rows.append(kernel_row(
            "gain_correction", label, "u16 -> f32", 15 * px, px,
            _numba.gain_correction_packed, reference.gain_correction,
            (raw, e_fast, *packed, mask, 0.0, scratch), (raw, e_ref, ped, gain, mask, 0.0),
            ((e_fast,), (e_ref,)), mode,
            note=f"{kind} frame, mask; reads raw 2 + 3 maps (ped, gain, mask) 9, writes 4 B/px"))
    rows.append(kernel_row(
        "gain_correction unpacked", label, "u16 -> f32", 15 * px, px,
        _numba.gain_correction, reference.gain_correction,
        (raws["spots"], e_fast, ped, gain, mask, 0.0, scratch),
        (raws["spots"], e_ref, ped, gain, mask, 0.0), ((e_fast,), (e_ref,)), mode,
        note="spots frame, maps as given (3, ny, nx): G1/G2 pedestal and gain not interleaved"))
    par = kernel_row("gain_correction parallel", label, "u16 -> f32", 15 * px, px,
                     _numba.gain_correction_packed_parallel, reference.gain_correction,
                     (raws["spots"], e_fast, *packed, mask, 0.0,
                      _numba.gain_scratch(threads)),
                     (raws["spots"], e_ref, ped, gain, mask, 0.0),
                     ((e_fast,), (e_ref,)), mode, note=f"spots frame, {threads} Numba threads")
    rows.append(par)
    if gain_only:
        return rows
    energy = aligned_copy(e_ref)

    # pedestal tracking on a dark (all-G0) frame
    dark = raws["all G0"]
    p_fast, p_ref = pair((3, *shape), np.float32)
    c_fast, c_ref = pair((3, *shape), np.uint32)

    def reset() -> None:
        for a in (p_fast, p_ref):
            a[...] = 0
        for a in (c_fast, c_ref):
            a[...] = 0
    rows.append(kernel_row(
        "pedestal_update", label, "u16 -> state", 18 * px, px,
        _numba.pedestal_update, reference.pedestal_update,
        (dark, p_fast, c_fast, 1000), (dark, p_ref, c_ref, 1000),
        ((p_fast, c_fast), (p_ref, c_ref)), mode, reset=reset,
        note="dark frame; reads raw 2, reads+writes pedestal 8 and count 8 B/px"))

    # dark-run statistics (the pedestal command), a dark frame folded into the G0 sums
    state = [[aligned_empty(shape, t) for t in (np.uint32, np.uint64, np.uint64, np.uint32)]
             for _ in range(2)]

    def reset_dark() -> None:
        for arrays in state:
            for a in arrays:
                a[...] = 0
    rows.append(kernel_row(
        "dark_accumulate", label, "u16 -> state", 50 * px, px,
        _numba.dark_accumulate, reference.dark_accumulate,
        (dark, 0, *state[0]), (dark, 0, *state[1]), (tuple(state[0]), tuple(state[1])), mode,
        reset=reset_dark,
        note="dark frame; reads raw 2, reads+writes count 8, sums 32, wrong 8 B/px"))

    # mask, in place on energies (as in a chain)
    m_fast, m_ref = aligned_copy(energy), aligned_copy(energy)
    rows.append(kernel_row(
        "apply_mask", label, "f32 -> f32", 9 * px, px,
        _numba.apply_mask, reference.apply_mask,
        (m_fast, m_fast, mask, 0.0), (m_ref, m_ref, mask, 0.0),
        ((m_fast,), (m_ref,)), mode, note="in place; reads 4 + mask 1, writes 4 B/px"))

    # photons
    ph_fast, ph_ref = pair(shape, np.uint16)
    rows.append(kernel_row(
        "photonise", label, "f32 -> u16", 6 * px, px,
        _numba.photonise, reference.photonise,
        (energy, ph_fast, PHOTON_KEV, 0.5), (energy, ph_ref, PHOTON_KEV, 0.5),
        ((ph_fast,), (ph_ref,)), mode, note=f"{PHOTON_KEV} keV, threshold 0.5"))

    # binning of the raw frame
    raw = raws["spots"]
    for f in (2, 4):
        b_fast, b_ref = pair((shape[0] // f, shape[1] // f), np.uint32)
        name = f"bin{f}x{f}"
        out_bytes = 4 * px // (f * f)
        rows.append(kernel_row(
            name, label, "u16 -> u32", 2 * px + out_bytes, px,
            getattr(_numba, name), getattr(reference, name), (raw, b_fast), (raw, b_ref),
            ((b_fast,), (b_ref,)), mode, note=f"reads 2, writes {4 / (f * f):g} B/px"))

    # 16 ROIs of 1/8 x 1/8 of the frame (a quarter of it) on energies
    ny, nx = shape
    rois = checked_rois([[y, y + ny // 8, x, x + nx // 8]
                         for y in range(0, ny, ny // 4) for x in range(0, nx, nx // 4)], shape)
    r_fast, r_ref = np.empty(len(rois)), np.empty(len(rois))
    roi_px = int(sum((r[1] - r[0]) * (r[3] - r[2]) for r in rois))
    rows.append(kernel_row(
        "roi_sums", label, "f32 -> f64[16]", 4 * roi_px, px,
        _numba.roi_sums, reference.roi_sums, (energy, r_fast, rois), (energy, r_ref, rois),
        ((r_fast,), (r_ref,)), mode, exact=False,
        note=f"16 ROIs, {roi_px / px:.0%} of the frame; reads 4 B per ROI pixel"))

    # azimuthal integration of energies, 1000 bins
    index = aligned_copy(azimuthal_bin_index(shape, (ny * 0.45, nx * 0.55), 1000, mask=mask))
    a_fast, a_ref = np.empty((2, 1000)), np.empty((2, 1000))
    rows.append(kernel_row(
        "azimuthal_integrate", label, "f32 -> f64[2,1000]", 8 * px, px,
        _numba.azimuthal_integrate, reference.azimuthal_integrate,
        (energy, a_fast, index), (energy, a_ref, index), ((a_fast,), (a_ref,)), mode,
        note="reads 4 + bin index 4 B/px"))
    return rows


def jf4m_rows(mode: Mode) -> list[Row]:
    """`assemble` of a JUNGFRAU 4M stack: energies (float32) and photons (uint16)."""
    geometry = Geometry.from_file(JF4M_GEOMETRY)
    table, gaps = aligned_copy(geometry.table()), aligned_copy(geometry.gap_runs())
    rng = np.random.default_rng(2)
    px_in, px_out = JF4M[0] * JF4M[1], geometry.image_shape[0] * geometry.image_shape[1]
    rows = []
    for dtype, io, fill, what in ((np.float32, "f32 -> f32", float("nan"), "energies"),
                                  (np.uint16, "u16 -> u16", 65535, "photons")):
        size = np.dtype(dtype).itemsize
        frame = aligned_copy(rng.normal(0, 3, JF4M) if dtype == np.float32
                             else rng.poisson(0.1, JF4M), dtype)
        out_fast, out_ref = (aligned_empty(geometry.image_shape, dtype) for _ in range(2))
        rows.append(kernel_row(
            "assemble", JF4M_LABEL, io, size * (px_in + px_out), px_in,
            _numba.assemble, reference.assemble, (frame, out_fast, table, gaps, fill),
            (frame, out_ref, table, gaps, fill), ((out_fast,), (out_ref,)), mode,
            note=f"{what} -> 2164x2068 with gaps, split double pixels; reads {size}, writes "
                 f"{size * px_out / px_in:.2f} B per input pixel"))
    return rows


@dataclass
class ChainRow:
    name: str
    frame: str
    fps_fast: float
    fps_ref: float
    fps_roof: float
    ratio_compressed: float
    ok: bool
    note: str = ""


def chain_row(shape: tuple[int, int], mode: Mode, name: str = "correct -> photonise -> compress",
              extra: tuple[dict[str, Any], ...] = (), photons: bool = True,
              label: str = "") -> ChainRow:
    """Frames/s of one core: Chain.apply (gain correction [-> photonise] [-> more kernels]) +
    compress of its output, against the reference chain and memcpy of the bytes it must move."""
    rng = np.random.default_rng(1)
    ped, gain = maps(shape, rng)
    mask = (rng.random(shape) < 0.01).astype(np.uint8)
    spec = [{"kernel": "gain_correction", "pedestal": ped, "gain": gain, "mask": mask},
            *([{"kernel": "photonise", "photon_energy_kev": PHOTON_KEV, "threshold": 0.5}]
              if photons else []), *extra]
    fast = build_chain(spec, shape, np.uint16)
    slow = build_chain(spec, shape, np.uint16, backend="reference")
    frames = [raw_frame(shape, "spots", rng) for _ in range(4)]
    ok = all(np.array_equal(fast.apply(f), slow.apply(f), equal_nan=True) for f in frames)
    state = {"i": 0}

    def step(chain: Any) -> Callable[[], Any]:
        def run() -> Any:
            state["i"] += 1
            return compress(chain.apply(frames[state["i"] % len(frames)], state["i"]))
        return run

    t_fast = median_call(step(fast), mode)
    t_ref = median_call(step(slow), Mode(mode.seconds, 3))
    out = fast.apply(frames[0])
    chunk = compress(out)
    ratio = out.nbytes / chunk.nbytes
    px = shape[0] * shape[1]
    # bytes the kernels must move: correction 15 B/px, photonise 6, each later kernel its input
    # and output, compression its input
    moved = 15 * px + (6 * px if photons else 0) + out.nbytes
    step_in = px * (2 if photons else 4)
    for stage in fast.stages[1 + photons:]:
        step_out = int(np.prod(stage.out_shape)) * stage.out_dtype.itemsize
        moved += step_in + step_out
        step_in = step_out
    return ChainRow(name, label or f"{shape[0]}x{shape[1]}", 1 / t_fast, 1 / t_ref,
                    1 / memcpy_time(moved, mode), ratio, ok,
                    "" if ok else "chain output differs from the reference chain")


def jf4m_chains(mode: Mode) -> list[ChainRow]:
    """The JUNGFRAU 4M chains of one worker core, in keV and in photons."""
    assemble = ({"kernel": "assemble", "geometry": str(JF4M_GEOMETRY)},)
    return [chain_row(JF4M, mode, "correct -> assemble -> compress", assemble, photons=False,
                      label=JF4M_LABEL),
            chain_row(JF4M, mode, "correct -> photonise -> assemble -> compress", assemble,
                      label=JF4M_LABEL)]


def fmt(x: float, digits: int = 1) -> str:
    return "—" if x != x else f"{x:.{digits}f}"


def table(rows: list[Row]) -> str:
    head = ["kernel", "frame", "in -> out", "B/px", "numba GB/s", "numpy GB/s", "roofline GB/s",
            "vs numpy", "vs roofline", "note"]
    out = []
    for r in rows:
        note = r.note if r.ok else f"FAILED: {r.note}"
        out.append([r.kernel, r.frame, r.io, f"{r.bytes_per_frame / r.pixels:g}",
                    fmt(r.gbps(r.t_numba)), fmt(r.gbps(r.t_numpy), 2), fmt(r.gbps(r.t_memcpy)),
                    f"{r.t_numpy / r.t_numba:.1f}x", f"{r.t_memcpy / r.t_numba:.2f}x", note])
    return md_table(head, "lllrrrrrrl", out)


def chain_table(rows: list[ChainRow]) -> str:
    head = ["chain (one core)", "frame", "numba frames/s", "numpy frames/s", "roofline frames/s",
            "vs numpy", "vs roofline", "compression ratio", "note"]
    out = []
    for r in rows:
        note = r.note if r.ok else f"FAILED: {r.note}"
        out.append([r.name, r.frame, f"{r.fps_fast:.0f}", f"{r.fps_ref:.1f}",
                    f"{r.fps_roof:.0f}", f"{r.fps_fast / r.fps_ref:.1f}x",
                    f"{r.fps_fast / r.fps_roof:.2f}x", f"{r.ratio_compressed:.1f}", note])
    return md_table(head, "llrrrrrrl", out)


def projection(rows: list[ChainRow]) -> list[str]:
    """Cores a JUNGFRAU 4M would need for each JF4M chain at each rate: a projection on paper
    from this run's per-core frames/s, assuming workers scale with cores (they share nothing
    but memory bandwidth, which this does not model)."""
    raw = JF4M[0] * JF4M[1] * 2
    lines = []
    for r in rows:
        if r.frame != JF4M_LABEL:
            continue
        need = ", ".join(f"{rate} ({hz * raw / 1e9:.1f} GB/s raw): {hz / r.fps_fast:.0f} cores"
                         for rate, hz in JF4M_RATES)
        lines.append(f"projection, on paper, {r.name} at {r.fps_fast:.0f} frames/s per core: "
                     f"{need}")
    return lines


def floors(rows: list[Row]) -> list[str]:
    """The issue's floors, checked against this run's numbers."""
    lines = []
    for r in rows:
        if r.kernel != "gain_correction":
            continue
        vs_np, vs_roof = r.t_numpy / r.t_numba, r.t_memcpy / r.t_numba
        verdict = "met" if vs_np >= 5 and vs_roof >= 0.5 else "NOT met"
        lines.append(f"gain_correction {r.frame} {r.note.split(',')[0]}: {vs_np:.0f}x numpy "
                     f"(floor 5x), {vs_roof:.2f}x roofline (floor 0.5x): {verdict}")
    slower = [f"{r.kernel} {r.frame}" for r in rows if r.t_numba >= r.t_numpy]
    lines.append("every kernel faster than its numpy reference: "
                 + ("yes" if not slower else f"NO ({', '.join(slower)})"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "short timing per row (default)", "longer timing per row")
    ap.add_argument("--only", default="", help="only frame shapes whose label contains this")
    ap.add_argument("--kernel", default="",
                    help="only kernel rows whose name contains this (and no chain rows)")
    opts = ap.parse_args(argv)
    mode = FULL if opts.full else QUICK
    shapes = [s for s in SHAPES if opts.only in f"{s[0]}x{s[1]}"]
    t_start = time.monotonic()
    rows: list[Row] = []
    for shape in shapes:
        gain_only = bool(opts.kernel) and opts.kernel in "gain_correction parallel unpacked"
        rows += [r for r in rows_for(shape, mode, gain_only) if opts.kernel in r.kernel]
        print(f"  kernels {shape[0]}x{shape[1]} done ({time.monotonic() - t_start:.0f} s)",
              file=sys.stderr, flush=True)
    jf4m = opts.only in JF4M_LABEL
    if jf4m and opts.kernel in "assemble":
        rows += jf4m_rows(mode)
    n = set_codec_threads(1)
    omp = f"OpenMP threads {n}" if n else "bitshuffle without OpenMP"
    chains = [] if opts.kernel else [chain_row(shape, mode) for shape in shapes]
    if jf4m and not opts.kernel:
        chains += jf4m_chains(mode)
    print(f"\nstream-node kernel bench ({'full' if opts.full else 'quick'}, "
          f"{time.monotonic() - t_start:.0f} s): {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}, numba {numba.__version__} "
          f"({numba.config.THREADING_LAYER} threading); load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. One thread per row except "
          f"'parallel'. Median per-call times; GB/s = bytes the kernel must read and write "
          f"(B/px x pixels) / time; roofline = np.copyto of the same bytes in this run.\n")
    print(table(rows))
    print(f"\nbitshuffle: {omp}.\n")
    print(chain_table(chains))
    print()
    for line in floors(rows) + projection(chains):
        print(f"- {line}")
    return 0 if all(r.ok for r in rows) and all(c.ok for c in chains) else 1


if __name__ == "__main__":
    sys.exit(main())
