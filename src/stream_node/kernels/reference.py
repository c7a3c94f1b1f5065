"""Plain-numpy kernels: the definition of what every fast kernel must compute.

Each function here is written to be obviously right, not fast (it allocates temporaries freely);
`stream_node.kernels._numba` has the same functions with the same signatures, and the tests hold
them to these results on random inputs. Change a semantic here first, then in `_numba`.

Calling convention, shared by every kernel (built-in or user): ``kernel(frame, out, *params) ->
int``. `frame` is read, never written; `out` is a preallocated array the kernel fills; the return
value is a count the chain adds to the stage's counter (pixels filled, clipped, skipped ...; 0
where there is nothing to count). Arrays are C-contiguous.

Raw JUNGFRAU-like pixels (uint16): bits 14-15 hold the gain stage (0b00 G0, 0b01 G1, 0b11 G2,
0b10 invalid), bits 0-13 the ADC value. Per-stage maps have shape (3, ny, nx), index 0/1/2 for
G0/G1/G2.
"""

from __future__ import annotations

import numpy as np

from stream_node.model.geometry import axis_map

ADC_MASK = 0x3FFF
INVALID_STAGE = 2  # the 0b10 code: no gain stage of the detector reports it


def stage_index(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into the (3, ny, nx) maps, valid) for each raw pixel; invalid pixels get index 0."""
    code = (raw >> 14).astype(np.intp)
    valid = code != INVALID_STAGE
    index = np.select([code == 0, code == 1, code == 3], [0, 1, 2], 0)
    return index, valid


def gain_correction(raw: np.ndarray, out: np.ndarray, pedestal: np.ndarray, gain: np.ndarray,
                    mask: np.ndarray | None, fill: float) -> int:
    """Energy (float32) = (ADC - pedestal[g]) / gain[g] with g the pixel's gain stage.

    Pixels whose stage code is the invalid 0b10, and pixels where `mask` is nonzero, get `fill`
    instead; the return value is how many (a pixel both masked and invalid counts once). NaN or
    inf in a map is not special: IEEE arithmetic carries it into the energy (gain 0 gives +-inf,
    or NaN for ADC == pedestal), exactly as numpy computes it.
    """
    index, valid = stage_index(raw)
    adc = (raw & ADC_MASK).astype(np.float32)
    ped = np.take_along_axis(pedestal, index[None], axis=0)[0]
    gn = np.take_along_axis(gain, index[None], axis=0)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        energy = (adc - ped) / gn
    bad = ~valid if mask is None else (~valid | (mask != 0))
    out[...] = np.where(bad, np.float32(fill), energy)
    return int(bad.sum())


def pedestal_update(raw: np.ndarray, pedestal: np.ndarray, counts: np.ndarray,
                    window: int) -> int:
    """Fold one dark frame into the running pedestal of each pixel's current gain stage.

    `pedestal` (float32) and `counts` (uint32), both (3, ny, nx), are the outputs, updated in
    place: counts[g] += 1 up to `window`, then pedestal[g] += (ADC - pedestal[g]) / counts[g].
    That is the exact mean of the first `window` dark frames, then an exponential moving average
    with weight 1/window, so the pedestal follows slow drifts without storing frames. Pixels in
    the invalid stage are skipped; the return value is how many.
    """
    index, valid = stage_index(raw)
    adc = (raw & ADC_MASK).astype(np.float32)
    for stage in range(3):
        sel = valid & (index == stage)
        n = np.minimum(counts[stage][sel] + np.uint32(1), np.uint32(window))
        counts[stage][sel] = n
        p = pedestal[stage][sel]
        pedestal[stage][sel] = p + (adc[sel] - p) / n.astype(np.float32)
    return int((~valid).sum())


def dark_accumulate(raw: np.ndarray, stage: int, counts: np.ndarray, sums: np.ndarray,
                    squares: np.ndarray, wrong: np.ndarray) -> int:
    """Fold one frame of a dark series, taken with the detector held in gain stage `stage`
    (0, 1, 2 for G0, G1, G2), into per-pixel sums; returns how many pixels were elsewhere.

    A pixel in that stage adds 1 to `counts` (uint32), its ADC value to `sums` and its square to
    `squares` (uint64: exact, so mean and variance come out the same however the frames were
    split); a pixel in another stage, or in the invalid one, adds 1 to `wrong` (uint32)
    instead. The arrays are the frame's shape and are updated in place.
    """
    index, valid = stage_index(raw)
    hit = valid & (index == stage)
    adc = (raw & ADC_MASK).astype(np.uint64)
    counts[hit] += np.uint32(1)
    sums[hit] += adc[hit]
    squares[hit] += adc[hit] * adc[hit]
    wrong[~hit] += np.uint32(1)
    return int((~hit).sum())


def apply_mask(frame: np.ndarray, out: np.ndarray, mask: np.ndarray, fill: float) -> int:
    """`out` = `frame` with `fill` where `mask` is nonzero; returns the number of masked pixels.

    `out` may be `frame` itself (in place).
    """
    bad = mask != 0
    out[...] = np.where(bad, np.asarray(fill).astype(out.dtype), frame)
    return int(bad.sum())


def photonise(energy: np.ndarray, out: np.ndarray, photon_energy: float, threshold: float) -> int:
    """Integer photon counts: n = floor(E / photon_energy + 1 - threshold), at least 0.

    So with threshold t (0 < t <= 1) a pixel holds n photons once E >= (n - 1 + t) photon
    energies; t = 0.5 is rounding to the nearest photon. Computed in float64 (E times 1/photon
    energy) so float32 energies sit on the same side of every boundary in both implementations.
    A non-finite energy gives 0, a count above what `out`'s integer dtype holds gives its maximum;
    the return value is how many pixels were either.
    """
    x = energy.astype(np.float64) * (1.0 / photon_energy)
    finite = np.isfinite(x)
    n = np.maximum(np.floor(np.where(finite, x, 0.0) + (1.0 - threshold)), 0.0)
    hi = float(np.iinfo(out.dtype).max)
    over = n > hi
    out[...] = np.minimum(n, hi).astype(out.dtype)
    return int((~finite).sum() + over.sum())


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype sums are accumulated in: float64 for floats, int64 for integers up to 32 bits."""
    return np.dtype(np.float64 if np.dtype(dtype).kind == "f" else np.int64)


def _bin(frame: np.ndarray, out: np.ndarray, factor: int) -> int:
    ny, nx = frame.shape[0] // factor, frame.shape[1] // factor
    blocks = frame[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor)
    np.copyto(out, blocks.sum(axis=(3, 1), dtype=accumulator_dtype(frame.dtype)),
              casting="unsafe")
    return 0


def bin2x2(frame: np.ndarray, out: np.ndarray) -> int:
    """Sum of each 2x2 block into `out` of shape (ny // 2, nx // 2).

    A last odd row or column is dropped (it has no full block); sums are accumulated in
    `accumulator_dtype` then stored in `out`'s dtype. Returns 0.
    """
    return _bin(frame, out, 2)


def bin4x4(frame: np.ndarray, out: np.ndarray) -> int:
    """Sum of each 4x4 block into `out` of shape (ny // 4, nx // 4); the remainder is dropped."""
    return _bin(frame, out, 4)


def roi_sums(frame: np.ndarray, out: np.ndarray, rois: np.ndarray) -> int:
    """`out[k]` (float64) = sum of frame[y0:y1, x0:x1] for row k = (y0, y1, x0, x1) of `rois`.

    Rectangles are half-open and must lie inside the frame (the chain checks that once). Sums
    follow IEEE rules (a NaN pixel makes its ROI's sum NaN). Returns 0.
    """
    for k, (y0, y1, x0, x1) in enumerate(rois):
        out[k] = frame[y0:y1, x0:x1].sum(dtype=accumulator_dtype(frame.dtype))
    return 0


def azimuthal_integrate(frame: np.ndarray, out: np.ndarray, bin_index: np.ndarray) -> int:
    """Radial profile: out[0, b] = sum of the pixels of bin b, out[1, b] = how many.

    `bin_index` (int32, the frame's shape) comes from `geometry.azimuthal_bin_index`; pixels
    with a negative index (masked, beyond the last bin) are left out. Non-finite pixel values are
    left out too, so one bad pixel does not blank its whole ring; the return value is how many
    were (among pixels with a bin).
    """
    nbins = out.shape[1]
    values = frame.astype(np.float64).ravel()
    bins = bin_index.ravel()
    inside = bins >= 0
    finite = np.isfinite(values)
    use = inside & finite
    out[0] = np.bincount(bins[use], weights=values[use], minlength=nbins)[:nbins]
    out[1] = np.bincount(bins[use], minlength=nbins)[:nbins]
    return int((inside & ~finite).sum())


def assemble(frame: np.ndarray, out: np.ndarray, modules: np.ndarray, gaps: np.ndarray,
             fill: float) -> int:
    """The detector's image from a frame of stacked modules; returns how many gap pixels.

    `modules` is `model.geometry.Geometry.table()`: per module its block of the frame, where
    its first pixel goes in `out`, the image steps of its fast and slow axes, and its chips.
    Pixel (s, f) of a module covers image pixels start + s' * slow + f' * fast for each (s', f')
    of its assembled place (`model.geometry.axis_map`): one for a plain pixel, two for a
    double-size chip-border pixel, four where two borders meet. A value covering d image pixels
    is shared so that their sum is the pixel's value:

    * floats: each gets value / d (exact: d is 1, 2 or 4);
    * integers: each gets value // d, and the first value % d of them (in the module's own
      row-major order) one more, so the counts stay integers and none is lost or made up.

    Every other pixel of `out` is `fill` (`gaps`, the gap runs the fast kernel fills, is not
    needed here: this fills everything first). Same dtype in and out.
    """
    out[...] = fill
    placed = 0
    for row in np.asarray(modules).tolist():
        r0, c0, rows, cols, s_row, s_col, f_row, f_col, l_row, l_col, chip_r, chip_c, dbl = row
        raw = frame[r0:r0 + rows, c0:c0 + cols]
        r_start, r_count = axis_map(rows, chip_r, bool(dbl))
        c_start, c_count = axis_map(cols, chip_c, bool(dbl))
        ri = np.repeat(np.arange(rows), r_count)  # the raw row of each image row, in order
        ci = np.repeat(np.arange(cols), c_count)
        sub_r = np.arange(ri.size) - r_start[ri]  # which of its pixel's image rows it is
        sub_c = np.arange(ci.size) - c_start[ci]
        shares = r_count[ri][:, None] * c_count[ci][None, :]
        rank = sub_r[:, None] * c_count[ci][None, :] + sub_c[None, :]
        values = raw[ri][:, ci]
        if out.dtype.kind == "f":
            big = values / shares
        else:
            whole = np.floor_divide(values, shares)
            big = whole + (rank < values - whole * shares)
        a, b = np.indices(big.shape)
        out[s_row + a * l_row + b * f_row, s_col + a * l_col + b * f_col] = big
        placed += big.size
    return int(out.size - placed)
