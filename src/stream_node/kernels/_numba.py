"""The fast kernels: Numba loops with the signatures and results of `kernels.reference`.

Every kernel is ``@njit(cache=True, nogil=True, error_model="numpy")``:

* ``cache=True``: compiled once per machine and loaded from disk by later processes; the chain
  still calls each kernel once at construction, so even a cold cache compiles before the first
  frame, never on it.
* ``nogil``: a worker thread can receive the next frame while another processes this one.
* ``error_model="numpy"``: a float division by zero gives inf/NaN, as the reference computes it,
  instead of raising; that per-element check would also stop LLVM from vectorising the loops.

No kernel allocates: outputs are the caller's, and 2-D arrays are walked as flat views
(``reshape`` of a C-contiguous array is a view), so the pixel loops are single long loops LLVM
vectorises. Pass C-contiguous arrays (the chain does).

`gain_correction_parallel` (and `gain_correction_packed_parallel`, what a chain with
``parallel: true`` runs) are the only ``parallel=True`` variants: gain correction is the kernel
with the most bytes per pixel, and `bench/kernels.py` measures the variant against the serial one
in every run (on the 2-core development machine two threads gave 1.9-2x). The others have none:
binning and masking already run near memory speed on one core, and a worker process per core is
how a node uses its cores; a threaded kernel inside each would only compete with them.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from stream_node.kernels.stage import aligned_copy, aligned_empty

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}

# Gain correction walks the frame in chunks of _CHUNK pixels. For each chunk, one vectorised loop
# computes every pixel as if it were G0, reading only the G0 maps, and ORs the raw values; this is
# the whole cost of an all-G0 frame, and it streams 15 B/pixel. Only if that OR has a G1/G2 bit
# are the chunk's raw values read again (from L2), 64 at a time as a bit mask (`_high_bits`: one
# vector compare): each G1/G2 pixel's index goes into a scratch buffer and its map line is asked
# for at once (`_prefetch`), and then those pixels are redone one by one from their stage's
# pedestal and gain. On real frames (Bragg spots, a direct beam) G1/G2 pixels are a small part of
# the detector, so the G1/G2 maps are read only where those pixels are. A chain stores them
# interleaved (`pack_gain_maps`: a (pedestal, gain) pair per pixel and stage), so such a pixel
# costs one cache line of maps, not two.
#
# Measured on the 2-core Zen 5 development machine (one core, bench/kernels.py, 2048x2048):
# * The chunk was 4096 pixels and each G1/G2 pixel was redone as the scan found it: the scan
#   between two chunks stalled the streams (the G0 pass restarts cold), and every G1/G2 map line
#   was a miss the scan waited for, one after the other. Spots frame 0.48x roofline, uniform-3%
#   frame 0.34x.
# * Chunks of 32768 pixels (still in a 1 MiB L2) make the stalls 8x rarer; collecting indices
#   with a prefetch per pixel puts all of a chunk's map misses in flight together, and the redo
#   loop then finds them in cache: spots 0.68-0.71x, uniform 3% 0.54x. Redoing a chunk's pixels
#   one chunk later, to give the prefetches more time, was slower (0.66x, 0.50x).
# Tried and not kept: a branch-free collect with AVX-512 compress stores (slower: 0.60x spots),
# software prefetch of the G0 streams, and non-temporal stores of the output through an L1
# buffer (no faster).
#
# Loops index with unsigned offsets (or run over range(len)): with a signed range(a, b) Numba
# cannot tell that a is not negative and wraps every index, which turns vector loads into gathers.
_CHUNK = 32768
_PARTS = 8  # parts of a frame for the parallel variants called without scratch
_GROUP = 64  # pixels per `_high_bits` mask
_ADC = 0x3FFF
_HIGH = 0x4000  # bit 14: set for G1 (0b01) and G2 (0b11), clear for G0 and the invalid 0b10
_ONE = np.uint64(1)


@intrinsic
def _high_bits(typingctx, arr, idx):
    """uint64 whose bit j is bit 14 (G1/G2) of the uint16 arr[idx + j], for j < 64; the caller
    guarantees idx + 64 <= arr.size. One vector load and compare (two with AVX-512BW)."""
    if (not isinstance(arr, types.Array) or arr.dtype != types.uint16
            or not isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i16 = ir.IntType(16)
        vec = ir.VectorType(i16, _GROUP)
        values = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=2)
        high = builder.and_(values, ir.Constant(vec, [i16(_HIGH)] * _GROUP))
        is_high = builder.icmp_unsigned("!=", high, ir.Constant(vec, [i16(0)] * _GROUP))
        return builder.bitcast(is_high, ir.IntType(_GROUP))

    return types.uint64(arr, idx), codegen


@intrinsic
def _lowest_bit(typingctx, bits):
    """Index of the lowest set bit of a nonzero uint64 (llvm.cttz: one tzcnt)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.IntType(1)(1)])

    return types.uint64(bits), codegen


@intrinsic
def _prefetch(typingctx, arr, s, x):
    """Ask for the cache line of arr[s, x] (arr[s, x, 0] for a 3-D arr) without waiting for it
    (llvm.prefetch, read, keep in all levels)."""
    if not isinstance(arr, types.Array) or arr.ndim not in (2, 3):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = [context.cast(builder, v, t, types.intp)
                 for v, t in zip(args[1:], signature.args[1:], strict=True)]
        index += [context.get_constant(types.intp, 0)] * (aryty.ndim - 2)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, s, x), codegen


def pack_gain_maps(pedestal: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, ...]:
    """The layout `gain_correction_packed` reads, made once when a chain is built: G0 pedestal
    and gain as they are (ny, nx), and the G1/G2 maps interleaved, ``pairs[s - 1, y, x] ==
    (pedestal[s, y, x], gain[s, y, x])`` for stage s = 1, 2, shape (2, ny, nx, 2). float32,
    64-byte aligned."""
    ped = np.asarray(pedestal, np.float32)
    gn = np.asarray(gain, np.float32)
    pairs = aligned_empty((2, *ped.shape[1:], 2), np.float32)
    pairs[..., 0] = ped[1:]
    pairs[..., 1] = gn[1:]
    return aligned_copy(ped[0]), aligned_copy(gn[0]), pairs


@njit(**_OPTS)
def _g0_pass(r, o, p0, g0, m, fill, a, b):
    """Pixels [a, b) as G0, `fill` for invalid/masked ones; returns (how many were filled, the OR
    of the raw values)."""
    n = 0
    acc = np.uint16(0)
    if m is None:
        for x in range(a, b):
            v = r[x]
            acc |= v
            e = (np.float32(v & _ADC) - p0[x]) / g0[x]
            bad = (v >> 14) == 2
            n += bad
            o[x] = fill if bad else e
    else:
        for x in range(a, b):
            v = r[x]
            acc |= v
            e = (np.float32(v & _ADC) - p0[x]) / g0[x]
            bad = ((v >> 14) == 2) | (m[x] != 0)
            n += bad
            o[x] = fill if bad else e
    return n, acc


def _stage_maps(high, s, x):
    """(pedestal, gain) of pixel x in stage s + 1 (s = 0 for G1, 1 for G2), from `high`: the
    (3, n) pedestal and gain planes as a tuple, or the (2, n, 2) pairs of `pack_gain_maps`.
    Numba picks the version by type (see the overload below)."""
    if isinstance(high, tuple):
        return high[0][s + 1, x], high[1][s + 1, x]
    return high[s, x, 0], high[s, x, 1]


@overload(_stage_maps, jit_options=_OPTS)
def _stage_maps_typed(high, s, x):
    if isinstance(high, types.BaseTuple):
        return lambda high, s, x: (high[0][s + 1, x], high[1][s + 1, x])
    return lambda high, s, x: (high[s, x, 0], high[s, x, 1])


def _prefetch_maps(high, s, x):
    """Ask for the cache lines of pixel x's stage s + 1 maps (`high` as in `_stage_maps`)."""


@overload(_prefetch_maps, jit_options=_OPTS)
def _prefetch_maps_typed(high, s, x):
    if isinstance(high, types.BaseTuple):
        def both(high, s, x):
            _prefetch(high[0], s + 1, x)
            _prefetch(high[1], s + 1, x)
        return both
    return lambda high, s, x: _prefetch(high, s, x)


@njit(**_OPTS)
def _redo_pixel(r, o, high, m, x):
    """Pixel x, a G1/G2 one, from its stage's maps; a masked one keeps `_g0_pass`'s fill."""
    v = r[x]
    p, g = _stage_maps(high, v >> 15, x)
    e = (np.float32(v & _ADC) - p) / g
    if m is None:
        o[x] = e
    else:
        o[x] = e if m[x] == 0 else o[x]


@njit(**_OPTS)
def _collect(r, high, a, b, idx, k):
    """Append the G1/G2 pixels of [a, b) to idx from k on, and ask for their map lines
    (`_prefetch_maps`); returns the new end. Whole groups of 64 go through their bit mask, the
    pixels after the last whole group one by one."""
    group = np.uint64(_GROUP)
    g = a
    while g + group <= b:
        bits = _high_bits(r, g)
        while bits:
            x = g + _lowest_bit(bits)
            idx[k] = x
            _prefetch_maps(high, r[x] >> 15, x)
            k += 1
            bits &= bits - _ONE
        g += group
    for x in range(g, b):
        if r[x] & _HIGH:
            idx[k] = x
            _prefetch_maps(high, r[x] >> 15, x)
            k += 1
    return k


@njit(**_OPTS)
def _correct_range(r, o, p0, g0, high, m, fill, idx, c0, c1):
    """Chunks [c0, c1) (the frame's last one may be short); returns how many were filled."""
    n = 0
    size = np.uint64(r.size)
    chunk = np.uint64(_CHUNK)
    for c in range(c0, c1):
        a = np.uint64(c) * chunk
        b = min(a + chunk, size)
        filled, acc = _g0_pass(r, o, p0, g0, m, fill, a, b)
        n += filled
        if acc & _HIGH:
            for i in range(_collect(r, high, a, b, idx, 0)):
                _redo_pixel(r, o, high, m, np.uint64(idx[i]))
    return n


@njit(**_OPTS)
def _correct(r, o, p0, g0, high, m, fill, scratch):
    chunks = (r.size + _CHUNK - 1) // _CHUNK
    if scratch is None:
        return _correct_range(r, o, p0, g0, high, m, fill, np.empty(_CHUNK, np.uint32),
                              0, chunks)
    return _correct_range(r, o, p0, g0, high, m, fill, scratch[0], 0, chunks)


@njit(parallel=True, **_OPTS)
def _correct_parallel(r, o, p0, g0, high, m, fill, scratch):
    """The chunks split into one contiguous range per row of scratch, run by Numba's threads."""
    chunks = (r.size + _CHUNK - 1) // _CHUNK
    if scratch is None:
        scratch = np.empty((_PARTS, _CHUNK), np.uint32)
    parts = max(1, min(scratch.shape[0], chunks))
    counts = np.zeros(parts, np.int64)
    for t in prange(parts):
        counts[t] = _correct_range(r, o, p0, g0, high, m, fill, scratch[t],
                                   t * chunks // parts, (t + 1) * chunks // parts)
    return counts.sum()


def gain_scratch(threads: int = 1) -> np.ndarray:
    """The index buffers the gain correction kernels work in, made once (a chain does) so that
    no call allocates. The parallel variants split the frame into one part per row: give them
    ``numba.get_num_threads()`` rows (without scratch they use `_PARTS`)."""
    return aligned_empty((max(1, threads), _CHUNK), np.uint32)


def _flat_mask(mask, n):
    """`mask` flat, or None: lets the kernels pass either on without an `if mask is None` branch
    each (the overload below picks by type)."""


@overload(_flat_mask, jit_options=_OPTS)
def _flat_mask_typed(mask, n):
    # Resolved by type, so a call without a mask still compiles `_g0_pass` and `_redo_pixel` with
    # their mask branches removed (an Optional would test the mask on every pixel).
    if isinstance(mask, types.NoneType):
        return lambda mask, n: None
    return lambda mask, n: mask.reshape(n)


# inline: as a call, the views cost the parallel kernels about 0.4 us more per frame.
@njit(inline="always", **_OPTS)
def _plane_views(raw, out, pedestal, gain, mask):
    """The first arguments of `_correct` for maps as given: G1/G2 are read from the (3, n)
    planes. Shared by the serial and parallel kernels, which must read the same layout."""
    n = raw.size
    ped = pedestal.reshape((3, n))
    gn = gain.reshape((3, n))
    return raw.reshape(n), out.reshape(n), ped[0], gn[0], (ped, gn), _flat_mask(mask, n)


@njit(inline="always", **_OPTS)
def _packed_views(raw, out, pedestal0, gain0, pairs, mask):
    """`_plane_views` for the maps of `pack_gain_maps`."""
    n = raw.size
    return (raw.reshape(n), out.reshape(n), pedestal0.reshape(n), gain0.reshape(n),
            pairs.reshape((2, n, 2)), _flat_mask(mask, n))


@njit(**_OPTS)
def gain_correction(raw: np.ndarray, out: np.ndarray, pedestal: np.ndarray, gain: np.ndarray,
                    mask: np.ndarray | None, fill: float,
                    scratch: np.ndarray | None = None) -> int:
    """See `reference.gain_correction`: energy = (ADC - pedestal[g]) / gain[g], float32.

    Reads the maps as given; a chain runs `gain_correction_packed` on `pack_gain_maps` of them
    (same results, G1/G2 pixels cheaper). Without `scratch` (`gain_scratch()`) each call
    allocates its index buffer."""
    r, o, p0, g0, high, m = _plane_views(raw, out, pedestal, gain, mask)
    return _correct(r, o, p0, g0, high, m, np.float32(fill), scratch)


@njit(**_OPTS)
def gain_correction_parallel(raw: np.ndarray, out: np.ndarray, pedestal: np.ndarray,
                             gain: np.ndarray, mask: np.ndarray | None, fill: float,
                             scratch: np.ndarray | None = None) -> int:
    """`gain_correction` with the chunks shared among Numba's threads (same results)."""
    r, o, p0, g0, high, m = _plane_views(raw, out, pedestal, gain, mask)
    return _correct_parallel(r, o, p0, g0, high, m, np.float32(fill), scratch)


@njit(**_OPTS)
def gain_correction_packed(raw: np.ndarray, out: np.ndarray, pedestal0: np.ndarray,
                           gain0: np.ndarray, pairs: np.ndarray, mask: np.ndarray | None,
                           fill: float, scratch: np.ndarray | None = None) -> int:
    """`gain_correction` on the maps of `pack_gain_maps(pedestal, gain)` (same results)."""
    r, o, p0, g0, high, m = _packed_views(raw, out, pedestal0, gain0, pairs, mask)
    return _correct(r, o, p0, g0, high, m, np.float32(fill), scratch)


@njit(**_OPTS)
def gain_correction_packed_parallel(raw: np.ndarray, out: np.ndarray, pedestal0: np.ndarray,
                                    gain0: np.ndarray, pairs: np.ndarray,
                                    mask: np.ndarray | None, fill: float,
                                    scratch: np.ndarray | None = None) -> int:
    """`gain_correction_packed` with the chunks shared among Numba's threads."""
    r, o, p0, g0, high, m = _packed_views(raw, out, pedestal0, gain0, pairs, mask)
    return _correct_parallel(r, o, p0, g0, high, m, np.float32(fill), scratch)


@njit(**_OPTS)
def pedestal_update(raw: np.ndarray, pedestal: np.ndarray, counts: np.ndarray, window: int) -> int:
    """See `reference.pedestal_update`: running mean, then moving average, per gain stage."""
    n = raw.size
    r = raw.reshape(n)
    ped = pedestal.reshape((3, n))
    cnt = counts.reshape((3, n))
    w = np.uint32(window)
    skipped = 0
    for x in range(n):
        v = r[x]
        code = v >> 14
        if code == 2:
            skipped += 1
            continue
        s = code - (code >> 1)  # 0b00 -> 0, 0b01 -> 1, 0b11 -> 2
        c = cnt[s, x] + np.uint32(1)
        if c > w:
            c = w
        cnt[s, x] = c
        p = ped[s, x]
        ped[s, x] = p + (np.float32(v & _ADC) - p) / np.float32(c)
    return skipped


@njit(**_OPTS)
def dark_accumulate(raw: np.ndarray, stage: int, counts: np.ndarray, sums: np.ndarray,
                    squares: np.ndarray, wrong: np.ndarray) -> int:
    """See `reference.dark_accumulate`: per-pixel count, sum and sum of squares of a dark
    series' ADC values in its gain stage, and a count of frames in another stage. Branch-free
    (every array is updated by 0 or 1 times the value), so the loop vectorises."""
    n = raw.size
    r = raw.reshape(n)
    c = counts.reshape(n)
    s = sums.reshape(n)
    q = squares.reshape(n)
    w = wrong.reshape(n)
    code = np.uint16(stage + (stage >> 1))  # 0 -> 0b00, 1 -> 0b01, 2 -> 0b11
    elsewhere = 0
    for x in range(n):
        v = r[x]
        hit = (v >> 14) == code
        a = np.uint64(v & _ADC) * np.uint64(hit)
        c[x] += np.uint32(hit)
        s[x] += a
        q[x] += a * a
        w[x] += np.uint32(not hit)
        elsewhere += not hit
    return elsewhere


@njit(**_OPTS)
def apply_mask(frame: np.ndarray, out: np.ndarray, mask: np.ndarray, fill: float) -> int:
    """See `reference.apply_mask`; `out` may be `frame` (in place)."""
    n = frame.size
    f = frame.reshape(n)
    o = out.reshape(n)
    m = mask.reshape(n)
    fv = out.dtype.type(fill)
    masked = 0
    if f.ctypes.data == o.ctypes.data:
        # In place: a loop reading f and writing o would fail LLVM's run-time overlap check and
        # fall back to scalar code; this one touches only o (and m), so it vectorises.
        for x in range(n):
            bad = m[x] != 0
            masked += bad
            o[x] = fv if bad else o[x]
    else:
        for x in range(n):
            bad = m[x] != 0
            masked += bad
            o[x] = fv if bad else f[x]
    return masked


@njit(**_OPTS)
def photonise(energy: np.ndarray, out: np.ndarray, photon_energy: float, threshold: float) -> int:
    """See `reference.photonise`: floor(E / photon_energy + 1 - threshold), clipped to out."""
    n = energy.size
    e = energy.reshape(n)
    o = out.reshape(n)
    scale = 1.0 / photon_energy
    offset = 1.0 - threshold
    hi = np.float64(np.iinfo(out.dtype).max)
    odd = 0
    for x in range(n):
        v = np.float64(e[x]) * scale
        finite = np.isfinite(v)
        k = np.floor((v if finite else 0.0) + offset)
        k = max(k, 0.0)
        over = k > hi
        odd += (not finite) + over
        o[x] = min(k, hi)
    return odd


@njit(**_OPTS)
def bin2x2(frame: np.ndarray, out: np.ndarray) -> int:
    """See `reference.bin2x2`: 2x2 block sums, the odd last row/column dropped."""
    for i in range(out.shape[0]):
        a = frame[2 * i]
        b = frame[2 * i + 1]
        o = out[i]
        for j in range(out.shape[1]):
            acc = 0
            acc += a[2 * j]
            acc += a[2 * j + 1]
            acc += b[2 * j]
            acc += b[2 * j + 1]
            o[j] = acc
    return 0


@njit(**_OPTS)
def bin4x4(frame: np.ndarray, out: np.ndarray) -> int:
    """See `reference.bin4x4`: 4x4 block sums, remainder rows/columns dropped."""
    for i in range(out.shape[0]):
        o = out[i]
        for j in range(out.shape[1]):
            acc = 0
            for di in range(4):
                row = frame[4 * i + di]
                for dj in range(4):
                    acc += row[4 * j + dj]
            o[j] = acc
    return 0


@njit(fastmath={"reassoc"}, **_OPTS)
def _row_sum(row):
    """Sum of a 1-D slice: int64 for integers, float64 for floats. ``reassoc`` lets LLVM keep
    several partial sums in a vector (the float result may differ from numpy's in the last
    bits; numpy's pairwise sum is not sequential either)."""
    acc = 0
    for x in range(row.size):
        acc += row[x]
    return acc


@njit(**_OPTS)
def roi_sums(frame: np.ndarray, out: np.ndarray, rois: np.ndarray) -> int:
    """See `reference.roi_sums`: float64 sum of each rectangle."""
    for k in range(rois.shape[0]):
        y0, y1, x0, x1 = rois[k, 0], rois[k, 1], rois[k, 2], rois[k, 3]
        acc = 0
        for y in range(y0, y1):
            acc += _row_sum(frame[y, x0:x1])  # a slice, so the loop runs over range(len)
        out[k] = acc
    return 0


@njit(**_OPTS)
def azimuthal_integrate(frame: np.ndarray, out: np.ndarray, bin_index: np.ndarray) -> int:
    """See `reference.azimuthal_integrate`: per-bin sums and counts, in pixel order."""
    n = frame.size
    f = frame.reshape(n)
    bins = bin_index.reshape(n)
    sums = out[0]
    counts = out[1]
    sums[:] = 0.0
    counts[:] = 0.0
    skipped = 0
    for x in range(n):
        b = bins[x]
        if b >= 0:
            v = np.float64(f[x])
            if np.isfinite(v):
                sums[b] += v
                counts[b] += 1.0
            else:
                skipped += 1
    return skipped


def _share(v, d, rank):
    """Image pixel `rank` of the `d` a raw value covers (see `reference.assemble`): v / d for
    floats; v // d, plus one for the first v % d ranks, for integers. By type (overload)."""


@overload(_share, jit_options=_OPTS)
def _share_typed(v, d, rank):
    if isinstance(v, types.Float):
        return lambda v, d, rank: v / d

    def whole(v, d, rank):
        q = v // d
        return q + (rank < v - q * d)
    return whole


@njit(**_OPTS)
def _axis_start(i, chip, n, double):
    """(first image index, image pixels) of raw index i: `model.geometry.axis_map`, one index."""
    if double == 0:
        return i, 1
    k = i // chip
    j = i - k * chip
    if j == chip - 1 and k < n // chip - 1:
        return i + 2 * k, 2
    if j == 0 and k > 0:
        return i + 2 * k - 1, 2
    return i + 2 * k, 1


@njit(**_OPTS)
def _run(o, start, step, src, d, rank):
    """src[j], shared among d, to o[start + j * step]. The common steps (+1: a module as read
    out, -1: one turned by 180 degrees) write a contiguous slice, which LLVM vectorises."""
    n = src.size
    if step == 1:
        dst = o[start:start + n]
        if d == 1:
            for j in range(n):
                dst[j] = src[j]
        else:
            for j in range(n):
                dst[j] = _share(src[j], d, rank)
    elif step == -1:
        dst = o[start - n + 1:start + 1]
        for j in range(n):
            dst[n - 1 - j] = _share(src[j], d, rank)
    else:
        for j in range(n):
            o[start + j * step] = _share(src[j], d, rank)


@njit(**_OPTS)
def _place(frame, o, width, m):
    """One module (a row of the table) into the flat image `o` of `width` columns: per raw row
    and chip, the chip's plain pixels as one run, then its double border pixels one by one."""
    r0, c0, rows, cols = m[0], m[1], m[2], m[3]
    base = m[4] * width + m[5]
    fstep = m[6] * width + m[7]
    sstep = m[8] * width + m[9]
    chip_r, chip_c, double = m[10], m[11], m[12]
    n_chips = cols // chip_c
    shift = 2 if double != 0 else 0
    for s in range(rows):
        a_s, ms = _axis_start(s, chip_r, rows, double)
        line = frame[r0 + s, c0:c0 + cols]
        for sub in range(ms):
            ob = base + (a_s + sub) * sstep
            for k in range(n_chips):
                lo = k * chip_c
                hi = lo + chip_c
                left = double != 0 and k > 0
                right = double != 0 and k < n_chips - 1
                plain_lo = lo + 1 if left else lo
                plain_hi = hi - 1 if right else hi
                _run(o, ob + (plain_lo + shift * k) * fstep, fstep, line[plain_lo:plain_hi],
                     ms, sub)
                if left:  # covers the image column before its own, and its own
                    a = lo + 2 * k - 1
                    for c in range(2):
                        o[ob + (a + c) * fstep] = _share(line[lo], 2 * ms, sub * 2 + c)
                if right:
                    a = hi - 1 + 2 * k
                    for c in range(2):
                        o[ob + (a + c) * fstep] = _share(line[hi - 1], 2 * ms, sub * 2 + c)


@njit(**_OPTS)
def assemble(frame: np.ndarray, out: np.ndarray, modules: np.ndarray, gaps: np.ndarray,
             fill: float) -> int:
    """See `reference.assemble`: modules placed by the table, gaps filled from `gaps` runs
    (first flat index, length), so each image pixel is written once."""
    o = out.reshape(out.size)
    fv = out.dtype.type(fill)
    filled = 0
    for g in range(gaps.shape[0]):
        a = gaps[g, 0]
        n = gaps[g, 1]
        o[a:a + n] = fv
        filled += n
    for k in range(modules.shape[0]):
        _place(frame, o, out.shape[1], modules[k])
    return filled
