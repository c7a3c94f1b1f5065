"""Dark runs to pedestals: per pixel and gain stage, the mean and RMS of the ADC, and bad pixels.

A JUNGFRAU pedestal run is three dark series: the detector in its normal (dynamic) gain with no
light, so every pixel stays in G0, then forced into G1, then into G2. `DarkSeries` folds the
frames of one series into exact integer sums (`kernels._numba.dark_accumulate`, one pass per
frame, nothing kept); `calibrate_darks` turns the series into a `Calibration` (pedestal, its RMS, a
pixel mask) and a `DarkReport`. What counts as a bad pixel, per module and gain stage:

* `GAIN_STAGE`: in another gain stage than its series' in more than `max_wrong_gain` of the
  series' frames (a pixel that switches without light, or ignores the forced gain). Its
  pedestal is the mean of the frames it was right in, NaN if none.
* `DEAD`: the same ADC value in every frame (zero RMS): no signal reaches the ADC.
* `NOISY`: an RMS more than `noise_sigma` robust standard deviations (1.4826 x the median
  absolute deviation) above its module's median RMS in that stage.

The pixel mask ORs the bits of the three stages (`model.pixel_mask`). A stage without a series
keeps the pedestal of a `base` calibration, or NaN (a pixel switching to it then corrects to
NaN, never to a made-up energy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from stream_node.kernels import calibration
from stream_node.kernels.calibration import STAGES, Calibration, to_modules
from stream_node.model.errors import ConfigError
from stream_node.model.pixel_mask import DEAD, GAIN_STAGE, NOISY

PERCENTILES = (1.0, 50.0, 99.0, 99.9)
REASONS = (("dead", DEAD), ("noisy", NOISY), ("wrong gain", GAIN_STAGE))


class DarkSeries:
    """The running sums of one dark series (gain stage `stage`) of frames of `shape`."""

    def __init__(self, shape: Sequence[int], stage: int, impl: ModuleType | None = None) -> None:
        if stage not in (0, 1, 2):
            raise ConfigError(f"gain stage {stage}: 0, 1 or 2 (G0, G1, G2)")
        self.shape = tuple(int(n) for n in shape)
        self.stage = stage
        self.frames = 0
        self.counts = np.zeros(self.shape, np.uint32)
        self.sums = np.zeros(self.shape, np.uint64)
        self.squares = np.zeros(self.shape, np.uint64)
        self.wrong = np.zeros(self.shape, np.uint32)
        if impl is None:
            from stream_node.kernels import _numba as impl
        self._impl = impl
        # Compiled now (writable and read-only frames are two Numba types), not on the first
        # frame: a receiving origin's ring would fill while the compiler runs.
        for writable in (True, False):
            zero = np.zeros((1, 1), np.uint16)
            zero.flags.writeable = writable
            impl.dark_accumulate(zero, stage, *(np.zeros((1, 1), a.dtype) for a in (
                self.counts, self.sums, self.squares, self.wrong)))

    def add(self, raw: np.ndarray) -> int:
        """Fold one raw frame in; returns its pixels in another gain stage."""
        if raw.shape != self.shape or raw.dtype != np.uint16:
            raise ConfigError(f"dark series {STAGES[self.stage]}: a frame of {raw.shape} "
                              f"{raw.dtype}, the series has {self.shape} uint16")
        self.frames += 1
        return int(self._impl.dark_accumulate(np.ascontiguousarray(raw), self.stage,
                                              self.counts, self.sums, self.squares, self.wrong))

    def mean_rms(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, RMS) of each pixel's ADC values in the stage (float64; NaN where none)."""
        n = self.counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums / n
            var = np.maximum(self.squares / n - mean * mean, 0.0)
        return mean, np.sqrt(var)


@dataclass
class DarkReport:
    """What `stream-node pedestal` prints: frames per series, bad pixels per module and
    reason, and each stage's RMS distribution over its good pixels."""

    frames: dict[str, int]
    bad: list[dict[str, int]]  # per module: reason -> pixels, and "any"
    rms: dict[str, list[float]]  # stage -> PERCENTILES of the RMS, then its largest value
    missing: list[str] = field(default_factory=list)  # stages without a series
    serials: tuple[str, ...] = ()

    def text(self) -> str:
        """The report as aligned plain-text tables, for a terminal or a log."""
        series = ", ".join(f"{s} {n} frames" for s, n in self.frames.items())
        lines = [f"series      {series}"]
        if self.missing:
            lines.append(f"no series   {', '.join(self.missing)}: pedestals from the base "
                         "calibration, else unknown (NaN)")
        head = ["module", "serial", "bad", *(name for name, _ in REASONS)]
        rows = [[str(k), (self.serials[k] if k < len(self.serials) else "") or "-",
                 str(b["any"]), *(str(b[name]) for name, _ in REASONS)]
                for k, b in enumerate(self.bad)]
        total = sum(b["any"] for b in self.bad)
        rows.append(["all", "", str(total), *(str(sum(b[n] for b in self.bad))
                                               for n, _ in REASONS)])
        lines += _columns(head, rows)
        head = ["RMS (ADU)", *(f"p{p:g}" for p in PERCENTILES), "max"]
        lines += _columns(head, [[s, *(f"{v:.2f}" for v in vals)] for s, vals in self.rms.items()])
        return "\n".join(lines)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True))).rstrip() for r in [head, *rows]]


def _flags(series: DarkSeries, rms: np.ndarray, noise_sigma: float,
           max_wrong_gain: float) -> np.ndarray:
    """uint32 per pixel (frame layout): the bad-pixel bits of one series."""
    flags = np.zeros(series.shape, np.uint32)
    flags[series.wrong > max_wrong_gain * series.frames] |= GAIN_STAGE
    measured = series.counts >= 2
    flags[measured & (rms == 0)] |= DEAD
    for k, (r, ok) in enumerate(zip(to_modules(rms), to_modules(measured & (rms > 0)),
                                    strict=True)):
        values = r[ok]
        if values.size < 16:
            continue
        median = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - median)))
        if spread > 0:
            _module_view(flags, k)[ok & (r > median + noise_sigma * spread)] |= NOISY
    return flags


def _module_view(frame: np.ndarray, k: int) -> np.ndarray:
    """A writable view of module k (512 x 1024) of a frame-shaped array."""
    cols = frame.shape[-1] // calibration.MODULE[1]
    r, c = divmod(k, cols)
    return frame[..., r * calibration.MODULE[0]:(r + 1) * calibration.MODULE[0],
                 c * calibration.MODULE[1]:(c + 1) * calibration.MODULE[1]]


def calibrate_darks(series: Mapping[int, DarkSeries], *, noise_sigma: float = 5.0,
              max_wrong_gain: float = 0.01, base: Calibration | None = None,
              serials: Sequence[str] = (),
              sources: Sequence[dict[str, Any]] = ()) -> tuple[Calibration, DarkReport]:
    """The calibration (pedestal, RMS, pixel mask; the gains of `base`, if any) that dark
    series make, and its report. Frames must be a grid of 512 x 1024 modules."""
    if not series:
        raise ConfigError("no dark series: give at least the G0 one")
    shapes = {s.shape for s in series.values()}
    if len(shapes) > 1:
        raise ConfigError(f"dark series of different frame shapes: {sorted(shapes)}")
    (shape,) = shapes
    grid = calibration.module_grid(shape, "dark series")
    modules = grid[0] * grid[1]
    if base is not None:
        base.check(modules, None, "base calibration")
    pedestal = np.full((3, *shape), np.nan, np.float32)
    rms = np.full((3, *shape), np.nan, np.float32)
    mask = np.zeros(shape, np.uint32)
    frames, missing, spread = {}, [], {}
    for stage in range(3):
        s = series.get(stage)
        if s is None or s.frames == 0:
            missing.append(STAGES[stage])
            for name, arr in (("pedestal", pedestal), ("pedestal_rms", rms)):
                known = getattr(base, name) if base is not None else None
                if known is not None:
                    arr[stage] = calibration.to_frame(known[:, stage], grid)
            continue
        mean, sigma = s.mean_rms()
        flags = _flags(s, sigma, noise_sigma, max_wrong_gain)
        pedestal[stage], rms[stage] = mean, sigma
        mask |= flags
        frames[STAGES[stage]] = s.frames
        good = (flags == 0) & (s.counts >= 2)
        values = sigma[good]
        spread[STAGES[stage]] = ([float(v) for v in np.percentile(values, PERCENTILES)]
                                 + [float(values.max())] if values.size
                                 else [float("nan")] * (len(PERCENTILES) + 1))
    per_module = to_modules(mask)
    bad = [{"any": int(np.count_nonzero(m)),
            **{name: int(np.count_nonzero(m & bit)) for name, bit in REASONS}}
           for m in per_module]
    cal = Calibration(
        pedestal=to_modules(pedestal), pedestal_rms=to_modules(rms), pixel_mask=per_module,
        gain=None if base is None else base.gain,
        serials=tuple(serials) or (base.serials if base is not None else ()),
        sources={"pedestal": list(sources), "pedestal_rms": list(sources),
                 **({"gain": base.sources.get("gain", [])} if base is not None else {})},
        dark_frames=tuple(series[k].frames if k in series else 0  # type: ignore[arg-type]
                          for k in range(3)),
        gain_mode=base.gain_mode if base is not None else "normal")
    report = DarkReport(frames, bad, spread, missing, cal.serials)
    return cal, report
