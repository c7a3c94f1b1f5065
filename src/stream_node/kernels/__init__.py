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
"""

from __future__ import annotations

from stream_node.errors import StreamNodeError


class KernelError(StreamNodeError):
    """A kernel failed on one frame; `kernel` names the stage, `frame_id` the frame if known.

    The worker catches it, records the frame and carries on with the next one.
    """

    def __init__(self, kernel: str, message: str, frame_id: int | None = None) -> None:
        where = "" if frame_id is None else f" on frame {frame_id}"
        super().__init__(f"kernel {kernel!r} failed{where}: {message}")
        self.kernel = kernel
        self.frame_id = frame_id
        self.reason = message


# Imported after KernelError, which the chain raises (and imports from here).
from stream_node.kernels.chain import Chain, build_chain  # noqa: E402
from stream_node.kernels.registry import KERNELS, KernelInfo  # noqa: E402
from stream_node.kernels.stage import Stage  # noqa: E402

__all__ = ["KERNELS", "Chain", "KernelError", "KernelInfo", "Stage", "build_chain"]
