"""Set-up computations on detector geometry, done once per run so the per-frame kernels stay loops:
the per-pixel radial bin of the azimuthal integration, and checked ROI rectangles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_node.model.errors import ConfigError


def azimuthal_bin_index(shape: tuple[int, int], beam_centre: Sequence[float], nbins: int,
                        r_max: float | None = None,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """int32 (ny, nx): the radial bin of each pixel, -1 for pixels the integration leaves out.

    `beam_centre` is (row, column) in pixels, pixel (i, j) has its centre at (i, j); the radius
    r = hypot(i - row, j - column) goes into bin floor(r / r_max * nbins). `r_max` defaults to
    the distance from the centre to the farthest pixel, so every pixel has a bin; pixels at
    r >= r_max and pixels where `mask` is nonzero get -1.
    """
    ny, nx = shape
    if nbins < 1:
        raise ConfigError(f"azimuthal integration: nbins must be at least 1, not {nbins}")
    if len(beam_centre) != 2:
        raise ConfigError(f"azimuthal integration: beam_centre must be (row, column), "
                          f"not {beam_centre!r}")
    cy, cx = (float(v) for v in beam_centre)
    rows = np.arange(ny, dtype=np.float64)[:, None] - cy
    cols = np.arange(nx, dtype=np.float64)[None, :] - cx
    r = np.hypot(rows, cols)
    if r_max is None:
        r_max = float(r.max()) * (1 + 1e-9) + 1e-12  # the farthest pixel still inside the last bin
    if not r_max > 0:
        raise ConfigError(f"azimuthal integration: r_max must be positive, not {r_max}")
    index = np.floor(r * (nbins / r_max)).astype(np.int64)
    index[(index >= nbins) | (index < 0)] = -1
    if mask is not None:
        index[np.asarray(mask) != 0] = -1
    return np.ascontiguousarray(index, dtype=np.int32)


def checked_rois(rois: object, shape: tuple[int, int]) -> np.ndarray:
    """int64 (n, 4) rows (y0, y1, x0, x1): half-open, non-empty rectangles inside `shape`.

    The kernels trust these bounds, so they are checked here once, with a message naming the ROI.
    """
    try:
        arr = np.asarray(rois, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"roi_sums: rois must be a list of [y0, y1, x0, x1]: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise ConfigError(f"roi_sums: rois must be a non-empty list of [y0, y1, x0, x1], "
                          f"got an array of shape {arr.shape}")
    ny, nx = shape
    for k, (y0, y1, x0, x1) in enumerate(arr.tolist()):
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise ConfigError(f"roi_sums: ROI {k} [y0, y1, x0, x1] = {[y0, y1, x0, x1]} is "
                              f"empty or outside the {ny}x{nx} frame (half-open bounds)")
    return np.ascontiguousarray(arr)
