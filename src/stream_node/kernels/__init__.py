"""Processing kernels for worker stages: what a worker does to each frame before sending it on.

    chain = build_chain([
        {"kernel": "gain_correction", "pedestal": "ped.npy", "gain": "gain.npy"},
        {"kernel": "photonise", "photon_energy_kev": 12.4, "threshold": 0.5},
    ], frame_shape=(512, 1024), frame_dtype="uint16")
    photons = chain.apply(frame, frame_id=17)   # a buffer reused by the next call
    chain.counters                              # {"gain_correction": {"frames": 1, ...}, ...}

Built-in kernels are in `KERNELS` (each with a numpy reference in `kernels.reference` and a
Numba version in `kernels._numba`, same signature). A user kernel is a plain Python function,
numba-jitted or numpy, named ``"python:package.module.function"`` in the spec and called like the
built-ins: ``fn(frame, out, **params) -> int | None`` (see `kernels.examples`).
Importing this package loads no kernel: `KERNELS` and the names below load on first use (PEP 562),
so `stream_node.kernels.compression` or a kernel's geometry costs no Numba import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stream_node.model.errors import KernelError

if TYPE_CHECKING:
    from stream_node.kernels.chain import Chain, build_chain
    from stream_node.kernels.registry import KERNELS, KernelInfo
    from stream_node.kernels.stage import Stage

_LAZY = {"Chain": "chain", "build_chain": "chain", "KERNELS": "registry", "KernelInfo": "registry",
         "Stage": "stage"}

__all__ = ["KERNELS", "Chain", "KernelError", "KernelInfo", "Stage", "build_chain"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"stream_node.kernels.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'stream_node.kernels' has no attribute {name!r}")
