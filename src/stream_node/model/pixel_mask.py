"""The bits of a pixel mask, as NeXus' NXdetector `pixel_mask` defines them, plus stream-node's.

One set for every mask stream-node writes: the calibration file's bad pixels
(`kernels.calibration`), the gaps of an assembled image (`model.geometry`), and the run file's
`pixel_mask` that combines them (`storage.nexus`). A pixel is good when its value is 0.
"""

from __future__ import annotations

GAP = 1 << 0  # no sensor: between modules of an assembled image
DEAD = 1 << 1  # no signal: zero noise in a dark series, or never in the series' gain stage
UNDER = 1 << 2  # under-responding
OVER = 1 << 3  # over-responding
NOISY = 1 << 4  # noise (dark-series RMS) far above its module's
USER = 1 << 8  # masked by the user (a kernel's `mask` parameter)
GAIN_STAGE = 1 << 9  # stream-node: in the wrong gain stage in a dark series (NeXus: undefined)

DESCRIPTION = ("bit 0 gap (no sensor), 1 dead, 2 under-responding, 3 over-responding, "
               "4 noisy, 8 user-defined masked (NeXus NXdetector pixel_mask); "
               "9 wrong gain stage in a dark run (stream-node)")
