"""A worker's kernels in order: every buffer allocated and every kernel compiled at construction,
so that `Chain.apply` on a frame only runs loops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_node.kernels.registry import build_stage
from stream_node.kernels.stage import Stage, aligned_empty
from stream_node.model.errors import ConfigError, KernelError
from stream_node.model.geometry import Geometry

INPUT = "chain input"  # the `kernel` of a KernelError about the frame itself
BACKENDS = ("numba", "reference")


class Chain:
    """Kernels applied in order to frames of one shape and dtype.

    Built by `build_chain`. Not thread-safe: `apply` reuses the same buffers for every frame, and
    the array it returns is one of them, valid until the next call.
    """

    def __init__(self, stages: Sequence[Stage], frame_shape: tuple[int, ...],
                 frame_dtype: np.dtype) -> None:
        self.stages = tuple(stages)
        self.frame_shape = frame_shape
        self.frame_dtype = frame_dtype
        # A frame that is not C-contiguous and aligned is copied here first: kernels take flat
        # views, and Numba would compile a new version for such a layout on the first frame.
        self._staging = aligned_empty(frame_shape, frame_dtype)
        owned = False
        for stage in self.stages:
            stage.allocate(input_is_owned=owned)
            owned = owned or stage.out is not None
        self._warm_up()

    def _warm_up(self) -> None:
        """Call every kernel once on a zero frame, writable and read-only (a frame received
        without a copy is read-only, a different Numba type), without counting it."""
        zero = self._staging
        zero[...] = 0
        readonly = zero.view()
        readonly.flags.writeable = False
        for first in (zero, readonly):
            frame = first
            for stage in self.stages:
                try:
                    frame = stage.warm_up(frame)
                except Exception as exc:
                    raise ConfigError(f"{stage.label}: failed on a zero frame while compiling "
                                      f"at build: {type(exc).__name__}: {exc}") from exc

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of what `apply` returns."""
        return self.stages[-1].out_shape

    @property
    def out_dtype(self) -> np.dtype:
        """dtype of what `apply` returns."""
        return self.stages[-1].out_dtype

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """{stage label: {"frames", "errors", and the kernel's own counts}}, totals since build."""
        return {s.label: dict(s.counters) for s in self.stages}

    def stage(self, label: str) -> Stage:
        """The stage called `label` (the kernel name; "name#2" for its second use)."""
        for s in self.stages:
            if s.label == label:
                return s
        raise KeyError(f"no stage {label!r} (stages: {', '.join(s.label for s in self.stages)})")

    def apply(self, frame: np.ndarray, frame_id: int | None = None,
              into: np.ndarray | None = None) -> np.ndarray:
        """Run every kernel on `frame` (not modified); returns the last stage's output buffer,
        or `into` when given (a worker's output ring slot: the last kernel writes there).

        Any exception inside a kernel (built-in or user) is counted on its stage and raised as a
        `KernelError` naming the stage and `frame_id`, so the worker records the frame and goes on.
        """
        if frame.shape != self.frame_shape or frame.dtype != self.frame_dtype:
            raise KernelError(INPUT, f"frame of shape {frame.shape} and dtype {frame.dtype}, "
                                     f"the chain was built for {self.frame_shape} "
                                     f"{self.frame_dtype}", frame_id)
        if not (frame.flags.c_contiguous and frame.flags.aligned):
            np.copyto(self._staging, frame)
            frame = self._staging
        last = self.stages[-1]
        for stage in self.stages:
            try:
                frame = stage(frame, into if stage is last else None)
            except Exception as exc:
                stage.counters["errors"] += 1
                raise KernelError(stage.label, f"{type(exc).__name__}: {exc}", frame_id) from exc
        if into is not None and frame is not into:  # the last stage worked in place
            np.copyto(into, frame)
            return into
        return frame


def build_chain(spec: Sequence[Mapping[str, Any]], frame_shape: Sequence[int],
                frame_dtype: np.dtype | type | str, *, backend: str = "numba") -> Chain:
    """A `Chain` for frames of `frame_shape` and `frame_dtype` from a list of spec entries.

    Each entry is ``{"kernel": NAME, **params}``: a built-in name (`KERNELS`) or
    ``"python:package.module.function"``. Every problem in the spec (unknown name or parameter,
    a map that cannot be loaded or has the wrong shape, a dtype a kernel cannot take) is a
    `ConfigError`. ``backend="reference"`` runs the numpy references instead (slow; to compute
    offline what a worker computes).
    """
    stages = _stages(spec, frame_shape, frame_dtype, backend)
    return Chain(stages, tuple(int(n) for n in frame_shape), np.dtype(frame_dtype))


def chain_geometry(spec: Sequence[Mapping[str, Any]], frame_shape: Sequence[int],
                   frame_dtype: np.dtype | type | str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of what a chain makes of such frames, every entry checked as
    `build_chain` checks it, but nothing compiled and no frame buffer allocated: the source
    needs the output geometry for START, the workers compile the kernels."""
    last = _stages(spec, frame_shape, frame_dtype, "reference")[-1]
    return last.out_shape, last.out_dtype


@dataclass(frozen=True)
class OutputLayout:
    """What a chain's output is an image of, for the file that stores it."""

    pixel_mask: np.ndarray | None  # uint32, `model.pixel_mask` bits; None: no bad pixel known
    geometry: Geometry | None  # the geometry the output was assembled with, if it was


def output_layout(spec: Sequence[Mapping[str, Any]], frame_shape: Sequence[int],
                  frame_dtype: np.dtype | type | str) -> OutputLayout:
    """The pixel mask of a chain's output (the bad pixels its maps mask, the gaps of an
    assembly, carried through binning) and the geometry of an assembled output, computed
    without compiling: the collector writes them into the file's NXdetector."""
    stages = _stages(spec, frame_shape, frame_dtype, "reference")
    mask: np.ndarray | None = np.zeros(tuple(int(n) for n in frame_shape), np.uint32)
    geometry = None
    for stage in stages:
        if mask is not None:
            mask = stage.output_mask(mask)
        if stage.geometry is not None:
            geometry = stage.geometry
        elif geometry is not None and stage.out_shape != geometry.image_shape:
            geometry = None  # binned or reduced: no longer that geometry's image
    if mask is not None and not mask.any():
        mask = None
    return OutputLayout(mask, geometry)


def _stages(spec: Sequence[Mapping[str, Any]], frame_shape: Sequence[int],
            frame_dtype: np.dtype | type | str, backend: str) -> list[Stage]:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {backend!r} (choose from {BACKENDS})")
    if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence) or not spec:
        raise ConfigError("a kernel chain is a non-empty list of {'kernel': NAME, ...} entries")
    try:
        shape = tuple(int(n) for n in frame_shape)
        dtype = np.dtype(frame_dtype)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"kernel chain: bad frame shape/dtype: {exc}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ConfigError(f"kernel chain: frames must be 2-D and non-empty, not {shape}")
    seen: Counter[str] = Counter()

    def label_of(name: str) -> str:
        seen[name] += 1
        return name if seen[name] == 1 else f"{name}#{seen[name]}"

    stages = []
    for entry in spec:
        stage = build_stage(entry, label_of, shape, dtype, backend)
        stages.append(stage)
        shape, dtype = stage.out_shape, stage.out_dtype
        if len(shape) != 2 and len(stages) < len(spec):
            raise ConfigError(f"{stage.label} makes {len(shape)}-D output {shape}; only the last "
                              "kernel of a chain may (the next one needs a 2-D frame)")
    return stages
