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

`gain_correction_parallel` is the only ``parallel=True`` variant: gain correction is the kernel
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
from numba.extending import intrinsic

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}

# Gain correction walks the frame in chunks of _CHUNK pixels. For each chunk, one vectorised loop
# computes every pixel as if it were G0, reading only the G0 maps, and ORs the raw values. Only if
# that OR has a G1/G2 bit are the chunk's raw values read again (from L1), 4 pixels per uint64
# word: the blocks of _BLOCK pixels holding a G1/G2 pixel get their G1/G2 map lines prefetched
# (all at once, so the cache misses overlap instead of queueing), then are redone with the G1
# maps, or the G1 and G2 maps if the block has a G2 pixel. On real frames (Bragg spots, a direct
# beam) G1/G2 pixels are a small part of the detector, so most of the G1/G2 maps are never read.
# The chain allocates the maps 64-byte aligned, so a block is one cache line of each map, not two.
#
# Loops index with unsigned offsets (or run over range(len)): with a signed range(a, b) Numba
# cannot tell that a is not negative and wraps every index, which turns vector loads into gathers.
_CHUNK = 4096
_BLOCK = 16  # 16 float32: a cache line of each map
_ADC = 0x3FFF
_HIGH = 0x4000  # bit 14: set for G1 (0b01) and G2 (0b11), clear for G0 and the invalid 0b10
_HIGH_WORD = np.uint64(0x4000_4000_4000_4000)  # bit 14 of each of 4 pixels in a uint64
_ONE = np.uint64(1)


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Ask for the cache line holding arr[idx] without waiting for it (llvm.prefetch: read,
    keep in all levels). Numba has no prefetch of its own."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


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


@njit(**_OPTS)
def _blend_high(r, o, p1, g1, p2, g2, m, a, b):
    """Pixels [a, b) that are G1/G2 (and not masked) get their stage's energy; branch-free, so
    it vectorises and mixed blocks cost no mispredictions."""
    for x in range(a, b):
        v = r[x]
        use = (v & _HIGH) != 0
        if m is not None:
            use = use & (m[x] == 0)
        # Load both stages' values, then select: a load inside the select would become a masked
        # gather, much slower than two plain vector loads.
        a1, b1, a2, b2 = p1[x], g1[x], p2[x], g2[x]
        g2_stage = (v >> 15) != 0
        e = (np.float32(v & _ADC) - (a2 if g2_stage else a1)) / (b2 if g2_stage else b1)
        o[x] = e if use else o[x]


@njit(**_OPTS)
def _blend_g1(r, o, p1, g1, m, a, b):
    """`_blend_high` for a block without G2 pixels: reads only the G1 maps' lines."""
    for x in range(a, b):
        v = r[x]
        use = (v >> 14) == 1
        if m is not None:
            use = use & (m[x] == 0)
        e = (np.float32(v & _ADC) - p1[x]) / g1[x]
        o[x] = e if use else o[x]


@njit(**_OPTS)
def _redo_high_blocks(r, o, p1, g1, p2, g2, m, words, a):
    """In the full chunk at pixel a, redo the blocks that hold a G1/G2 pixel, reading the G2
    maps only for blocks that hold a G2 pixel (both stage bits set: v & v >> 1 has bit 14).
    First their map lines are prefetched, all of them: on a 2048x2048 frame, whose maps are far
    from the cache, that made this 15-25 % faster (and a 512x1024 one 3 % slower)."""
    for k in range(_CHUNK // _BLOCK):
        i = a // np.uint64(4) + np.uint64(4 * k)
        w = words[i] | words[i + _ONE] | words[i + np.uint64(2)] | words[i + np.uint64(3)]
        if w & _HIGH_WORD:
            first = a + np.uint64(k * _BLOCK)
            _prefetch(p1, first)
            _prefetch(g1, first)
            _prefetch(p2, first)
            _prefetch(g2, first)
    for k in range(_CHUNK // _BLOCK):
        i = a // np.uint64(4) + np.uint64(4 * k)
        w0, w1 = words[i], words[i + _ONE]
        w2, w3 = words[i + np.uint64(2)], words[i + np.uint64(3)]
        if (w0 | w1 | w2 | w3) & _HIGH_WORD == 0:
            continue
        first = a + np.uint64(k * _BLOCK)
        last = first + np.uint64(_BLOCK)
        both = ((w0 & (w0 >> _ONE)) | (w1 & (w1 >> _ONE))
                | (w2 & (w2 >> _ONE)) | (w3 & (w3 >> _ONE)))
        if both & _HIGH_WORD:
            _blend_high(r, o, p1, g1, p2, g2, m, first, last)
        else:
            _blend_g1(r, o, p1, g1, m, first, last)


@njit(**_OPTS)
def _correct_chunk(r, o, p0, g0, p1, g1, p2, g2, m, fill, words, c):
    """Chunk number c; the frame's last chunk may be short and is then blended whole."""
    a = np.uint64(c * _CHUNK)
    b = np.uint64(min(c * _CHUNK + _CHUNK, r.size))
    n, acc = _g0_pass(r, o, p0, g0, m, fill, a, b)
    if acc & _HIGH:
        if b - a == np.uint64(_CHUNK):
            _redo_high_blocks(r, o, p1, g1, p2, g2, m, words, a)
        else:
            _blend_high(r, o, p1, g1, p2, g2, m, a, b)
    return n


@njit(**_OPTS)
def _correct_serial(r, o, ped, gain, m, fill):
    words = r[: r.size // _CHUNK * _CHUNK].view(np.uint64)
    n = 0
    for c in range((r.size + _CHUNK - 1) // _CHUNK):
        n += _correct_chunk(r, o, ped[0], gain[0], ped[1], gain[1], ped[2], gain[2], m, fill,
                            words, c)
    return n


@njit(parallel=True, **_OPTS)
def _correct_parallel(r, o, ped, gain, m, fill):
    words = r[: r.size // _CHUNK * _CHUNK].view(np.uint64)
    n = 0
    for c in prange((r.size + _CHUNK - 1) // _CHUNK):
        n += _correct_chunk(r, o, ped[0], gain[0], ped[1], gain[1], ped[2], gain[2], m, fill,
                            words, c)
    return n


@njit(**_OPTS)
def gain_correction(raw: np.ndarray, out: np.ndarray, pedestal: np.ndarray, gain: np.ndarray,
                    mask: np.ndarray | None, fill: float) -> int:
    """See `reference.gain_correction`: energy = (ADC - pedestal[g]) / gain[g], float32."""
    n = raw.size
    ped = pedestal.reshape((3, n))
    gn = gain.reshape((3, n))
    if mask is None:
        return _correct_serial(raw.reshape(n), out.reshape(n), ped, gn, None, np.float32(fill))
    return _correct_serial(raw.reshape(n), out.reshape(n), ped, gn, mask.reshape(n),
                           np.float32(fill))


@njit(**_OPTS)
def gain_correction_parallel(raw: np.ndarray, out: np.ndarray, pedestal: np.ndarray,
                             gain: np.ndarray, mask: np.ndarray | None,
                             fill: float) -> int:
    """`gain_correction` with the chunks shared among Numba's threads (same results)."""
    n = raw.size
    ped = pedestal.reshape((3, n))
    gn = gain.reshape((3, n))
    if mask is None:
        return _correct_parallel(raw.reshape(n), out.reshape(n), ped, gn, None, np.float32(fill))
    return _correct_parallel(raw.reshape(n), out.reshape(n), ped, gn, mask.reshape(n),
                             np.float32(fill))


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
