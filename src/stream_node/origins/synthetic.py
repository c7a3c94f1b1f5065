"""A detector simulator whose frames can be recomputed from their ids: tests prove byte equality."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from stream_node.model.contract import frame_nbytes
from stream_node.model.errors import ConfigError
from stream_node.model.frame import dtype_code
from stream_node.origins.base import GeneratedOrigin, OriginOptions

# Knuth's multiplicative hash spreads consecutive ids over the pool, so neighbours differ.
_SPREAD = 2654435761
POOL_BYTES = 512 << 20


class SyntheticDetector:
    """Frames of Poisson photon counts, stamped with their frame id.

    Drawing Poisson numbers costs ~10 ms per megapixel, far slower than the pipeline, so a small
    pool of images is drawn once and each frame is a pool image chosen by its id, with the id
    written into its first 8 bytes (little-endian). `frame(i)` is therefore a pure function of
    (shape, dtype, seed, mean_photons, pool, i): any process recomputes the exact bytes. The
    pool holds at most POOL_BYTES (8 images of up to 64 MiB; one of a 2 GiB frame), so a run of
    LPD-size trains neither draws for a minute nor holds gigabytes it never sends.
    """

    def __init__(
        self,
        shape: tuple[int, ...] = (512, 1024),
        dtype: str | np.dtype = "uint16",
        seed: int = 0,
        mean_photons: float = 2.0,
        pool: int | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # raises for a dtype frames cannot carry
        if not self.shape or min(self.shape) < 1:
            raise ConfigError(f"frame shape must have positive dimensions, got {self.shape}")
        if self.nbytes < 8:
            raise ConfigError(f"frames need at least 8 bytes to carry their id, got {self.nbytes}")
        if pool is None:
            pool = max(1, min(8, POOL_BYTES // self.nbytes))
        if pool < 1 or mean_photons < 0:
            raise ConfigError("pool must be >= 1 and mean_photons >= 0")
        # Drawn on first use, in order (so the bytes are those of drawing all at once): a run
        # of a few huge frames draws only the images it uses (seconds per 100-megapixel one).
        self._rng = np.random.default_rng(seed)
        self._mean = mean_photons
        self._size = pool
        self._pool: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        return frame_nbytes(self.shape, self.dtype)

    def frame(self, frame_id: int, out: np.ndarray | None = None) -> np.ndarray:
        """The frame with this id, written into `out` when given (no allocation)."""
        if out is None:
            out = np.empty(self.shape, self.dtype)
        np.copyto(out, self._image((frame_id * _SPREAD) % self._size))
        out.reshape(-1).view(np.uint8)[:8] = np.frombuffer(
            int(frame_id).to_bytes(8, "little"), np.uint8
        )
        return out

    def draw(self, frame_ids: range) -> None:
        """Draw now the pool images these frames use: a source does it before its control
        plane is up, so drawing (seconds for a huge frame) never delays a heartbeat."""
        used = {(i * _SPREAD) % self._size for i in frame_ids[: 4 * self._size]}
        if used:
            self._image(max(used))

    def _image(self, k: int) -> np.ndarray:
        while len(self._pool) <= k:
            # In blocks (the same variates as one draw): a 2 GiB image would otherwise pass
            # through a 4 GiB int64 temporary.
            image = np.empty(self.shape, self.dtype)
            flat = image.reshape(-1)
            for i in range(0, flat.size, 1 << 23):
                flat[i:i + (1 << 23)] = self._rng.poisson(self._mean, flat[i:i + (1 << 23)].size)
            self._pool.append(image)
        return self._pool[k]

    def frames(self, count: int, first: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(frame_id, array) for `count` frames; each array is new, so it may be sent zero-copy."""
        for frame_id in range(first, first + count):
            yield frame_id, self.frame(frame_id)


def stamped_id(frame: np.ndarray) -> int:
    """The frame id a synthetic frame carries in its first 8 bytes."""
    return int.from_bytes(np.ascontiguousarray(frame).reshape(-1).view(np.uint8)[:8].tobytes(),
                          "little")


class SyntheticOrigin(GeneratedOrigin):
    """`synthetic:` — Poisson frames stamped with their id (see `SyntheticDetector`)."""

    def __init__(self, address: str, options: OriginOptions) -> None:
        super().__init__(options)
        if address:
            raise ConfigError(f"synthetic:{address}: the synthetic origin takes no address "
                              "(its other model is synthetic:jungfrau?modules=N...)")
        self.detector = SyntheticDetector(options.shape, options.dtype, options.seed)
        self.shape, self.dtype = self.detector.shape, self.detector.dtype
        self.count = options.frames
        self.detector.draw(range(self.first_id, self.first_id + self.count))

    def metadata(self) -> dict[str, Any]:
        return {"source": "synthetic:", "seed": self.options.seed,
                "detector": {"description": "stream-node synthetic detector"}}

    def ids(self) -> Iterator[int]:
        return iter(range(self.first_id, self.first_id + (self.count or 0)))

    def fill(self, frame_id: int, out: np.ndarray) -> None:
        self.detector.frame(frame_id, out=out)


def open_synthetic(address: str, options: OriginOptions) -> GeneratedOrigin:
    """`synthetic:` (Poisson frames) or `synthetic:jungfrau?...` (a simulated JUNGFRAU with a
    known calibration, `origins.jungfrau_sim`, loaded only when named)."""
    if address.partition("?")[0] == "jungfrau":
        from stream_node.origins.jungfrau_sim import JungfrauOrigin

        return JungfrauOrigin(address, options)
    return SyntheticOrigin(address, options)
