"""A simulated JUNGFRAU with a calibration that is known: `synthetic:jungfrau?...`.

Real calibration data needs a detector; tests, benchmarks and examples need frames whose truth
they know. `JungfrauSimulator` draws, from a seed, per-pixel pedestals and noise for G0/G1/G2,
PSI-like gains (ADU/keV: G0 about 40, G1 about -1.5, G2 about -0.11; the high-gain planes
HG0-HG2 too), and a few bad pixels of each kind the pedestal command must find: noisy ones
(10x the noise), dead ones (one ADC value, no noise) and ones that sit in the wrong gain stage
in a series. Then:

* `dark_frame(stage, i)`: frame i of a dark series held in gain stage `stage`;
* `lit_frame(i)`: photons of `photon_kev` (Poisson, `photons` per pixel on average, plus a few
  bright spots) in dynamic gain: a pixel switches to G1 when its G0 ADC would pass 15000 and to
  G2 when G1's would fall below 1000, as the detector does;
* `write_gain_maps(directory)`: the gains as PSI gain-map files (`gainMaps_M<serial>.bin`).

Every frame is a pure function of (modules, grid, seed, kind, frame id): any process recomputes
its bytes. Frames are module stacks in grid order, uint16 with the gain stage in bits 14-15.

Endpoint: `synthetic:jungfrau?modules=N&grid=RxC&seed=S&bad=F&dark=G0|G1|G2&photons=P&energy=E`
(`dark` makes a dark series, else lit frames; `bad` the fraction of each kind of bad pixel,
default 0.0005; `energy` the photon energy in keV, default 12.4). The source's `--frames` is
the series' length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from stream_node.kernels.calibration import (
    MODULE,
    PSI_PLANES,
    Calibration,
    to_frame,
    to_modules,
    write_psi_gain_map,
)
from stream_node.model.errors import ConfigError
from stream_node.origins.base import GeneratedOrigin, OriginOptions

ADC_MAX = 0x3FFF
CODES = (0b00, 0b01, 0b11)  # gain bits of G0, G1, G2
# (mean, spread) per stage: pedestal (ADU), noise (ADU), gain (ADU/keV); high-gain G0 planes
PEDESTAL = ((3000.0, 150.0), (13000.0, 300.0), (14000.0, 300.0))
NOISE = ((12.0, 1.2), (4.0, 0.4), (3.0, 0.3))
GAIN = ((40.0, 1.0), (-1.5, 0.05), (-0.11, 0.004))
HIGH_GAIN = ((100.0, 2.5), (-1.5, 0.05), (-0.11, 0.004))
SWITCH_G1, SWITCH_G2 = 15000.0, 1000.0  # ADC where the detector leaves G0, then G1


class JungfrauSimulator:
    """See the module docstring. `truth` holds what a calibration should find."""

    def __init__(self, modules: int = 1, grid: tuple[int, int] | None = None, seed: int = 0,
                 bad: float = 0.0005, photon_kev: float = 12.4) -> None:
        self.grid = grid or (modules, 1)
        if self.grid[0] * self.grid[1] != modules or modules < 1:
            raise ConfigError(f"synthetic jungfrau: a grid of {self.grid} for {modules} modules")
        if not 0 <= bad < 0.05 or photon_kev <= 0:
            raise ConfigError("synthetic jungfrau: bad in [0, 0.05), energy > 0")
        self.modules = modules
        self.seed = seed
        self.photon_kev = photon_kev
        self.shape = (self.grid[0] * MODULE[0], self.grid[1] * MODULE[1])
        self.dtype = np.dtype(np.uint16)
        self.serials = tuple(f"M{100 + k}" for k in range(modules))
        rng = np.random.default_rng([seed, 0])

        def draw(spec: tuple[tuple[float, float], ...]) -> np.ndarray:
            return np.stack([rng.normal(m, s, self.shape) for m, s in spec]).astype(np.float32)

        self.pedestal = draw(PEDESTAL)  # (3, ny, nx), frame layout
        self.noise = np.abs(draw(NOISE))
        self.gain = draw(GAIN)
        self.high_gain = draw(HIGH_GAIN)
        # Bad pixels, disjoint: noisy, dead, and for each stage the wrong-gain ones.
        kinds = ("noisy", "dead", "wrong G0", "wrong G1", "wrong G2")
        order = rng.permutation(self.shape[0] * self.shape[1])
        per_kind = round(bad * order.size)
        self.bad: dict[str, np.ndarray] = {}
        for k, kind in enumerate(kinds):
            mask = np.zeros(order.size, bool)
            mask[order[k * per_kind:(k + 1) * per_kind]] = True
            self.bad[kind] = mask.reshape(self.shape)
        self.noise[:, self.bad["noisy"]] *= 10
        self.noise[:, self.bad["dead"]] = 0
        # each wrong-gain pixel sits in another stage in every other frame: (pixels, parity)
        self._wrong = []
        for stage in range(3):
            rows, cols = np.nonzero(self.bad[f"wrong G{stage}"])
            self._wrong.append(((rows, cols), (rows + cols) % 2))

    @property
    def truth(self) -> Calibration:
        """The calibration a perfect pedestal run of this detector finds (module layout)."""
        return Calibration(pedestal=to_modules(self.pedestal), gain=to_modules(self.gain),
                           pedestal_rms=to_modules(self.noise), serials=self.serials)

    def any_bad(self) -> np.ndarray:
        """bool (ny, nx): every pixel made bad on purpose."""
        return np.logical_or.reduce(list(self.bad.values()))

    def dark_frame(self, stage: int, frame_id: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame `frame_id` of a dark series in gain stage `stage` (0, 1, 2)."""
        rng = np.random.default_rng([self.seed, 1 + stage, frame_id])
        adc = rng.standard_normal(self.shape, dtype=np.float32)
        adc *= self.noise[stage]
        adc += self.pedestal[stage]
        code = np.full(self.shape, CODES[stage], np.uint16)
        (rows, cols), parity = self._wrong[stage]
        now = parity == frame_id % 2
        code[rows[now], cols[now]] = CODES[(stage + 1) % 3]
        return self._pack(adc, code, out)

    def lit_frame(self, frame_id: int, photons: float = 0.05,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Frame `frame_id` with light: a Poisson background of `photons` per pixel and 20
        bright spots per module, in dynamic gain switching."""
        rng = np.random.default_rng([self.seed, 9, frame_id])
        count = rng.poisson(photons, self.shape).astype(np.float32)
        ys = rng.integers(2, self.shape[0] - 2, 20 * self.modules)
        xs = rng.integers(2, self.shape[1] - 2, 20 * self.modules)
        for y, x, n in zip(ys, xs, rng.uniform(5, 2e4, ys.size), strict=True):
            count[y - 1:y + 2, x - 1:x + 2] += np.float32(n / 9)
            count[y, x] += np.float32(n)
        energy = count * np.float32(self.photon_kev)
        noise = rng.standard_normal(self.shape, dtype=np.float32)
        stage = np.zeros(self.shape, np.intp)
        g0 = self.pedestal[0] + self.gain[0] * energy
        stage[g0 > SWITCH_G1] = 1
        g1 = self.pedestal[1] + self.gain[1] * energy
        stage[(stage == 1) & (g1 < SWITCH_G2)] = 2
        ped = np.take_along_axis(self.pedestal, stage[None], 0)[0]
        gn = np.take_along_axis(self.gain, stage[None], 0)[0]
        sigma = np.take_along_axis(self.noise, stage[None], 0)[0]
        adc = ped + gn * energy + noise * sigma
        return self._pack(adc, np.asarray(CODES, np.uint16)[stage], out)

    def _pack(self, adc: np.ndarray, code: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            out = np.empty(self.shape, np.uint16)
        np.rint(adc, out=adc)
        np.clip(adc, 0, ADC_MAX, out=adc)
        np.copyto(out, adc, casting="unsafe")
        out |= code << np.uint16(14)
        return out

    def write_gain_maps(self, directory: str | Path) -> list[Path]:
        """The gains as PSI gain-map files, one per module in module order."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        planes = to_modules(np.concatenate([self.gain, self.high_gain]).astype(np.float64))
        paths = []
        for k, serial in enumerate(self.serials):
            path = directory / f"gainMaps_{serial}.bin"
            write_psi_gain_map(path, planes[k].reshape(len(PSI_PLANES), *MODULE))
            paths.append(path)
        return paths

    def frame_layout(self, per_module: np.ndarray) -> np.ndarray:
        """A (modules, ..., 512, 1024) array in this detector's frame layout."""
        return to_frame(per_module, self.grid)


class JungfrauOrigin(GeneratedOrigin):
    """`synthetic:jungfrau?...` frames: a dark series or lit frames (see the module docstring)."""

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(options)
        name, _, query = address.partition("?")
        if name != "jungfrau":
            raise ConfigError(f"synthetic:{address}: the synthetic origin's models are "
                              "'synthetic:' (Poisson frames) and 'synthetic:jungfrau?...'")
        try:
            q = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
            modules = int(q.pop("modules", 1))
            rows, _, cols = q.pop("grid", f"{modules}x1").partition("x")
            self.sim = JungfrauSimulator(modules, (int(rows), int(cols)),
                                         int(q.pop("seed", options.seed)),
                                         float(q.pop("bad", 0.0005)),
                                         float(q.pop("energy", 12.4)))
            dark = q.pop("dark", None)
            self.stage = None if dark is None else ("G0", "G1", "G2").index(dark.upper())
            self.photons = float(q.pop("photons", 0.05))
        except ValueError as exc:
            raise ConfigError(f"synthetic:{address}: {exc} (dark is G0, G1 or G2)") from None
        if q:
            raise ConfigError(f"synthetic:{address}: unknown options {sorted(q)}")
        self.address = address
        self.shape, self.dtype = self.sim.shape, self.sim.dtype
        self.count = options.frames

    def metadata(self) -> dict[str, Any]:
        kind = "lit" if self.stage is None else f"dark G{self.stage}"
        return {"source": f"synthetic:{self.address}", "seed": self.sim.seed,
                "detector": {"description": f"stream-node synthetic JUNGFRAU, "
                                            f"{self.sim.modules} module(s), {kind}",
                             "serial_number": ",".join(self.sim.serials)}}

    def ids(self) -> Iterator[int]:
        return iter(range(self.first_id, self.first_id + (self.count or 0)))

    def fill(self, frame_id: int, out: np.ndarray) -> None:
        if self.stage is None:
            self.sim.lit_frame(frame_id, self.photons, out=out)
        else:
            self.sim.dark_frame(self.stage, frame_id, out=out)
