"""One kernel bound to its parameters and its preallocated output: a step of a `Chain`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_node.model.contract import frame_nbytes

if TYPE_CHECKING:
    from stream_node.model.geometry import Geometry

ALIGN = 64  # a cache line: a (pedestal, gain) pair of the packed G1/G2 maps is in one line


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type | str) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    numpy's own large arrays start 16 bytes past a page, so a 64-byte block of them straddles two
    cache lines; vector loops then split loads, and a map read pixel by pixel (the gain
    correction's G1/G2 pairs) could need two lines for one pixel.
    """
    dt = np.dtype(dtype)
    nbytes = frame_nbytes(shape, dt)
    raw = np.empty(nbytes + ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % ALIGN
    return raw[offset:offset + nbytes].view(dt).reshape(shape)


def aligned_copy(array: np.ndarray, dtype: np.dtype | type | str | None = None) -> np.ndarray:
    """`array` converted to `dtype` in a new `aligned_empty` array (maps: copied once, at build)."""
    out = aligned_empty(array.shape, array.dtype if dtype is None else dtype)
    np.copyto(out, array, casting="unsafe")
    return out


class Stage:
    """A kernel call ``fn(frame, out, *args, **kwargs) -> int | None`` with its output buffer.

    `out` is allocated once, at build; ``inplace`` stages write into their input instead (only
    ever a buffer the chain owns). The kernel's return value is added to `counters[count_name]`;
    `counters` also holds "frames" and "errors" (the chain counts those).
    """

    def __init__(self, label: str, kernel: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 out_shape: tuple[int, ...], out_dtype: np.dtype, *,
                 kwargs: dict[str, Any] | None = None, count_name: str | None = None,
                 inplace: bool = False, jitted: bool = True,
                 mask_bits: np.ndarray | None = None,
                 mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                 geometry: Geometry | None = None) -> None:
        self.label = label
        self.kernel = kernel
        self.fn = fn
        self.args = args
        self.kwargs = kwargs or {}
        self.out_shape = tuple(out_shape)
        self.out_dtype = np.dtype(out_dtype)
        self.count_name = count_name
        self.inplace = inplace
        self.jitted = jitted  # False: a plain Python function, nothing to compile at warm-up
        # The pixel mask of the output (`output_mask`): bits this stage adds (its bad pixels),
        # and how it maps a mask of its input onto its output (assembly, binning).
        self.mask_bits = mask_bits
        self.mask_fn = mask_fn
        self.geometry = geometry  # a `model.geometry.Geometry` when the output is an image of it
        self.out: np.ndarray | None = None
        self.counters: dict[str, int] = {"frames": 0, "errors": 0}
        if count_name:
            self.counters[count_name] = 0

    def allocate(self, input_is_owned: bool) -> None:
        """Preallocate `out`; an in-place stage whose input the chain does not own gets one too."""
        if self.inplace and not input_is_owned:
            self.inplace = False
        if not self.inplace:
            self.out = aligned_empty(self.out_shape, self.out_dtype)
            self.out[...] = 0

    def output_for(self, frame: np.ndarray) -> np.ndarray:
        return frame if self.inplace else self.out  # type: ignore[return-value]

    def __call__(self, frame: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        """Run the kernel; `into` (of the output's shape and dtype, C-contiguous) replaces the
        stage's own buffer, unless it works in place (then its input is the output)."""
        out = into if into is not None and not self.inplace else self.output_for(frame)
        count = self.fn(frame, out, *self.args, **self.kwargs)
        self.counters["frames"] += 1
        if count is not None and self.count_name:
            self.counters[self.count_name] += int(count)
        self.account(count)
        return out

    def account(self, count: Any) -> None:
        """Hook for counters derived from the count (see `GainStage`)."""

    def output_mask(self, mask: np.ndarray) -> np.ndarray | None:
        """The pixel mask (uint32, `model.pixel_mask` bits) of this stage's output, given that
        of its input: the bits it adds ORed in, then mapped by `mask_fn`; passed on when the
        shape stays, None when the output is no image of the input (sums, profiles)."""
        if self.mask_bits is not None:
            mask = mask | self.mask_bits
        if self.mask_fn is not None:
            return self.mask_fn(mask)
        return mask if mask.shape == self.out_shape else None

    def warm_up(self, frame: np.ndarray) -> np.ndarray:
        """Run the kernel once without counting, so Numba compiles it now, not on a real frame."""
        out = self.output_for(frame)
        if self.jitted:
            self.fn(frame, out, *self.args, **self.kwargs)
        return out


class GainStage(Stage):
    """Gain correction: the kernel counts filled pixels; masked ones are known from the mask, so
    "invalid_gain" (unmasked pixels in the invalid stage) = filled - masked."""

    def __init__(self, *args: Any, n_masked: int, **kwargs: Any) -> None:
        super().__init__(*args, count_name="filled", **kwargs)
        self.n_masked = n_masked
        self.counters["masked"] = 0
        self.counters["invalid_gain"] = 0

    def account(self, count: Any) -> None:
        self.counters["masked"] += self.n_masked
        self.counters["invalid_gain"] += int(count) - self.n_masked


class PedestalStage(Stage):
    """Pedestal tracking: the frame passes through unchanged; the kernel updates `pedestal` and
    `counts` (both (3, ny, nx)) in place, which the caller reads or saves when the dark run ends.
    """

    def __init__(self, label: str, kernel: str, fn: Callable[..., Any], pedestal: np.ndarray,
                 counts: np.ndarray, window: int) -> None:
        super().__init__(label, kernel, fn, (), pedestal.shape[1:], np.dtype(np.uint16),
                         count_name="invalid_gain", inplace=True)
        self.pedestal = pedestal
        self.counts = counts
        self.window = window

    def allocate(self, input_is_owned: bool) -> None:
        self.out = None  # the output is the input: pass-through, nothing written

    def __call__(self, frame: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        count = self.fn(frame, self.pedestal, self.counts, self.window)
        self.counters["frames"] += 1
        self.counters["invalid_gain"] += int(count)
        return frame

    def warm_up(self, frame: np.ndarray) -> np.ndarray:
        # On copies: a warm-up must not count as a dark frame.
        self.fn(frame, self.pedestal.copy(), self.counts.copy(), self.window)
        return frame
